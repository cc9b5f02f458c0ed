"""The worker's Celery app. Created bare at import; ``configure`` applies the settings."""

from __future__ import annotations

import logging

from celery import Celery

from lcm_fleet.consuming.config import Guard, guard_app
from lcm_fleet.contract import TASK_RENDER, WIRE_CONFIG
from worker.settings import WorkerSettings

#: The render task's module is named, not imported: the worker imports it at start
#: (``include``), and the task module imports this one.
TASK_MODULES = ("worker.consumer.tasks",)
logger = logging.getLogger(__name__)
app = Celery("lcm_fleet_worker", include=list(TASK_MODULES))
app.conf.update(WIRE_CONFIG)


#: The task names the worker's queues carry; anything else on them is dead-lettered.
QUEUE_TASKS = frozenset({TASK_RENDER})


def guard(settings: WorkerSettings, worker_name: str | None = None) -> Guard:
    """The worker's guard of its queues (lcm_fleet/consuming/)."""
    return Guard(
        tasks=QUEUE_TASKS,
        visibility_timeout_s=settings.visibility_timeout_s,
        # An ETA (Celery's retry countdown) beyond the visibility timeout would be
        # delivered a second time while the worker still holds it.
        max_eta_ahead_s=float(settings.visibility_timeout_s - settings.task_time_limit_s),
        consumer_name=worker_name,
        interactive_burst=settings.interactive_burst,
    )


def configure(settings: WorkerSettings, worker_name: str | None = None) -> Celery:
    app.conf.update(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        task_default_queue=settings.queue,
        result_expires=settings.result_expires_s,
        # A job is acknowledged only when it finished (stored or failed for good). If its
        # render process dies, the task requeues it (worker/render/process.py); if the whole
        # worker dies, Redis delivers it again after the visibility timeout.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Per thread: with two threads per render process, the next job is already here
        # when the running one finishes rendering. No more: a job fetched waits for no
        # other job of this worker but the one rendering, so the class order of the fetches
        # (lcm_fleet/consuming/order.py) is the order jobs start in.
        worker_prefetch_multiplier=1,
        task_track_started=True,
        # No task_soft_time_limit/task_time_limit: the threads pool cannot enforce them;
        # the worker enforces LCM_TASK_SOFT_TIME_LIMIT_S/LCM_TASK_TIME_LIMIT_S itself
        # (worker/render/limits.py).
        # Task events on, so that Flower and `celery events` see tasks without remote control.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        # Redis lost for longer than these retries: "Unrecoverable error", exit code 1.
        broker_connection_max_retries=settings.broker_reconnect_retries,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
    )
    guard_app(app, settings, guard(settings, worker_name))
    # One log line per job comes from the task itself; Celery's own success line
    # would repeat the whole result.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    # Register the task now (the worker would at start), so that --check and tools see it.
    app.loader.import_default_modules()
    return app
