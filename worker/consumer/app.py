"""The worker's Celery app. Created bare at import; ``configure`` applies the settings."""

from __future__ import annotations

import logging

from celery import Celery

from lcm_fleet.contract import WIRE_CONFIG
from worker.settings import WorkerSettings

#: The render task's module is named, not imported: the worker imports it at start
#: (``include``), and the task module imports this one.
TASK_MODULES = ("worker.consumer.tasks",)
app = Celery("lcm_fleet_worker", include=list(TASK_MODULES))
app.conf.update(WIRE_CONFIG)


def configure(settings: WorkerSettings) -> Celery:
    app.conf.update(settings.celery_tls_config())
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
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=20,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
    )
    # One log line per job comes from the task itself; Celery's own success line
    # would repeat the whole result.
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    # Register the task now (the worker would at start), so that --check and tools see it.
    app.loader.import_default_modules()
    return app
