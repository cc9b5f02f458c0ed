"""A worker killed outright: the jobs it held go back to the queue when its heartbeat stops.

Without this, Redis would deliver them again only after the visibility timeout (an hour).
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
import uuid

import redis

from lcm_fleet.keys import INCARNATIONS_KEY as REGISTRY_KEY
from lcm_fleet.keys import alive_key, held_key
from producer.api import submit
from producer.settings import ProducerSettings
from tests.integration.conftest import (
    METRICS_PORT,
    start_worker,
    stop_worker,
    wait_for_log,
    worker_env,
)
from worker.consumer.reclaim import Holdings, reclaim_dead


def test_only_incarnations_whose_heartbeat_expired_are_given_back(service_env):
    # A database of its own: a fake restore must not swallow real workers' entries.
    r = redis.Redis.from_url(service_env["LCM_REDIS_URL"], db=14)
    tag = uuid.uuid4().hex[:8]
    own = Holdings(r, f"own-{tag}", ttl_s=30, incarnation=f"own-{tag}")
    alive = Holdings(r, f"alive-{tag}", ttl_s=30, incarnation=f"alive-{tag}")
    dead = Holdings(r, f"dead-{tag}", ttl_s=3, incarnation=f"dead-{tag}")
    closed = Holdings(r, f"closed-{tag}", ttl_s=30, incarnation=f"closed-{tag}")
    # Stopped cleanly while one message was never acknowledged (Redis away when it ended).
    unacked = Holdings(r, f"unacked-{tag}", ttl_s=30, incarnation=f"unacked-{tag}")
    everyone = (own, alive, dead, closed, unacked)
    try:
        for h in everyone:
            h.beat()
            h.hold(f"{h.incarnation}-t1", f"{h.incarnation}-job1")
        dead.hold(f"{dead.incarnation}-t2", f"{dead.incarnation}-job2")
        dead.release(f"{dead.incarnation}-t2")
        closed.release(f"{closed.incarnation}-t1")
        assert closed.close() == 0
        assert unacked.close() == 1
        assert not r.hexists(REGISTRY_KEY, closed.incarnation)
        r.delete(alive_key(dead.incarnation))  # as if its TTL ran out
        restored: list[str] = []
        given_back = reclaim_dead(r, restored.extend, own.incarnation)
        mine = {k: v for k, v in given_back.items() if tag in k}
        assert mine == {
            f"dead-{tag} (dead-{tag})": [f"dead-{tag}-job1"],
            f"unacked-{tag} (unacked-{tag})": [f"unacked-{tag}-job1"],
        }
        assert f"dead-{tag}-t1" in restored and f"dead-{tag}-t2" not in restored
        assert not r.exists(held_key(dead.incarnation))
        assert not r.hexists(REGISTRY_KEY, dead.incarnation)
        assert r.hexists(REGISTRY_KEY, alive.incarnation)
        assert r.hexists(REGISTRY_KEY, own.incarnation)
        # Nothing left to give back a second time.
        again: list[str] = []
        reclaim_dead(r, again.extend, own.incarnation)
        assert f"dead-{tag}-t1" not in again
    finally:
        for h in everyone:
            h.release(f"{h.incarnation}-t1")
            h.close()


def _render_pid(log: str) -> int:
    return int(re.findall(r"render process 0 started \(pid (\d+)\)", log)[0])


def test_jobs_of_a_killed_worker_are_rendered_by_the_next_one(
    service_env, model_dirs, producer_settings, tmp_path
):
    queue = f"lcm.reclaim.{uuid.uuid4().hex[:8]}"
    # A database of its own: every worker gives back dead incarnations of its database, and
    # the session's worker would otherwise take the give-back (and its log line) from ours.
    redis_url = service_env["LCM_REDIS_URL"].rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(redis_url).flushdb()
    env = worker_env(
        {**service_env, "LCM_REDIS_URL": redis_url},
        model_dirs["int8"],
        tmp_path,
        queue,
        LCM_SIZES="512x512",
        LCM_HEARTBEAT_TTL_S="3",
        LCM_UNIT="reclaim",
    )
    first = start_worker(env, tmp_path / "first.log")
    settings = ProducerSettings(
        **{**producer_settings.model_dump(), "queue": queue, "redis_url": redis_url}
    )
    r = redis.Redis.from_url(redis_url)
    try:
        jobs = [
            submit(f"held {n}", settings=settings, seed=n, width=512, height=512, steps=8)
            for n in range(2)
        ]
        wait_for_log(first, f"[{jobs[0].job_id}] received", timeout_s=30)
        held: dict[bytes, bytes] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(held) < 2:
            for incarnation, name in r.hgetall(REGISTRY_KEY).items():
                if name.decode().startswith("lcm-worker-reclaim@"):
                    held = r.hgetall(held_key(incarnation.decode()))
            time.sleep(0.05)
        assert sorted(v.decode() for v in held.values()) == sorted(j.job_id for j in jobs)
        os.kill(first.proc.pid, signal.SIGKILL)
        os.kill(_render_pid(first.log_text()), signal.SIGKILL)
        first.proc.wait(10)
    finally:
        stop_worker(first)

    started = time.monotonic()
    metrics_port = METRICS_PORT + 20
    second = start_worker({**env, "LCM_METRICS_PORT": str(metrics_port)}, tmp_path / "second.log")
    try:
        for job in jobs:
            assert job.wait(120).images
        # Minutes, not the hour of the visibility timeout.
        assert time.monotonic() - started < 120
        log = second.log_text()
        gave_back = [ln for ln in log.splitlines() if "stopped beating while it held" in ln]
        assert len(gave_back) == 1 and all(j.job_id in gave_back[0] for j in jobs)
        for job in jobs:
            assert f"job {job.job_id} succeeded" in log
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as page:
            assert "lcm_jobs_given_back_total 2.0" in page.read().decode()
    finally:
        stop_worker(second)
