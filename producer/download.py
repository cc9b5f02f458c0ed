"""Download a finished job's images from object storage and verify their sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lcm_fleet.contract import JobResult
from lcm_fleet.keys import result_key
from lcm_fleet.storage import s3_client
from producer.errors import ProducerError
from producer.settings import ProducerSettings


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]


def storage_client(settings: ProducerSettings) -> Any:
    """A boto3 S3 client with the producer's credentials (or boto3's default chain)."""
    return s3_client(
        settings, _secret(settings.s3_access_key_id), _secret(settings.s3_secret_access_key)
    )


def fetch_result(job_id: str, settings: ProducerSettings) -> JobResult:
    client = storage_client(settings)
    key = result_key(settings.s3_prefix, job_id)
    try:
        body = client.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
    except Exception as e:
        raise ProducerError(
            f"no result for job {job_id} at s3://{settings.s3_bucket}/{key}: {e} "
            "(not finished yet, wrong LCM_S3_* settings, or a different LCM_S3_PREFIX)"
        ) from e
    return JobResult.model_validate(json.loads(body))


def download(job_id: str, out_dir: Path, settings: ProducerSettings | None = None) -> list[Path]:
    settings = settings or ProducerSettings()
    return download_images(fetch_result(job_id, settings), out_dir, settings)


def download_images(
    result: JobResult, out_dir: Path, settings: ProducerSettings, client: Any = None
) -> list[Path]:
    """Download the images of a result already in hand (e.g. from ``JobHandle.wait``)."""
    job_id = result.job_id
    client = client or storage_client(settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in result.images:
        data = client.get_object(Bucket=settings.s3_bucket, Key=image.key)["Body"].read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != image.sha256:
            raise ProducerError(
                f"{image.uri}: sha256 {digest} does not match the result's {image.sha256}"
            )
        path = out_dir / f"{job_id}-{image.index:03d}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths
