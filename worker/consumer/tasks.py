"""The render task: decode and check the job, run it, return its result.

What becomes of a job that raises is decided in worker/consumer/policy.py, and recorded
(metrics, the job's log line) in worker/consumer/report.py; the task only applies it. It
runs on one of Celery's threads (worker/render/process.py says why), under the job's own
soft and hard time limits (worker/render/limits.py).

Redis going away does not strand a job (docs/operations.md#redis-persistence):

- before the render (delivery counter, the record's start): the message is given back
  (``Reject(requeue=True)``), to be delivered again once Redis answers;
- after the objects are stored, the record's ``succeeded`` and the delivery counter's
  cleanup are retried with capped, jittered backoff for LCM_BOOKKEEPING_BUDGET_S; if Redis
  is still away the message is given back unacknowledged, and its next delivery finds the
  stored ``result.json``, verifies it and every image (worker/results/recovery.py) and
  records the success without rendering again (a result that does not verify is rendered
  again, over the same keys).
- a delivery whose record already says ``succeeded`` (the acknowledgement was lost) returns
  that result without rendering.

A job that fails for good or times out removes the images it had stored; the ones it could
not remove are listed in its record (``partial_keys``). A cancelled job keeps the images it
had finished, listed in its record (the HTTP API serves them as ``partial_images``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject

from lcm_fleet.backoff import Backoff, call_with_backoff
from lcm_fleet.broker import REDIS_TRANSIENT
from lcm_fleet.contract import (
    HEADER_SUBMITTED_AT,
    TASK_RENDER,
    Job,
    JobClass,
    JobResult,
    interactive_queue,
    parse_job,
)
from lcm_fleet.errors import InvalidJob
from worker import metrics, runtime
from worker.consumer import report
from worker.consumer.app import app
from worker.consumer.deliveries import count_delivery, forget_deliveries, uncount_delivery
from worker.consumer.lifecycle import AlreadySucceeded, JobLifecycle
from worker.consumer.policy import (
    CANCELED_BY,
    NEVER_RETRY,
    Action,
    Outcome,
    RetryPolicy,
    decide,
)
from worker.consumer.reclaim import HeldRequest
from worker.errors import WorkerError
from worker.job import run_job
from worker.render.images import CheckedJob, check_job
from worker.render.limits import Deadlines
from worker.render.process import RenderSlots, SizeClass
from worker.render.sizes import format_size
from worker.results.manifest import manifest_writer
from worker.results.recovery import remove_partial, stored_result
from worker.results.waiting import StorageWaiting

__all__ = ["NEVER_RETRY", "decode_payload", "queue_wait_s", "render_job"]

logger = logging.getLogger(__name__)

#: Between attempts to record a stored job's success while Redis is away.
BOOKKEEPING_BACKOFF = Backoff(base_s=0.5, cap_s=5.0)


class BookkeepingLost(WorkerError):
    """The job's objects are stored but Redis stayed away while its success was recorded."""


def record_success(
    life: JobLifecycle, redis: Any, task_id: str, retries: int, result: JobResult, budget_s: float
) -> None:
    """The record's ``succeeded`` and the delivery counter's cleanup, retried while Redis is
    away (both are idempotent); BookkeepingLost after ``budget_s``."""

    def once() -> None:
        life.succeeded(result)
        forget_deliveries(redis, task_id, retries)

    try:
        call_with_backoff(
            once,
            transient=REDIS_TRANSIENT,
            backoff=BOOKKEEPING_BACKOFF,
            what=f"job {task_id}: recording its success (its objects are stored)",
            budget_s=max(budget_s, 0.001),
        )
    except REDIS_TRANSIENT as e:
        raise BookkeepingLost(
            f"job {task_id}: its objects are stored but Redis stayed away for {budget_s:.0f}s "
            f"while its success was recorded ({e}); given back unacknowledged: its next "
            "delivery verifies the stored result instead of rendering again"
        ) from e


def decode_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Job:
    if kwargs or len(args) != 1:
        raise InvalidJob(
            f"a render message carries exactly one positional argument, the job object; got "
            f"{len(args)} positional and {sorted(kwargs)} keyword arguments"
        )
    return parse_job(args[0])


def class_of_delivery(delivery_info: Any) -> JobClass:
    """Bulk for a message taken from a bulk queue (``q.bulk``), else interactive."""
    queue = (delivery_info or {}).get("routing_key") or ""
    return JobClass.INTERACTIVE if interactive_queue(str(queue)) == queue else JobClass.BULK


def queue_wait_s(submitted_at: Any) -> float | None:
    """Seconds between submit and start; None without the producer's header."""
    try:
        return max(0.0, time.time() - float(submitted_at))
    except (TypeError, ValueError):
        return None


def _size(job: Job | None, checked: CheckedJob[SizeClass] | None, slots: RenderSlots | None) -> str:
    """The job's ``size`` label: its checked size, or (refused, undecoded) what it asked for."""
    return (
        format_size(checked.size)
        if checked
        else metrics.size_label(job, slots.classes if slots else None)
    )


