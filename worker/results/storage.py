"""Object storage for results: verified uploads with capped, jittered retries."""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any

from lcm_fleet.backoff import Backoff, call_with_backoff
from lcm_fleet.errors import StorageError, TransientStorageError
from lcm_fleet.storage import error_code, is_transient, s3_client, s3_uri
from worker.errors import StartupError
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


def classify(error: Exception, what: str) -> StorageError:
    """Wrap a boto3/botocore error as transient (worth retrying) or permanent."""
    code, status = error_code(error)
    cls = TransientStorageError if is_transient(error) else StorageError
    return cls(f"{what}: {code or status or type(error).__name__}: {error}")


class ObjectStore:
    """One bucket; every put is checked (Content-MD5 on the way in, ETag on the way back)."""

    def __init__(self, settings: WorkerSettings, client: Any | None = None) -> None:
        self.bucket = settings.s3_bucket
        self.client = client or s3_client(
            settings,
            settings.s3_access_key_id.get_secret_value(),
            settings.s3_secret_access_key.get_secret_value(),
        )
        self.backoff = Backoff(
            base_s=settings.upload_backoff_base_s,
            cap_s=max(settings.upload_backoff_cap_s, settings.upload_backoff_base_s),
            attempts=settings.upload_attempts,
        )

    def uri(self, key: str) -> str:
        return s3_uri(self.bucket, key)

    def check_bucket(self) -> None:
        """Fail fast at start-up when the bucket is missing or not ours to write."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            raise StartupError(
                f"cannot use bucket {self.bucket!r} at {self.client.meta.endpoint_url}: {e}; "
                "check LCM_S3_BUCKET, LCM_S3_ENDPOINT_URL and the credentials, "
                "and create the bucket"
            ) from e

    def _put_once(self, key: str, data: bytes, content_type: str) -> str:
        md5 = hashlib.md5(data)
        try:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ContentMD5=base64.b64encode(md5.digest()).decode(),
            )
        except Exception as e:
            raise classify(e, f"put s3://{self.bucket}/{key}") from e
        etag = str(response.get("ETag", "")).strip('"')
        if etag and etag != md5.hexdigest():
            raise TransientStorageError(
                f"put s3://{self.bucket}/{key}: stored ETag {etag} != md5 {md5.hexdigest()}"
            )
        return etag

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Upload and verify; retry transient faults with backoff; return the ETag."""
        return call_with_backoff(
            lambda: self._put_once(key, data, content_type),
            transient=(TransientStorageError,),
            backoff=self.backoff,
            what=f"upload {key}",
        )
