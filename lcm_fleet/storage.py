"""The one S3 object store every role uses (any S3: AWS, MinIO, SeaweedFS, by settings).

``ObjectStore`` is one bucket: every put is verified (Content-MD5 on the way in and the
ETag on the way back; a multi-part upload by HEAD of its size and ``x-amz-meta-sha256``),
every error is classified once as transient (worth retrying) or permanent, and every call
is retried with capped, jittered backoff a bounded number of times, or (``budget_s``, the
worker's LCM_STORAGE_RETRY_BUDGET_S) for a bounded time, so that an outage shorter than
the budget costs a job only its wait. Secrets are unwrapped
once, in :meth:`ObjectStore.from_settings`. boto3 is imported only where a client is made.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from lcm_fleet.backoff import Backoff, call_with_backoff
from lcm_fleet.errors import LcmError, StorageError, TransientStorageError
from lcm_fleet.settings import ConnectionSettings, masked_url

T = TypeVar("T")

#: Bounded retries of one store call when the caller names none.
DEFAULT_BACKOFF = Backoff(base_s=0.5, cap_s=8.0, attempts=4)
#: ``x-amz-meta-*`` key with the sha256 of the object's body.
META_SHA256 = "sha256"

# Which S3 errors are worth retrying.
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestTimeTooSkewed",
        "BadDigest",
        "500",
        "502",
        "503",
        "504",
    }
)
#: Words in a boto3 transfer error that mark it as permanent (its cause is a ClientError).
PERMANENT_MARKERS = (
    "AccessDenied",
    "NoSuchBucket",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidBucketName",
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class ObjectNotFound(StorageError):
    """The object does not exist (404)."""


def s3_client(
    settings: ConnectionSettings,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> Any:
    """A boto3 S3 client for ``settings``; botocore makes one attempt, our backoff decides."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.s3_region,
        connect_timeout=settings.s3_connect_timeout_s,
        read_timeout=settings.s3_read_timeout_s,
        retries={"max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        signature_version="s3v4",
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def error_code(error: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore ClientError; ("", 0) for anything else."""
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_transient(error: BaseException) -> bool:
    """True for connection faults, timeouts, 5xx and throttling; False for 4xx and the rest."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(error, ClientError):
        code, status = error_code(error)
        return code in TRANSIENT_CODES or status >= 500
    if isinstance(error, (S3UploadFailedError, S3TransferFailedError)):
        return not any(marker in str(error) for marker in PERMANENT_MARKERS)
    return isinstance(error, (BotoCoreError, ConnectionError, TimeoutError, OSError))


def is_not_found(error: BaseException) -> bool:
    code, status = error_code(error)
    return code in _NOT_FOUND_CODES or status == 404


def classify(error: BaseException, what: str) -> StorageError:
    """Wrap a boto3/botocore error as not found, transient (worth retrying) or permanent."""
    if isinstance(error, StorageError):
        return error
    code, status = error_code(error)
    if is_not_found(error):
        cls: type[StorageError] = ObjectNotFound
    elif is_transient(error):
        cls = TransientStorageError
    else:
        cls = StorageError
    return cls(f"{what}: {code or status or type(error).__name__}: {error}")


class StorageWatch(Protocol):
    """Told when a store call starts retrying a transient fault, and when it is settled
    (succeeded or given up): e.g. a job's record shows that it waits for storage."""

    def retrying(self, what: str, error: BaseException) -> None: ...

    def settled(self, what: str) -> None: ...


class ObjectStore:
    """One bucket of an S3 store, with verified writes and bounded, classified retries."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        backoff: Backoff | None = None,
        budget_s: float | None = None,
        watch: StorageWatch | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.backoff = backoff or DEFAULT_BACKOFF
        #: Retry transient faults of one call for this many seconds (None: backoff.attempts).
        self.budget_s = budget_s
        self.watch = watch

    def watched(self, watch: StorageWatch) -> ObjectStore:
        """This store (the same client), telling ``watch`` about its calls' retries."""
        return ObjectStore(self.client, self.bucket, self.backoff, self.budget_s, watch)

    @classmethod
    def from_settings(
        cls,
        settings: ConnectionSettings,
        backoff: Backoff | None = None,
        client: Any = None,
        budget_s: float | None = None,
    ) -> ObjectStore:
        """The store of ``settings``' bucket; its credentials, or boto3's default chain."""
        if client is None:
            key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
            client = s3_client(
                settings,
                key_id.get_secret_value() if key_id is not None else None,
                secret.get_secret_value() if secret is not None else None,
            )
        return cls(client, settings.s3_bucket, backoff, budget_s)

    @property
    def endpoint(self) -> str:
        meta = getattr(self.client, "meta", None)
        return str(getattr(meta, "endpoint_url", "") or "AWS S3")

    def uri(self, key: str) -> str:
        return s3_uri(self.bucket, key)

    def retry(self, what: str, fn: Callable[[], T], stop: threading.Event | None = None) -> T:
        """Call ``fn`` with bounded, jittered retries of transient faults; errors classified.

        Not found and permanent errors propagate at once; the last transient one after
        ``backoff.attempts`` calls, or once ``budget_s`` seconds are spent, or once ``stop`` is
        set (its waits end early too). lcm-fleet's own errors (e.g. a caller's check that a
        file changed) pass through unchanged.
        """

        def once() -> T:
            try:
                return fn()
            except LcmError:
                raise
            except Exception as e:
                raise classify(e, what) from e

        watch = self.watch
        retried = False

        def on_retry(error: BaseException) -> None:
            nonlocal retried
            retried = True
            if watch is not None:
                watch.retrying(what, error)

        try:
            return call_with_backoff(
                once,
                transient=(TransientStorageError,),
                backoff=self.backoff,
                what=what,
                budget_s=self.budget_s,
                sleep=time.sleep if stop is None else stop.wait,
                give_up=None if stop is None else stop.is_set,
                on_retry=on_retry,
            )
        finally:
            if retried and watch is not None:
                watch.settled(what)

    def check_bucket(self) -> None:
        """Fail fast when the bucket is missing or not ours (one attempt, no retries)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            raise StorageError(
                f"cannot use bucket {self.bucket!r} at {masked_url(self.endpoint)}: {e}; check "
                "LCM_S3_BUCKET, LCM_S3_ENDPOINT_URL and the credentials, and create the bucket"
            ) from e

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None when it does not exist."""
        try:
            return self.retry(
                f"head {self.uri(key)}",
                lambda: dict(self.client.head_object(Bucket=self.bucket, Key=key)),
            )
        except ObjectNotFound:
            return None

    def get(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """(body, response) of the object, or None when it does not exist."""

        def once() -> tuple[bytes, dict[str, Any]]:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            return data, dict(response)

        try:
            return self.retry(f"get {self.uri(key)}", once)
        except ObjectNotFound:
            return None

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        metadata: dict[str, str] | None = None,
        stop: threading.Event | None = None,
    ) -> str:
        """Upload ``data`` with Content-MD5 and check the stored ETag; return the ETag.

        ``stop`` set: no more retries (the caller abandoned the upload).
        """
        md5 = hashlib.md5(data)
        extra: dict[str, Any] = {"Metadata": metadata} if metadata else {}

        def once() -> str:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                **extra,
            )
            etag = str(response.get("ETag", "")).strip('"')
            if etag and etag != md5.hexdigest():
                raise TransientStorageError(
                    f"put {self.uri(key)}: stored ETag {etag} != md5 {md5.hexdigest()}"
                )
            return etag

        return self.retry(f"put {self.uri(key)}", once, stop)

    def upload_file(
        self,
        path: Path,
        key: str,
        *,
        size: int,
        sha256: str,
        metadata: dict[str, str] | None = None,
        multipart_bytes: int = 64 * 1024 * 1024,
        before: Callable[[], None] | None = None,
        callback: Callable[[int], None] | None = None,
    ) -> None:
        """Multi-part upload of a large file, then HEAD: its size and sha256 must match.

        ``before`` runs before each attempt and after its transfer (e.g. to check that the
        file did not change); ``callback(n)`` sees the bytes sent, and ``-sent`` when an
        attempt is given up, so a progress bar can count back.
        """
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=multipart_bytes,
            multipart_chunksize=max(8 * 1024 * 1024, multipart_bytes // 8),
            max_concurrency=4,
        )
        meta = {META_SHA256: sha256, **(metadata or {})}

        def once() -> None:
            sent = 0

            def count(n: int) -> None:
                nonlocal sent
                sent += n
                if callback is not None:
                    callback(n)

            try:
                if before is not None:
                    before()
                self.client.upload_file(
                    str(path),
                    self.bucket,
                    key,
                    ExtraArgs={"Metadata": meta, "ContentType": "application/octet-stream"},
                    Config=config,
                    Callback=count,
                )
                if before is not None:
                    before()
                head = self.client.head_object(Bucket=self.bucket, Key=key)
                stored_size = int(head.get("ContentLength", -1))
                stored_sha = (head.get("Metadata") or {}).get(META_SHA256)
                if stored_size != size or stored_sha != sha256:
                    raise TransientStorageError(
                        f"upload {self.uri(key)}: stored {stored_size} bytes with sha256 "
                        f"{stored_sha}, expected {size} bytes with sha256 {sha256}"
                    )
            except BaseException:
                if callback is not None and sent:
                    callback(-sent)
                raise

        self.retry(f"upload {self.uri(key)}", once)

    def download_file(
        self,
        key: str,
        dest: Path,
        check: Callable[[Path], None] | None = None,
    ) -> None:
        """Download the object to ``dest``; raise ObjectNotFound when it does not exist.

        ``check(dest)`` runs after each attempt and may raise TransientStorageError (e.g. a
        sha256 mismatch) to download again.
        """

        def once() -> None:
            self.client.download_file(self.bucket, key, str(dest))
            if check is not None:
                check(dest)

        self.retry(f"download {self.uri(key)}", once)

    def delete(self, key: str) -> None:
        """Remove the object (a missing one is no error: S3 answers 204 either way)."""
        self.retry(
            f"delete {self.uri(key)}",
            lambda: self.client.delete_object(Bucket=self.bucket, Key=key),
        )

    def folders_between(self, prefix: str, after: str, last: str) -> set[str]:
        """The sub-prefixes (``prefix + name + "/"``) directly under ``prefix`` whose name sorts
        after ``after`` and not after ``last``: one listing page per 1000 of them."""
        high = f"{prefix}{last}/"

        def once() -> set[str]:
            found: set[str] = set()
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/", StartAfter=f"{prefix}{after}"
            )
            for page in pages:
                names = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
                found.update(n for n in names if n <= high)
                if any(n >= high for n in names) or not names:
                    break
            return found

        return self.retry(f"list {self.uri(prefix)}", once)

    def list(self, prefix: str) -> tuple[list[str], list[dict[str, Any]]]:
        """(sub-prefixes, objects) directly under ``prefix``."""

        def once() -> tuple[list[str], list[dict[str, Any]]]:
            prefixes: list[str] = []
            objects: list[dict[str, Any]] = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
                objects += list(page.get("Contents", []))
            return prefixes, objects

        return self.retry(f"list {self.uri(prefix)}", once)
