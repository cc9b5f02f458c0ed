"""No item Redis popped waits unread in a worker's socket (lcm_fleet/consuming/broker_guard.py's
Poller), on real Redis.

The case kombu 5.7 pauses: a ``BRPOP`` is sent with prefetch credit, and the credit drops
before its reply is read (Celery takes back what an ETA message lent once its time comes).
With kombu's own poller the popped item sits in the socket, in no queue and in no
unacknowledged set, until credit returns: a worker killed then loses it. With the guard's
poller the reply is read in the same turn and the item is in the unacknowledged set.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid
from typing import Any

import redis
from kombu import Connection, Consumer, Queue
from kombu.transport import redis as kombu_redis

from lcm_fleet.consuming import broker_guard
from tests import poison


def _unacked_jobs(r: redis.Redis, channel: Any, queue: str) -> list[str]:
    """Job ids of the queue's messages in kombu's unacknowledged set (``[payload, exchange,
    routing key]`` per delivery tag)."""
    jobs = []
    for tag, value in r.hgetall(channel.unacked_key).items():
        payload, _exchange, routing_key = json.loads(value)
        if routing_key == queue:
            jobs.append(payload["headers"]["id"])
            r.hdel(channel.unacked_key, tag)
            r.zrem(channel.unacked_index_key, tag)
    return sorted(jobs)


def _popped_while_credit_dropped(url: str, transport: type) -> tuple[list[str], list[str]]:
    """Two jobs queued, prefetch 1: take the first; lend one credit (as an ETA message does),
    send the BRPOP that pops the second, take the credit back, then run the event loop.
    Returns (the job ids delivered, those in the unacknowledged set)."""
    queue = f"lcm.window.{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(url)
    for n in range(2):
        r.lpush(queue, poison.encode(poison.envelope([{"prompt": "p"}], queue, task_id=f"j{n}")))
    got: list[str] = []

    def take(_body: Any, message: Any) -> None:
        got.append(message.headers["id"])  # held, never acknowledged

    try:
        with Connection(url, transport=transport) as conn:
            channel = conn.default_channel
            channel.basic_qos(0, 1, False)
            Consumer(channel, [Queue(queue)], callbacks=[take]).consume()
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                with contextlib.suppress(socket.timeout):
                    conn.drain_events(timeout=1)
            assert got == ["j0"]
            channel.qos.prefetch_count = 2  # lent
            conn.transport.cycle.on_poll_start()  # the BRPOP: Redis pops j1 at once
            deadline = time.monotonic() + 5
            while r.llen(queue) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert r.llen(queue) == 0
            channel.qos.prefetch_count = 1  # taken back before the reply was read
            for _ in range(3):
                with contextlib.suppress(socket.timeout):
                    conn.drain_events(timeout=0.3)
            # What a worker killed now leaves in Redis: its unacknowledged messages.
            return list(got), _unacked_jobs(r, channel, queue)
    finally:
        r.delete(queue)


def test_a_reply_popped_while_credit_dropped_is_read_at_once(service_env):
    got, unacked = _popped_while_credit_dropped(
        service_env["LCM_REDIS_URL"], broker_guard.Transport
    )
    assert got == ["j0", "j1"]
    assert sorted(unacked) == ["j0", "j1"]


def test_kombus_own_poller_leaves_that_reply_unread(service_env):
    """The case is real: with kombu's poller the second item is nowhere in Redis."""
    got, unacked = _popped_while_credit_dropped(service_env["LCM_REDIS_URL"], kombu_redis.Transport)
    assert got == ["j0"]
    assert unacked == ["j0"]
