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

import hashlib
import logging
from collections.abc import Sequence

from pydantic import ValidationError

from lcm_fleet.contract import Job, JobResult
from lcm_fleet.errors import StorageError
from lcm_fleet.keys import image_key, result_key
from lcm_fleet.storage import ObjectStore

logger = logging.getLogger(__name__)


def _problem(result: JobResult, job: Job, model_sha256: str, size: tuple[int, int]) -> str | None:
    if result.job_id != job.job_id or result.prompt != job.prompt or result.steps != job.steps:
        return "it is another job's (id, prompt or steps differ)"
    if result.model_manifest_sha256 != model_sha256:
        return f"it was rendered by another model ({result.model_manifest_sha256[:12]})"
    if (result.width, result.height) != size:
        return f"its size {result.width}x{result.height} is not {size[0]}x{size[1]}"
    if [i.index for i in result.images] != list(range(job.num_images)):
        return f"it lists {len(result.images)} image(s), the job asks for {job.num_images}"
    if [i.seed for i in result.images] != [job.image_seed(i) for i in range(job.num_images)]:
        return "its seeds are not the job's"
    return None


def stored_result(
    store: ObjectStore, prefix: str, job: Job, model_sha256: str, size: tuple[int, int]
) -> JobResult | None:
    """The job's stored result when it and every image it names verify; else None."""
    found = store.get(result_key(prefix, job.job_id))
    if found is None:
        return None
    try:
        result = JobResult.model_validate_json(found[0])
    except ValidationError as e:
        logger.warning("job %s: its stored result.json does not parse (%s)", job.job_id, e)
        return None
    problem = _problem(result, job, model_sha256, size)
    for image in result.images:
        if problem is not None:
            break
        if image.key != image_key(prefix, job.job_id, image.index):
            problem = f"image {image.index} has the key {image.key}"
            continue
        got = store.get(image.key)
        if got is None:
            problem = f"image {image.key} is missing"
        elif len(got[0]) != image.bytes or hashlib.sha256(got[0]).hexdigest() != image.sha256:
            problem = f"image {image.key} does not match its sha256 or size"
    if problem is not None:
        logger.warning(
            "job %s: its stored result.json does not verify (%s); rendering it again",
            job.job_id,
            problem,
        )
        return None
    return result


def remove_partial(store: ObjectStore, prefix: str, job_id: str, keys: Sequence[str]) -> list[str]:
    """Delete the images of a job that ended without a result; the keys still stored."""
    if not keys:
        return []
    # A few attempts, not the upload budget: a job that failed in an outage ends now.
    store = ObjectStore(store.client, store.bucket, store.backoff)
    try:
        if store.head(result_key(prefix, job_id)) is not None:
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
