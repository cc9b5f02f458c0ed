"""Redis (with AOF) killed and restarted while a real worker finishes a job: nothing is lost.

The Redis is the test's own (tests/faultkit.py: its own port and state dir, AOF with
appendfsync everysec), so killing it touches nothing else.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from lcm_fleet.contract import JobState
from lcm_fleet.keys import INCARNATIONS_KEY, held_key, result_key
from lcm_fleet.records import open_records
from producer.api import submit
from producer.settings import ProducerSettings
from tests.faultkit import OwnRedis, own_redis, wait_until  # noqa: F401  (a fixture)
from tests.integration.conftest import start_worker, stop_worker, wait_for_log, worker_env


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
    later, and the job succeeds."""
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
        # Not checked here: that the worker goes on serving. A kill at this moment ends
        # Celery's consumer with "Unrecoverable error: AttributeError('NoneType' object has
        # no attribute 'hostname')" in kombu's redis transport (_connparams, from redis-py's
        # own reconnect of a closed channel's connection); see docs/operations.md.
    finally:
        stop_worker(worker)
