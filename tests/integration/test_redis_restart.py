"""Redis (with AOF) killed and restarted while a real worker finishes a job: nothing is lost.

The Redis is the test's own (tests/faultkit.py: its own port and state dir, AOF with
appendfsync everysec), so killing it touches nothing else.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue
from kombu.common import ignore_errors
from kombu.transport import redis as kombu_redis

from lcm_fleet.consuming import broker_guard
from lcm_fleet.contract import JobState
from lcm_fleet.keys import INCARNATIONS_KEY, held_key, result_key
from lcm_fleet.records import open_records
from producer.api import submit
from producer.settings import ProducerSettings
from tests import poison
from tests.faultkit import OwnRedis, own_redis, wait_until  # noqa: F401  (a fixture)
from tests.integration.conftest import start_worker, stop_worker, wait_for_log, worker_env
from worker.exit_codes import ExitCode

# A fault scenario on real processes: the faults tier (`-m faults`, .ci/run), not the default run.
pytestmark = pytest.mark.faults

#: kombu's Redis hash of delivered, unacknowledged messages (its default unacked_key).
UNACKED_KEY = kombu_redis.Channel.unacked_key

#: The worker's screen options (worker/consumer/app.py), so that the guarded channel's own
#: code (the screen on BRPOP) runs as in the worker.
GUARD_OPTIONS = {
    broker_guard.OPTION_MAX_MESSAGE_BYTES: 1 << 20,
    broker_guard.OPTION_TASKS: ["lcm_fleet.render"],
    broker_guard.OPTION_MAX_ETA_AHEAD_S: 600.0,
}


def _settings(producer_settings: ProducerSettings, url: str, queue: str) -> ProducerSettings:
    return ProducerSettings(**{**producer_settings.model_dump(), "redis_url": url, "queue": queue})


def _state(settings: ProducerSettings, job_id: str) -> JobState | None:
    try:
        record = open_records(settings, socket_timeout_s=2).get_job(job_id)
    except redis.RedisError:
        return None
    return record.state if record is not None else None


def _stored(s3, bucket: str, job_id: str) -> bool:
    found = s3.list_objects_v2(Bucket=bucket, Prefix=result_key("", job_id))
    return bool(found.get("KeyCount"))


def _job_objects(s3, bucket: str, job_id: str) -> list[str]:
    found = s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job_id}/")
    return sorted(o["Key"] for o in found.get("Contents", []))


@pytest.mark.parametrize("budget_s", ["60", "1"], ids=["back-within-budget", "back-after-budget"])
def test_job_stored_while_redis_is_down_reaches_succeeded(
    own_redis: OwnRedis,  # noqa: F811
    service_env,
    model_dirs,
    producer_settings,
    s3,
    tmp_path,
    budget_s,
):
    queue = f"lcm.restart.{uuid.uuid4().hex[:8]}"
    env = worker_env(
        {**service_env, "LCM_REDIS_URL": own_redis.url},
        model_dirs["int8"],
        tmp_path,
        queue,
        LCM_SIZES="512x512",
        LCM_HEARTBEAT_TTL_S="3",
        LCM_BOOKKEEPING_BUDGET_S=budget_s,
        LCM_UNIT="restart",
    )
    worker = start_worker(env, tmp_path / "worker.log")
    settings = _settings(producer_settings, own_redis.url, queue)
    bucket = settings.s3_bucket
    try:
        handle = submit(
            "a lighthouse in a storm", settings=settings, width=512, height=512, steps=8,
            num_images=3,
        )  # fmt: skip
        other = submit("queued behind it", settings=settings, width=512, height=512, steps=2)
        # Rendering (its record shows a step), so Redis goes away mid-render: progress writes
        # fail (logged), the render goes on.
        wait_until(
            lambda: (r := handle.record()) is not None and r.progress is not None,
            60,
            f"job {handle.job_id} rendering",
            poll_s=0.02,
        )
        own_redis.kill()
        # Redis stays away until the job's objects are all stored, and a little longer.
        wait_until(lambda: _stored(s3, bucket, handle.job_id), 120, "result.json stored")
        time.sleep(3)
        assert _state(settings, handle.job_id) is None  # still down
        own_redis.start()  # loads its AOF
        wait_until(
            lambda: _state(settings, handle.job_id) is JobState.SUCCEEDED,
            90,
            f"job {handle.job_id} succeeded in its record after the restart",
        )
        # The job queued when Redis went away was kept by the AOF and runs too.
        assert other.wait(timeout_s=90).images
        result = handle.wait(timeout_s=30)
        assert [i.index for i in result.images] == [0, 1, 2]
        assert _job_objects(s3, bucket, handle.job_id) == sorted(
            [i.key for i in result.images] + [result_key("", handle.job_id)]
        )
        log = worker.log_text()
        renders = [ln for ln in log.splitlines() if f"job {handle.job_id} succeeded" in ln]
        if budget_s == "1":
            # Given back unacknowledged; its next delivery verified the stored result.
            assert "given back unacknowledged" in log
            assert "recorded as succeeded without rendering again" in log
            assert len(renders) == 0
        else:
            assert "recording its success (its objects are stored) failed" in log
            assert len(renders) == 1
    finally:
        code = stop_worker(worker)
    assert code == 0
    # Nothing left held: every message was acknowledged before the clean stop.
    r = own_redis.client()
    assert not [i for i in r.hkeys(INCARNATIONS_KEY) if r.hlen(held_key(i.decode()))]


def test_job_received_as_redis_dies_runs_once_redis_is_back(
    own_redis: OwnRedis,  # noqa: F811
    service_env,
    model_dirs,
    producer_settings,
    tmp_path,
):
    """Killed at the job's receipt (before or just after it starts): its message, whose
    acknowledgement or start Redis missed, is given back when Redis returns, not an hour
    later, and the job succeeds; the same worker process reconnects and serves the next job
    (kombu's crash on this path is worked around in lcm_fleet/consuming/broker_guard.py)."""
    queue = f"lcm.restart.{uuid.uuid4().hex[:8]}"
    env = worker_env(
        {**service_env, "LCM_REDIS_URL": own_redis.url},
        model_dirs["int8"],
        tmp_path,
        queue,
        LCM_SIZES="512x512",
        LCM_HEARTBEAT_TTL_S="3",
        LCM_UNIT="receipt",
    )
    worker = start_worker(env, tmp_path / "worker.log")
    settings = _settings(producer_settings, own_redis.url, queue)
    try:
        handle = submit("caught at the door", settings=settings, width=512, height=512, steps=2)
        wait_for_log(worker, f"[{handle.job_id}] received", timeout_s=60)
        own_redis.kill()
        time.sleep(3)
        own_redis.start()
        result = handle.wait(timeout_s=120)
        assert [i.index for i in result.images] == [0]
        assert _state(settings, handle.job_id) is JobState.SUCCEEDED
        # The same process goes on serving: a job submitted after the restart runs on it.
        after = submit("after the restart", settings=settings, width=512, height=512, steps=2)
        assert after.wait(timeout_s=120).images
        wait_for_log(worker, f"job {after.job_id} succeeded", timeout_s=30)
        assert worker.proc.poll() is None
        log = worker.log_text()
        assert "Connection to broker lost" in log  # Redis's kill was seen, at receipt
        assert "Unrecoverable error" not in log
    finally:
        code = stop_worker(worker)
    assert code == 0
    # Every message was acknowledged (the first job's on the channel it came on, after the
    # restart), and nothing is left held.
    r = own_redis.client()
    assert r.hlen(UNACKED_KEY) == 0
    assert not [i for i in r.hkeys(INCARNATIONS_KEY) if r.hlen(held_key(i.decode()))]


def test_worker_exits_1_when_redis_stays_away_past_its_reconnect_retries(
    own_redis: OwnRedis,  # noqa: F811
    service_env,
    model_dirs,
    tmp_path,
):
    """Celery's unrecoverable stop (exit code 1, worker/exit_codes.py), for real: Redis lost
    while serving and not back within LCM_BROKER_RECONNECT_RETRIES (1 here: one 2 s wait)."""
    env = worker_env(
        {**service_env, "LCM_REDIS_URL": own_redis.url},
        model_dirs["int8"],
        tmp_path,
        f"lcm.restart.{uuid.uuid4().hex[:8]}",
        LCM_SIZES="512x512",
        LCM_BROKER_RECONNECT_RETRIES="1",
        LCM_UNIT="gone",
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        own_redis.kill()
        code = worker.proc.wait(timeout=120)
    finally:
        stop_worker(worker)
    assert code == ExitCode.FAILURE
    log = worker.log_text()
    # Celery gave up reconnecting (kombu's OperationalError after its retries), nothing else.
    assert "Trying again in 2.00 seconds... (1/1)" in log
    assert "Unrecoverable error: OperationalError(" in log
    assert "AttributeError" not in log
    assert "Celery stopped with exit code 1" in log


def _consumer_at_the_kill(url: str, transport: Any, queue: str) -> tuple[Any, Any]:
    """A kombu connection as Celery's consumer holds it when Redis dies at a job's receipt:
    one message delivered and not acknowledged, a BRPOP pending on the default channel, and
    a second channel consuming an auto-delete fanout queue (the worker's pidbox)."""
    conn = Connection(url, transport=transport, transport_options=GUARD_OPTIONS)
    got: list[Any] = []
    channel = conn.default_channel
    Consumer(channel, [Queue(queue)], callbacks=[lambda _body, m: got.append(m)]).consume()
    pidbox = Exchange(f"{queue}.pidbox", type="fanout", durable=False, auto_delete=True)
    node = Queue(f"{queue}.node.pidbox", pidbox, auto_delete=True, durable=False)
    Consumer(conn.channel(), [node], callbacks=[lambda _body, _m: None]).consume()
    # A producer's task message (what the worker's screen passes), pushed as kombu does.
    redis.Redis.from_url(url).lpush(queue, poison.encode(poison.envelope([{"prompt": "x"}], queue)))
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:  # (an event may be the subscription's)
        with contextlib.suppress(socket.timeout):
            conn.drain_events(timeout=1)
    assert len(got) == 1
    with contextlib.suppress(socket.timeout):
        conn.drain_events(timeout=0.3)  # nothing more: the next BRPOP stays pending
    return conn, got[0]


def _celery_on_connection_lost(conn: Any) -> None:
    """What Celery's consumer does with its connection when it is lost
    (Consumer.on_connection_error_after_connected, celery 5.7.0)."""
    with contextlib.suppress(Exception):
        conn.collect(socket_timeout=2.0)
    ignore_errors(conn, conn.close)  # raises what is not a connection error: Celery stops


def test_plain_kombu_transport_stops_on_redis_killed_at_receipt(own_redis: OwnRedis) -> None:  # noqa: F811
    """The pinned kombu's bug that broker_guard.Channel works around: when this fails, kombu
    fixed it, and Channel._connparams (lcm_fleet/consuming/broker_guard.py) can go."""
    conn, _message = _consumer_at_the_kill(own_redis.url, kombu_redis.Transport, _queue())
    own_redis.kill()
    with pytest.raises(AttributeError, match="hostname"):
        _celery_on_connection_lost(conn)


def test_guarded_transport_survives_redis_killed_at_receipt(own_redis: OwnRedis) -> None:  # noqa: F811
    queue = _queue()
    conn, message = _consumer_at_the_kill(own_redis.url, broker_guard.Transport, queue)
    own_redis.kill()
    _celery_on_connection_lost(conn)  # only connection errors, which Celery rides out
    own_redis.start()
    r = own_redis.client()
    wait_until(lambda: _answers(r), 30, "own Redis answers again")
    # The job that was running acknowledges on its old channel once Redis is back.
    assert r.hlen(UNACKED_KEY) == 1
    message.ack()
    assert r.hlen(UNACKED_KEY) == 0
    assert r.llen(queue) == 0


def _queue() -> str:
    return f"lcm.kombu.{uuid.uuid4().hex[:8]}"


def _answers(r: Any) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False
