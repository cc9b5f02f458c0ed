"""The producer's Celery client: publishes jobs by task name, reads results.

It defines no tasks and never imports the worker.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from lcm_fleet.contract import WIRE_CONFIG
from lcm_fleet.records import RecordStore, open_records
from lcm_fleet.settings import ConnectionSettings


def make_client(settings: ConnectionSettings) -> Celery:
    app = Celery("lcm_fleet_producer", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(WIRE_CONFIG)
    app.conf.update(settings.celery_tls_config())
    app.conf.update(
        task_default_queue=settings.queue,
        result_expires=settings.result_expires_s,
        broker_connection_retry_on_startup=False,
        # Fail fast here; call_with_backoff does bounded retries around publishing.
        broker_connection_max_retries=1,
        redis_socket_connect_timeout=5,
        redis_socket_timeout=30,
        task_send_sent_event=True,  # a task-sent event for Flower and other monitors
    )
    return app


@lru_cache(maxsize=8)
def cached_client(settings: ConnectionSettings) -> Celery:
    return make_client(settings)


@lru_cache(maxsize=8)
def cached_records(settings: ConnectionSettings) -> RecordStore:
    return open_records(settings)
