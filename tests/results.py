"""A job's stored result as a worker leaves it, for tests that need one without rendering:
one builder for PNG objects, their ImageRecords and the JobResult (the caller stores)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from lcm_fleet.contract import ImageRecord, Job, JobResult
from lcm_fleet.keys import image_key


def make_stored_result(
    job: Job,
    put: Callable[[str, bytes], str],
    *,
    prefix: str = "",
    output_prefix: str | None = None,
    data: Callable[[int], bytes] | None = None,
    **fields: Any,
) -> JobResult:
    """Store each image of ``job`` with ``put(key, bytes) -> uri`` and return its result.

    ``data(i)``: image ``i``'s bytes (default: a few bytes naming the job and the index);
    ``fields`` override the JobResult's (guidance_scale, width, height, durations_s, ...).
    """
    images = []
    for i in range(job.num_images):
        body = data(i) if data is not None else f"png {job.job_id} {i}".encode()
        key = image_key(prefix, job.job_id, i, output_prefix)
        images.append(
            ImageRecord(
                index=i,
                seed=job.image_seed(i),
                key=key,
                uri=put(key, body),
                sha256=hashlib.sha256(body).hexdigest(),
                bytes=len(body),
            )
        )
    values: dict[str, Any] = {
        "guidance_scale": 8.0,
        "width": 64,
        "height": 64,
        "model_manifest_sha256": "m" * 64,
        "durations_s": {"total": 0.5},
        "worker": "w",
        **fields,
    }
    return JobResult(job_id=job.job_id, prompt=job.prompt, steps=job.steps, images=images, **values)
