"""Store a job's images and ``result.json`` under deterministic keys.

``ResultWriter`` encodes and uploads each image as soon as it is rendered, on a
background thread when given an executor, so image ``i`` is encoded and uploaded
while image ``i + 1`` renders (openvino.genai releases the GIL while it generates).
``finish`` waits for every upload to be verified before it writes ``result.json``;
the task returns, and the job is acknowledged, only after that.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass

from lcm_fleet.contract import ImageRecord, Job, JobResult
from lcm_fleet.keys import image_key, result_key
from lcm_fleet.storage import ObjectStore
from worker.durations import TimedResult
from worker.errors import JobCanceled
from worker.render.images import Rendered, RenderedImage
from worker.render.limits import Deadlines
from worker.results.png import encode_png, image_metadata

#: How often a job waiting for its uploads checks its time limit and its cancel flag.
UPLOAD_POLL_S = 0.5


@dataclass(frozen=True)
class _Stored:
    record: ImageRecord
    encode_s: float
    upload_s: float


class ResultWriter:
    def __init__(
        self,
        store: ObjectStore,
        job: Job,
        *,
        prefix: str,
        model_manifest_sha256: str,
        worker: str,
        executor: Executor | None = None,
    ) -> None:
        self.store, self.job, self.prefix = store, job, prefix
        self.model_manifest_sha256, self.worker = model_manifest_sha256, worker
        self.executor = executor
        self._pending: list[Future[_Stored]] = []
        #: Set when the job is abandoned: uploads still retrying give up.
        self._stop = threading.Event()

    def _encode_upload(self, image: RenderedImage, guidance_scale: float) -> _Stored:
        job = self.job
        height, width = image.pixels.shape[:2]
        t0 = time.perf_counter()
        data = encode_png(
            image.pixels,
            image_metadata(
                job_id=job.job_id,
                index=image.index,
                prompt=job.prompt,
                seed=image.seed,
                steps=job.steps,
                guidance_scale=guidance_scale,
                width=width,
                height=height,
                model_manifest_sha256=self.model_manifest_sha256,
            ),
        )
        t1 = time.perf_counter()
        key = image_key(self.prefix, job.job_id, image.index, job.output_prefix)
        self.store.put(key, data, "image/png", stop=self._stop)
        record = ImageRecord(
            index=image.index,
            seed=image.seed,
            key=key,
            uri=self.store.uri(key),
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
        )
        return _Stored(record, t1 - t0, time.perf_counter() - t1)

    def add(self, image: RenderedImage, guidance_scale: float) -> None:
        """Encode and upload one image (in the background when there is an executor)."""
        if self.executor is None:
            done: Future[_Stored] = Future()
            done.set_result(self._encode_upload(image, guidance_scale))
            self._pending.append(done)
        else:
            self._pending.append(self.executor.submit(self._encode_upload, image, guidance_scale))

    def abandon(self) -> None:
        """After a failed render: uploads stop retrying; wait for the started ones to end
        (so that :meth:`stored_keys` names every image that made it)."""
        self._stop.set()
        for future in self._pending:
            future.cancel()
            if not future.cancelled():
                future.exception()

    def stored_keys(self) -> list[str]:
        """Keys of the images whose upload finished and verified (after :meth:`abandon`)."""
        return [
            f.result().record.key
            for f in self._pending
            if f.done() and not f.cancelled() and f.exception() is None
        ]

    def finish(
        self,
        rendered: Rendered,
        deadlines: Deadlines | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> TimedResult:
        """Wait for every image's verified upload (until the soft limit, or ``cancelled()``:
        S3 may be away for minutes), then write result.json."""
        t0 = time.perf_counter()
        if deadlines is not None or cancelled is not None:
            deadlines = deadlines or Deadlines.none()
            while True:
                left = deadlines.soft_left()
                _, waiting = wait(self._pending, timeout=max(0.0, min(left, UPLOAD_POLL_S)))
                if not waiting:
                    break
                if deadlines.soft_left() <= 0:
                    self.abandon()
                    raise deadlines.soft_exceeded(f"waiting for {len(waiting)} image upload(s)")
                if cancelled is not None and cancelled():
                    self.abandon()
                    raise JobCanceled(f"canceled while {len(waiting)} image upload(s) were pending")
        stored = [future.result() for future in self._pending]
        waited = time.perf_counter() - t0
        durations = rendered.durations.but(
            encode=sum(s.encode_s for s in stored), store_wait=waited
        )
        job = self.job
        result = JobResult(
            job_id=job.job_id,
            prompt=job.prompt,
            steps=job.steps,
            guidance_scale=rendered.guidance_scale,
            width=rendered.width,
            height=rendered.height,
            images=[s.record for s in sorted(stored, key=lambda s: s.record.index)],
            model_manifest_sha256=self.model_manifest_sha256,
            durations_s=durations.as_dict(),
            worker=self.worker,
        )
        t1 = time.perf_counter()
        body = json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True).encode()
        self.store.put(
            result_key(self.prefix, job.job_id, job.output_prefix), body, "application/json"
        )
        upload = sum(s.upload_s for s in stored) + time.perf_counter() - t1
        return TimedResult.of(result, durations.but(upload=upload))
