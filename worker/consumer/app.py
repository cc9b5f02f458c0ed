"""The worker's Celery app. Created bare at import; ``configure`` applies the settings."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from lcm_fleet.contract import TASK_RENDER, WIRE_CONFIG
from worker.consumer import broker_guard
from worker.settings import WorkerSettings

#: The render task's module is named, not imported: the worker imports it at start
#: (``include``), and the task module imports this one.
TASK_MODULES = ("worker.consumer.tasks",)
logger = logging.getLogger(__name__)
app = Celery("lcm_fleet_worker", include=list(TASK_MODULES))
app.conf.update(WIRE_CONFIG)


#: The task names the worker's queues carry; anything else on them is dead-lettered.
QUEUE_TASKS = frozenset({TASK_RENDER})


def screen_options(settings: WorkerSettings) -> dict[str, Any]:
    """The screen's policy (worker/consumer/screen.py), as broker transport options."""
    return {
        broker_guard.OPTION_MAX_MESSAGE_BYTES: settings.max_message_bytes,
        broker_guard.OPTION_TASKS: sorted(QUEUE_TASKS),
        # An ETA (Celery's retry countdown) beyond the visibility timeout would be
        # delivered a second time while the worker still holds it.
        broker_guard.OPTION_MAX_ETA_AHEAD_S: float(
            settings.visibility_timeout_s - settings.task_time_limit_s
        ),
    }


GUARDED_TRANSPORT = "worker.consumer.broker_guard:Transport"
#: URL schemes of kombu's plain Redis transport, which the guarded transport extends.
GUARDED_SCHEMES = ("redis", "rediss")


def configure(settings: WorkerSettings, worker_name: str | None = None) -> Celery:
    guarded = settings.redis_url.split("://", 1)[0] in GUARDED_SCHEMES
    if not guarded:
        logger.warning(
            "LCM_REDIS_URL is not a redis:// or rediss:// URL: malformed queue items "
            "are not screened (worker/consumer/broker_guard.py)"
        )
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
        # when the running one finishes rendering.
        worker_prefetch_multiplier=1,
        task_track_started=True,
        # No task_soft_time_limit/task_time_limit: the threads pool cannot enforce them;
        # the worker enforces LCM_TASK_SOFT_TIME_LIMIT_S/LCM_TASK_TIME_LIMIT_S itself
        # (worker/render/limits.py).
        # kombu's Redis transport, with the screen of queue items (worker/consumer/
        # broker_guard.py); GuardedConsumer dead-letters what Celery still cannot take.
        broker_transport=GUARDED_TRANSPORT if guarded else None,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            **screen_options(settings),
            broker_guard.OPTION_MAX_ENTRIES: settings.dead_letter_max,
            broker_guard.OPTION_WORKER: worker_name,
        },
        worker_consumer="worker.consumer.broker_guard:GuardedConsumer",
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
    # kombu turns TLS on for a rediss:// URL only when it picks the transport from the URL;
    # the guarded transport is named, so LCM_REDIS_TLS_* (certificates checked by default)
    # are always passed.
    app.conf.update(settings.celery_tls_config())
    broker_guard.set_client_factory(lambda: settings.redis_client(socket_timeout=5))
    # One log line per job comes from the task itself; Celery's own success line
    # would repeat the whole result.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    # Register the task now (the worker would at start), so that --check and tools see it.
    app.loader.import_default_modules()
    return app