# HeldRequest records each delivered message until it is acknowledged, so that if this
# worker dies its jobs go back to the queue at once (worker/consumer/reclaim.py).
@app.task(name=TASK_RENDER, bind=True, throws=NEVER_RETRY + CANCELED_BY, Request=HeldRequest)
def render_job(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    rt = runtime.current()
    settings = rt.settings
    task_id = str(self.request.id)
    retries = int(self.request.retries or 0)
    wait_s = queue_wait_s(self.request.get(HEADER_SUBMITTED_AT))
    t0 = time.perf_counter()
    deadlines = Deadlines.start(settings.task_soft_time_limit_s, settings.task_time_limit_s)
    job_class = class_of_delivery(self.request.delivery_info)
    job: Job | None = None
    slots: RenderSlots | None = None
    checked: CheckedJob[SizeClass] | None = None
    ended = manifest_writer(rt.records(), rt.store(), settings.s3_prefix)
    life = JobLifecycle(rt.records(), task_id, rt.name, app.send_task, on_batch_finished=ended)
    try:
        # Redis away before anything was rendered: give the message back, to come again.
        try:
            count = count_delivery(
                rt.redis(),
                task_id,
                retries,
                settings.max_deliveries,
                ttl_s=settings.visibility_timeout_s * (settings.max_deliveries + 1),
            )
            job = decode_payload(args, kwargs)
            life.start(job, job_class)  # JobCanceled: cancelled while it was queued
        except REDIS_TRANSIENT as e:
            logger.warning("job %s: Redis away before it started (%s); given back", task_id, e)
            raise Reject(f"Redis away: {e}", requeue=True) from e
        slots = rt.render_slots()
        checked = check_job(job, slots.classes)
        stored = None
        if count > 1:  # delivered again: its objects may be stored already
            stored = stored_result(
                rt.store(), settings.s3_prefix, job, rt.model.manifest.sha256, checked.size
            )
        if stored is not None:
            logger.info(
                "job %s: delivered again with its result.json and %d image(s) stored and "
                "verified; recorded as succeeded without rendering again",
                task_id,
                len(stored.images),
            )
            record_success(
                life, rt.redis(), task_id, retries, stored, settings.bookkeeping_budget_s
            )
            return stored.model_dump(mode="json")
        done = run_job(
            checked,
            slots=slots,
            # Its record shows while its writes wait for S3 (worker/results/waiting.py).
            store=rt.store().watched(StorageWaiting(rt.records(), task_id)),
            prefix=settings.s3_prefix,
            model_manifest_sha256=rt.model.manifest.sha256,
            worker=rt.name,
            deadlines=deadlines,
            executor=rt.uploads(job_class),
            on_step=life.on_step,
            kept=life.kept,
            cancelled=life.cancelled,
            job_class=job_class,
        )
    except AlreadySucceeded as e:
        logger.info("job %s: its record says succeeded (a redelivery); not rendered", task_id)
        with contextlib.suppress(*REDIS_TRANSIENT):
            forget_deliveries(rt.redis(), task_id, retries)
        return e.result.model_dump(mode="json")
    except Reject:
        raise
    except BookkeepingLost as e:
        logger.error("%s", e)
        raise Reject(str(e), requeue=True) from e
    except Exception as e:
        policy = RetryPolicy.of(settings)
        decision = decide(e, retries, policy)
        report.failed(task_id, decision, e, _size(job, checked, slots))
        left = None
        if (
            decision.action is Action.FAIL
            and decision.outcome is not Outcome.CANCELED
            and life.kept
        ):
            left = remove_partial(rt.store(), settings.s3_prefix, task_id, life.kept)
        if job is not None:
            life.failed(decision, e, left)
        if decision.action is Action.RETRY:
            raise self.retry(
                exc=e, countdown=decision.countdown_s, max_retries=policy.max_retries
            ) from e
        if decision.action is Action.REQUEUE:
            # What task_reject_on_worker_lost does for a dead prefork child: back to the
            # queue at once; the delivery counter fails the job after LCM_MAX_DELIVERIES.
            # A job given back on purpose does not count the delivery.
            if decision.outcome is Outcome.GIVEN_BACK:
                try:
                    uncount_delivery(rt.redis(), task_id, retries)
                except REDIS_TRANSIENT as uncounted:
                    logger.warning("job %s: its delivery stays counted: %s", task_id, uncounted)
            raise Reject(str(e), requeue=True) from e
        raise
    done = done.but(total=time.perf_counter() - t0, queue_wait=wait_s)
    try:
        record_success(
            life, rt.redis(), task_id, retries, done.result, settings.bookkeeping_budget_s
        )
    except BookkeepingLost as e:
        logger.error("%s", e)
        raise Reject(str(e), requeue=True) from e
    report.succeeded(task_id, done, _size(job, checked, slots))
    return done.result.model_dump(mode="json")
