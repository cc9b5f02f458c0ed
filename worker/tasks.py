"""The render task: decode, render, store, decide on retry. The logic lives elsewhere."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_process_shutdown

from producer.backoff import Backoff
from producer.contract import HEADER_SUBMITTED_AT, TASK_RENDER, Job, parse_job
from producer.errors import InvalidJob
from worker import metrics, runtime
from worker.celery_app import app
from worker.deliveries import JobAbandoned, count_delivery, forget_deliveries
from worker.errors import TransientStorageError
from worker.render import render
from worker.results import ResultWriter

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


@worker_process_init.connect
def _load_pipeline(**_: Any) -> None:
    runtime.load_in_child()


@worker_process_shutdown.connect
def _forget_metrics(pid: int | None = None, **_: Any) -> None:
    import os

    metrics.mark_dead(pid or os.getpid())


def queue_wait_s(submitted_at: Any) -> float | None:
    """Seconds between submit and start; None without the producer's header."""
    try:
        return max(0.0, time.time() - float(submitted_at))
    except (TypeError, ValueError):
        return None


@app.task(name=TASK_RENDER, bind=True, throws=NEVER_RETRY)
def render_job(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    rt = runtime.current()
    settings = rt.settings
    task_id = str(self.request.id)
    retries = int(self.request.retries or 0)
    wait_s = queue_wait_s(self.request.get(HEADER_SUBMITTED_AT))
    t0 = time.perf_counter()
    try:
        count_delivery(
            rt.redis(),
            task_id,
            retries,
            settings.max_deliveries,
            ttl_s=settings.visibility_timeout_s * (settings.max_deliveries + 1),
        )
        job = decode_payload(args, kwargs)
        writer = ResultWriter(
            rt.store(),
            job,
            prefix=settings.s3_prefix,
            model_manifest_sha256=rt.model.manifest.sha256,
            worker=rt.name,
            executor=rt.uploads(),
        )
        try:
            rendered = render(job, rt.pipeline(), on_image=writer.add)
        except BaseException:
            writer.abandon()
            raise
        result = writer.finish(rendered)
    except NEVER_RETRY as e:
        metrics.count_outcome("abandoned" if isinstance(e, JobAbandoned) else "invalid")
        logger.warning("job %s failed (not retried): %s", task_id, e)
        raise
    except TransientStorageError as e:
        if retries >= settings.task_max_retries:
            metrics.count_outcome("failed")
            logger.error("job %s failed after %d retries: %s", task_id, retries, e)
            raise
        backoff = Backoff(
            settings.retry_backoff_base_s,
            max(settings.retry_backoff_cap_s, settings.retry_backoff_base_s),
        )
        countdown = backoff.delay(retries)
        metrics.count_outcome("retried")
        logger.warning(
            "job %s: storage failed (%s); retry %d in %.1fs", task_id, e, retries + 1, countdown
        )
        raise self.retry(exc=e, countdown=countdown, max_retries=settings.task_max_retries) from e
    except Exception as e:
        metrics.count_outcome("failed")
        logger.exception("job %s failed: %s", task_id, e)
        raise
    result.durations_s["total"] = round(time.perf_counter() - t0, 4)
    if wait_s is not None:
        result.durations_s["queue_wait"] = round(wait_s, 4)
    forget_deliveries(rt.redis(), task_id, retries)
    metrics.observe_job(result.durations_s, len(result.images))
    d = result.durations_s
    logger.info(
        "job %s succeeded: %d image(s) %dx%d steps=%d | queue_wait=%s text_encoder=%.3fs "
        "unet=%.3fs vae=%.3fs encode=%.3fs upload=%.3fs total=%.3fs",
        task_id,
        len(result.images),
        result.width,
        result.height,
        result.steps,
        "-" if wait_s is None else f"{wait_s:.3f}s",
        d["text_encoder"],
        d["unet"],
        d["vae"],
        d["encode"],
        d["upload"],
        d["total"],
    )
    return result.model_dump(mode="json")
