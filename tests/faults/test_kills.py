"""kill -9 mid-batch: of the worker's main process, of its render process, and of one of
two workers. Every accepted job ends succeeded, each object stored exactly once."""

from __future__ import annotations

import os
import signal
import socket
import time

import redis

from tests.faults.faultkit import (
    JOB_SLACK_S,
    assert_clean,
    audit,
    freeze_held,
    held_jobs,
    kill_worker,
    recovery_after,
    render_pids,
    report,
    submit_batch,
    wait_finished,
    wait_succeeded,
)

TTL_S = 3.0
JOB = {"width": 512, "height": 512, "steps": 2}


def _wait_held(r: redis.Redis, unit: str, timeout_s: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = held_jobs(r, unit)
        if held:
            return held
        time.sleep(0.05)
    raise AssertionError(f"worker {unit} held nothing within {timeout_s:.0f} s")


def test_worker_killed_mid_batch_then_restarted(scenario, s3):
    sc = scenario()
    env = sc.env(LCM_SIZES="512x512", LCM_HEARTBEAT_TTL_S=str(TTL_S), LCM_UNIT="first")
    first = sc.start_worker("first.log", env)
    batch = submit_batch(sc.settings, 10, "worker kill", **JOB)
    wait_succeeded(sc.settings, batch.ids, 3, JOB_SLACK_S)
    r = redis.Redis.from_url(sc.settings.redis_url)
    _wait_held(r, "first")
    held, unfinished = freeze_held(first, r, "first", sc.settings)
    kill_worker(first)
    killed_at = time.time()
    second = sc.start_worker("second.log", {**env, "LCM_UNIT": "second"})
    started_s = time.time() - killed_at
    recs = wait_finished(sc.settings, batch.ids, JOB_SLACK_S + 10 * TTL_S)
    result = audit(s3, sc.settings, batch.ids, records=recs)
    gave_back = [
        ln for ln in second.log_text().splitlines() if "stopped beating while it held" in ln
    ]
    report(
        "worker_kill9_mid_batch",
        result,
        held_at_kill=len(held),
        restart_s=started_s,
        unfinished_at_kill=len(unfinished),
        recovery_s=recovery_after(result, unfinished, killed_at),
        batch_done_after_kill_s=recovery_after(result, batch.ids, killed_at),
        given_back_lines=len(gave_back),
    )
    assert_clean(result)
    assert len(gave_back) == 1 and all(j in gave_back[0] for j in held.values())
    assert second.proc.poll() is None


def test_render_process_killed_mid_batch(scenario, s3):
    sc = scenario()
    worker = sc.start_worker("worker.log", sc.env(LCM_SIZES="512x512"))
    (pid,) = render_pids(worker)
    batch = submit_batch(sc.settings, 8, "render kill", **JOB)
    wait_succeeded(sc.settings, batch.ids, 2, JOB_SLACK_S)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    recs = wait_finished(sc.settings, batch.ids, JOB_SLACK_S)
    result = audit(s3, sc.settings, batch.ids, records=recs)
    log = worker.log_text()
    requeued = [ln for ln in log.splitlines() if " requeued: " in ln and "exit code -9" in ln]
    after = [t for t in result.finished_at.values() if t > killed_at]
    report(
        "render_process_kill9_mid_batch",
        result,
        requeued=len(requeued),
        recovery_s=(min(after) - killed_at) if after else None,
        batch_done_after_kill_s=recovery_after(result, batch.ids, killed_at),
        render_processes_started=len(render_pids(worker)),
    )
    assert_clean(result)
    assert worker.proc.poll() is None
    assert len(render_pids(worker)) == 2


def test_two_workers_one_killed(scenario, s3):
    sc = scenario()
    env = sc.env(LCM_SIZES="512x512", LCM_HEARTBEAT_TTL_S=str(TTL_S))
    victim = sc.start_worker("victim.log", {**env, "LCM_UNIT": "victim"})
    survivor = sc.start_worker("survivor.log", {**env, "LCM_UNIT": "survivor"})
    batch = submit_batch(sc.settings, 12, "two workers", **JOB)
    wait_succeeded(sc.settings, batch.ids, 2, JOB_SLACK_S)
    r = redis.Redis.from_url(sc.settings.redis_url)
    _wait_held(r, "victim")
    held, unfinished = freeze_held(victim, r, "victim", sc.settings)
    kill_worker(victim)
    killed_at = time.time()
    recs = wait_finished(sc.settings, batch.ids, JOB_SLACK_S + 10 * TTL_S)
    result = audit(s3, sc.settings, batch.ids, records=recs)
    recovery = recovery_after(result, unfinished, killed_at)
    report(
        "two_workers_one_kill9",
        result,
        held_at_kill=len(held),
        unfinished_at_kill=len(unfinished),
        recovery_s=recovery,
        batch_done_after_kill_s=recovery_after(result, batch.ids, killed_at),
    )
    assert_clean(result)
    assert unfinished
    for job_id in unfinished:
        rec = recs[job_id]
        assert rec is not None and rec.worker == f"{socket.gethostname()}:{survivor.proc.pid}"
    # Given back once the heartbeat expired: within the TTL plus slack for the jobs ahead.
    assert recovery is not None and recovery < TTL_S + JOB_SLACK_S
    assert survivor.proc.poll() is None
