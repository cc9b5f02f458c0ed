"""The render task: decode and check the job, run it, return its result.

What becomes of a job that raises is decided in worker/consumer/policy.py, and recorded
(metrics, the job's log line) in worker/consumer/report.py; the task only applies it. It
runs on one of Celery's threads (worker/render/process.py says why), under the job's own
soft and hard time limits (worker/render/limits.py).
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.exceptions import Reject

from lcm_fleet.contract import HEADER_SUBMITTED_AT, TASK_RENDER, Job, parse_job
from lcm_fleet.errors import InvalidJob
from worker import metrics, runtime
from worker.consumer import report
from worker.consumer.app import app
from worker.consumer.deliveries import count_delivery, forget_deliveries
from worker.consumer.lifecycle import JobLifecycle
from worker.consumer.policy import CANCELED_BY, NEVER_RETRY, Action, RetryPolicy, decide
from worker.consumer.reclaim import HeldRequest
from worker.job import run_job
from worker.render.images import CheckedJob, check_job
from worker.render.limits import Deadlines
from worker.render.process import RenderSlots, SizeClass
from worker.render.sizes import format_size

__all__ = ["NEVER_RETRY", "decode_payload", "queue_wait_s", "render_job"]


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
    job: Job | None = None
    slots: RenderSlots | None = None
    checked: CheckedJob[SizeClass] | None = None
    life = JobLifecycle(rt.records(), task_id, rt.name, app.send_task)
    try:
        count_delivery(
            rt.redis(),
            task_id,
            retries,
            settings.max_deliveries,
            ttl_s=settings.visibility_timeout_s * (settings.max_deliveries + 1),
        )
        job = decode_payload(args, kwargs)
        life.start(job)  # JobCanceled: cancelled while it was queued
        slots = rt.render_slots()
        checked = check_job(job, slots.classes)
        done = run_job(
            checked,
            slots=slots,
            store=rt.store(),
            prefix=settings.s3_prefix,
            model_manifest_sha256=rt.model.manifest.sha256,
            worker=rt.name,
            deadlines=deadlines,
            executor=rt.uploads(),
            on_step=life.on_step,
            kept=life.kept,
        )
    except Exception as e:
        policy = RetryPolicy.of(settings)
        decision = decide(e, retries, policy)
        report.failed(task_id, decision, e, _size(job, checked, slots))
        if job is not None:
            life.failed(decision, e)
        if decision.action is Action.RETRY:
            raise self.retry(
                exc=e, countdown=decision.countdown_s, max_retries=policy.max_retries
            ) from e
        if decision.action is Action.REQUEUE:
            # What task_reject_on_worker_lost does for a dead prefork child: back to the
            # queue at once; the delivery counter fails the job after LCM_MAX_DELIVERIES.
            raise Reject(str(e), requeue=True) from e
        raise
    done = done.but(total=time.perf_counter() - t0, queue_wait=wait_s)
    forget_deliveries(rt.redis(), task_id, retries)
    life.succeeded(done.result)
    report.succeeded(task_id, done, _size(job, checked, slots))
    return done.result.model_dump(mode="json")
