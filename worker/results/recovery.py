"""What a job already left in S3: a verified earlier result, or images to clean up.

- A job delivered again after its objects were stored (its worker lost Redis while it
  recorded the success, and the message came back) is not rendered again when its
  ``result.json`` is there and verifies (:func:`stored_result`): same job, same model, every
  image present with the sha256 and size the result names. Anything less and the job is
  rendered again, which overwrites the same keys (idempotent).
- A job that ends without a result and without being asked to stop (failed for good, timed
  out) removes the images it had stored (:func:`remove_partial`, best effort); the keys it
  could not remove are returned, so that the job's record lists them. Nothing is removed
  when the job's ``result.json`` exists: another delivery of the same job succeeded with
  those keys.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lcm_fleet.batch_manifest import NO_RESULT, verify_stored
from lcm_fleet.contract import Job, JobResult
from lcm_fleet.errors import StorageError
from lcm_fleet.keys import result_key_beside
from lcm_fleet.storage import ObjectStore

logger = logging.getLogger(__name__)


def _problem(result: JobResult, model_sha256: str, size: tuple[int, int]) -> str | None:
    if result.model_manifest_sha256 != model_sha256:
        return f"it was rendered by another model ({result.model_manifest_sha256[:12]})"
    if (result.width, result.height) != size:
        return f"its size {result.width}x{result.height} is not {size[0]}x{size[1]}"
    return None


def stored_result(
    store: ObjectStore, prefix: str, job: Job, model_sha256: str, size: tuple[int, int]
) -> JobResult | None:
    """The job's stored result when it and every image it names verify; else None."""
    found = verify_stored(store, prefix, job, lambda r: _problem(r, model_sha256, size))
    if found.problem is not None and found.problem != NO_RESULT:
        logger.warning(
            "job %s: its stored result.json does not verify (%s); rendering it again",
            job.job_id,
            found.problem,
        )
    return found.result


def remove_partial(store: ObjectStore, prefix: str, job_id: str, keys: Sequence[str]) -> list[str]:
    """Delete the images of a job that ended without a result; the keys still stored."""
    if not keys:
        return []
    # A few attempts, not the upload budget: a job that failed in an outage ends now.
    store = ObjectStore(store.client, store.bucket, store.backoff)
    try:  # beside the images: the job's own folder, whatever its output prefix
        if store.head(result_key_beside(keys[0])) is not None:
            logger.info(
                "job %s: result.json exists (another delivery succeeded); its images stay",
                job_id,
            )
            return []
    except StorageError as e:
        logger.warning("job %s: cannot check for its result.json (%s); images kept", job_id, e)
        return list(keys)
    left: list[str] = []
    for key in keys:
        try:
            store.delete(key)
        except StorageError as e:
            logger.warning("job %s: could not delete %s: %s", job_id, key, e)
            left.append(key)
    if left:
        logger.warning(
            "job %s ended without a result; %d image(s) are still stored (listed in its "
            "record): %s",
            job_id,
            len(left),
            ", ".join(left),
        )
    else:
        logger.info(
            "job %s ended without a result; removed the %d image(s) it had stored",
            job_id,
            len(keys),
        )
    return left
