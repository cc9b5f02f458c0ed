"""The render task: decode, render, store, decide on retry. The logic lives elsewhere.

It runs on one of Celery's threads (worker/render/process.py says why), under the job's own
soft and hard time limits (worker/render/limits.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded

from lcm_fleet.backoff import Backoff
from lcm_fleet.contract import HEADER_SUBMITTED_AT, TASK_RENDER, Job, parse_job
from lcm_fleet.errors import InvalidJob, TransientStorageError
from worker import metrics, runtime
from worker.consumer.app import app
from worker.consumer.deliveries import JobAbandoned, count_delivery, forget_deliveries
from worker.consumer.reclaim import HeldRequest
from worker.errors import RendererLost
from worker.job import run_job
from worker.render.limits import Deadlines
from worker.render.sizes import format_size

logger = logging.getLogger(__name__)

#: Failures that no retry can fix: the job fails once, with its reason recorded.
NEVER_RETRY = (InvalidJob, JobAbandoned)


def decode_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Job:
    if kwargs or len(args) != 1:
        raise InvalidJob(
            f"a render message carries exactly one positional argument, the job object; got "
            f"{len(args)} positional and {sorted(kwargs)} keyword arguments"
        )
    return parse_job(args[0])


def queue_wait_s(submitted_at: Any) -> float | None:
    """Seconds between submit and start; None without the producer's header."""
    try:
        return max(0.0, time.time() - float(submitted_at))
    except (TypeError, ValueError):
        return None


# HeldRequest records each delivered message until it is acknowledged, so that if this
# worker dies its jobs go back to the queue at once (worker/consumer/reclaim.py).
@app.task(name=TASK_RENDER, bind=True, throws=NEVER_RETRY, Request=HeldRequest)
def render_job(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    rt = runtime.current()
    settings = rt.settings
    task_id = str(self.request.id)
    retries = int(self.request.retries or 0)
    wait_s = queue_wait_s(self.request.get(HEADER_SUBMITTED_AT))
    t0 = time.perf_counter()
    deadlines = Deadlines.start(settings.task_soft_time_limit_s, settings.task_time_limit_s)
    size = metrics.SIZE_UNKNOWN
    try:
        count_delivery(
            rt.redis(),
            task_id,
            retries,
            settings.max_deliveries,
            ttl_s=settings.visibility_timeout_s * (settings.max_deliveries + 1),
        )
        job = decode_payload(args, kwargs)
        slots = rt.render_slots()
        wanted = slots.classes.size_of(job)
        size = format_size(wanted) if wanted in slots.classes.sizes else metrics.SIZE_OTHER
        result = run_job(
            job,
            slots=slots,
            store=rt.store(),
            prefix=settings.s3_prefix,
            model_manifest_sha256=rt.model.manifest.sha256,
            worker=rt.name,
            deadlines=deadlines,
            executor=rt.uploads(),
        )
    except NEVER_RETRY as e:
        metrics.count_outcome("abandoned" if isinstance(e, JobAbandoned) else "invalid", size)
        logger.warning("job %s failed (not retried): %s [size %s]", task_id, e, size)
        raise
    except TransientStorageError as e:
        if retries >= settings.task_max_retries:
            metrics.count_outcome("failed", size)
            logger.error("job %s failed after %d retries: %s [size %s]", task_id, retries, e, size)
            raise
        backoff = Backoff(
            settings.retry_backoff_base_s,
            max(settings.retry_backoff_cap_s, settings.retry_backoff_base_s),
        )
        countdown = backoff.delay(retries)
        metrics.count_outcome("retried", size)
        logger.warning(
            "job %s: storage failed (%s); retry %d in %.1fs [size %s]",
            task_id,
            e,
            retries + 1,
            countdown,
            size,
        )
        raise self.retry(exc=e, countdown=countdown, max_retries=settings.task_max_retries) from e
    except RendererLost as e:
        # What task_reject_on_worker_lost does for a dead prefork child: back to the
        # queue at once; the delivery counter fails the job after LCM_MAX_DELIVERIES.
        metrics.count_outcome("requeued", size)
        logger.error("job %s requeued: %s [size %s]", task_id, e, size)
        raise Reject(str(e), requeue=True) from e
    except (SoftTimeLimitExceeded, TimeLimitExceeded) as e:
        # Failed and acknowledged (not retried), as Celery's own time limits do.
        metrics.count_outcome("timed_out", size)
        logger.error("job %s failed: %s [size %s]", task_id, e, size)
        raise
    except Exception as e:
        metrics.count_outcome("failed", size)
        logger.exception("job %s failed: %s [size %s]", task_id, e, size)
        raise
    result.durations_s["total"] = round(time.perf_counter() - t0, 4)
    if wait_s is not None:
        result.durations_s["queue_wait"] = round(wait_s, 4)
    forget_deliveries(rt.redis(), task_id, retries)
    metrics.observe_job(result.durations_s, len(result.images), size)
    d = result.durations_s
    logger.info(
        "job %s succeeded: %d image(s) %dx%d steps=%d | queue_wait=%s slot_wait=%.3fs "
        "text_encoder=%.3fs unet=%.3fs vae=%.3fs encode=%.3fs upload=%.3fs total=%.3fs",
        task_id,
        len(result.images),
        result.width,
        result.height,
        result.steps,
        "-" if wait_s is None else f"{wait_s:.3f}s",
        d["slot_wait"],
        d["text_encoder"],
        d["unet"],
        d["vae"],
        d["encode"],
        d["upload"],
        d["total"],
    )
    return result.model_dump(mode="json")
