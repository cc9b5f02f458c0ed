"""Download a finished job's images from object storage and verify their sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lcm_fleet.contract import JobResult
from lcm_fleet.errors import StorageError
from lcm_fleet.keys import result_key
from lcm_fleet.storage import ObjectStore
from producer.errors import ProducerError
from producer.settings import ProducerSettings


def result_store(settings: ProducerSettings) -> ObjectStore:
    """The results bucket with the producer's credentials (or boto3's default chain)."""
    return ObjectStore.from_settings(settings)


def _output_prefix(job_id: str, settings: ProducerSettings) -> str | None:
    """The job's output prefix, from its record (None: no record, or the default layout)."""
    from producer.queue import cached_records

    try:
        record = cached_records(settings).get_job(job_id)
    except Exception:  # no record to read: the default layout is tried
        return None
    return record.job.output_prefix if record is not None and record.job is not None else None


def fetch_result(job_id: str, settings: ProducerSettings) -> JobResult:
    store = result_store(settings)
    key = result_key(settings.s3_prefix, job_id, _output_prefix(job_id, settings))
    try:
        got = store.get(key)
    except StorageError as e:
        got, problem = None, str(e)
    else:
        problem = "no such object"
    if got is None:
        raise ProducerError(
            f"no result for job {job_id} at {store.uri(key)}: {problem} "
            "(not finished yet, wrong LCM_S3_* settings, or a different LCM_S3_PREFIX)"
        )
    return JobResult.model_validate(json.loads(got[0]))


def download(job_id: str, out_dir: Path, settings: ProducerSettings | None = None) -> list[Path]:
    settings = settings or ProducerSettings()
    return download_images(fetch_result(job_id, settings), out_dir, settings)


def download_images(
    result: JobResult,
    out_dir: Path,
    settings: ProducerSettings,
    store: ObjectStore | None = None,
) -> list[Path]:
    """Download the images of a result already in hand (e.g. from ``JobHandle.wait``)."""
    job_id = result.job_id
    store = store or result_store(settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in result.images:
        try:
            got = store.get(image.key)
        except StorageError as e:
            raise ProducerError(f"{image.uri}: {e}") from e
        if got is None:
            raise ProducerError(f"{image.uri}: the image is missing from storage")
        data = got[0]
        digest = hashlib.sha256(data).hexdigest()
        if digest != image.sha256:
            raise ProducerError(
                f"{image.uri}: sha256 {digest} does not match the result's {image.sha256}"
            )
        path = out_dir / f"{job_id}-{image.index:03d}.png"
        path.write_bytes(data)
        paths.append(path)
    return paths
