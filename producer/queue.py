"""The producer's Celery client: publishes jobs by task name, reads results.

It defines no tasks and never imports the worker. Jobs are published by the submission
script (lcm_fleet/records.py) in the same round trip as their record: :func:`task_message`
builds the message with Celery's own task-message construction (protocol 2) and kombu's
serializer, in the Redis transport's envelope, exactly as ``send_task`` would push it (a
test compares the two), so a worker consumes it as any other.
"""

from __future__ import annotations

import base64
import uuid
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.serialization import dumps
from kombu.utils.json import dumps as json_dumps

from lcm_fleet.contract import WIRE_CONFIG
from lcm_fleet.records import Enqueue, RecordStore, open_records
from lcm_fleet.settings import ConnectionSettings

#: kombu's ``PERSISTENT_DELIVERY_MODE``: what a ``send_task`` to a Redis queue sets.
_PERSISTENT = 2


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
    )
    return app


@lru_cache(maxsize=8)
def cached_client(settings: ConnectionSettings) -> Celery:
    return make_client(settings)


@lru_cache(maxsize=8)
def cached_records(settings: ConnectionSettings) -> RecordStore:
    return open_records(settings)


@lru_cache(maxsize=8)
def cached_broker(settings: ConnectionSettings) -> Any:
    """A plain Redis client of the broker (pushes messages when the records live elsewhere)."""
    return settings.redis_client(socket_timeout=30)


def broker_is_records(settings: ConnectionSettings) -> bool:
    """True when the records live in the broker's Redis, so that one script can record a job
    and push its message (else the message follows the record in a second round trip)."""
    return settings.records_url == settings.redis_url


def queue_push(pipe: Any, message: Enqueue) -> Any:
    """Queue on ``pipe`` (a redis-py pipeline, sync or asyncio: both buffer commands) what
    publishes ``message`` when the broker is not the records' Redis: drop the task id's old
    result, push the message. The caller executes it; the submission script does the same
    itself when the broker is the records' Redis (lcm_fleet/records.py)."""
    if message.result_key:
        pipe.delete(message.result_key)
    pipe.lpush(message.queue, message.payload)
    return pipe


def task_message(
    client: Celery,
    name: str,
    args: list[Any],
    task_id: str,
    queue: str,
    headers: dict[str, Any] | None = None,
) -> Enqueue:
    """The message ``client.send_task(name, args, task_id=..., queue=..., headers=...)``
    would LPUSH on the Redis list ``queue``, without sending it (and without subscribing to
    the result: the result backend still stores it, the worker decides that).

    Celery's ``amqp.create_task_message`` makes the protocol-2 headers and body, kombu's
    serializer encodes the body, and the envelope is kombu's virtual transport's
    (``prepare_message`` + ``_inplace_augment_message``: base64 body, delivery info, tag)
    for the anonymous exchange: a queue name as routing key, priority 0, no priority suffix.
    """
    message = client.amqp.create_task_message(
        task_id, name, args, reply_to=client.thread_oid, ignore_result=None
    )
    message.headers.update(headers or {})
    content_type, content_encoding, body = dumps(
        message.body, serializer=client.conf.task_serializer
    )
    raw = body.encode(content_encoding) if isinstance(body, str) else body
    properties = {
        **message.properties,
        "delivery_mode": _PERSISTENT,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    envelope = {
        "body": base64.b64encode(raw).decode("ascii"),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": message.headers,
        "properties": properties,
    }
    backend: Any = client.backend  # a KeyValueStoreBackend (Redis): celery-task-meta-<id>
    result_key = backend.get_key_for_task(task_id)
    return Enqueue(
        queue=queue,
        payload=json_dumps(envelope),
        result_key=result_key.decode() if isinstance(result_key, bytes) else str(result_key),
    )
