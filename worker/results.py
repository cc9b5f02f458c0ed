"""Store a rendered job: PNGs with metadata, then ``result.json``, under deterministic keys."""

from __future__ import annotations

import hashlib
import json
import time

from producer.contract import ImageRecord, JobResult, image_key, result_key
from worker.png import encode_png, image_metadata
from worker.render import Rendered
from worker.storage import ObjectStore


def store_result(
    rendered: Rendered, store: ObjectStore, *, prefix: str, model_manifest_sha256: str, worker: str
) -> JobResult:
    job = rendered.job
    encode_s = upload_s = 0.0
    records: list[ImageRecord] = []
    for image in rendered.images:
        t0 = time.perf_counter()
        data = encode_png(
            image.pixels,
            image_metadata(
                job_id=job.job_id,
                index=image.index,
                prompt=job.prompt,
                seed=image.seed,
                steps=job.steps,
                guidance_scale=rendered.guidance_scale,
                width=rendered.width,
                height=rendered.height,
                model_manifest_sha256=model_manifest_sha256,
            ),
        )
        t1 = time.perf_counter()
        key = image_key(prefix, job.job_id, image.index)
        store.put(key, data, "image/png")
        t2 = time.perf_counter()
        encode_s += t1 - t0
        upload_s += t2 - t1
        records.append(
            ImageRecord(
                index=image.index,
                seed=image.seed,
                key=key,
                uri=store.uri(key),
                sha256=hashlib.sha256(data).hexdigest(),
                bytes=len(data),
            )
        )
    durations = {k: round(v, 4) for k, v in rendered.durations_s.items()}
    durations["encode"] = round(encode_s, 4)
    durations["upload"] = round(upload_s, 4)
    result = JobResult(
        job_id=job.job_id,
        prompt=job.prompt,
        steps=job.steps,
        guidance_scale=rendered.guidance_scale,
        width=rendered.width,
        height=rendered.height,
        images=records,
        model_manifest_sha256=model_manifest_sha256,
        durations_s=durations,
        worker=worker,
    )
    t0 = time.perf_counter()
    body = json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True).encode()
    store.put(result_key(prefix, job.job_id), body, "application/json")
    result.durations_s["upload"] = round(upload_s + time.perf_counter() - t0, 4)
    return result
