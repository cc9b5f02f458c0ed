"""Redis killed (SIGKILL) and started again mid-batch, on a Redis of the test's own.

With AOF (``appendfsync everysec``) every accepted job must reach succeeded once Redis is
back. Without persistence the test documents what is lost: everything Redis held (and the
worker said so at start: lcm_fleet/broker.py warn_if_not_persistent).
"""

from __future__ import annotations

import json
import os
import signal
import time

import redis

from lcm_fleet.contract import JobState, queue_for
from lcm_fleet.keys import result_key
from producer.api import submit
from tests.faultkit import OwnRedis
from tests.faults.faultkit import (
    FAULTS_REDIS_PORT,
    JOB_SLACK_S,
    assert_clean,
    audit,
    list_keys,
    records_of,
    recovery_after,
    report,
    submit_batch,
    wait_finished,
    wait_succeeded,
)

TTL_S = 5.0
JOB = {"width": 512, "height": 512, "steps": 2}
DOWN_S = 5.0
AOF_PORT_OFFSET, BARE_PORT_OFFSET = 1, 2


def _own_redis(tmp_path, offset: int, aof: bool) -> OwnRedis:
    return OwnRedis(tmp_path / "redis", FAULTS_REDIS_PORT + offset, aof=aof).start()


def _persistence_warning(worker, url: str) -> str | None:
    """The worker's start-up warning about its broker's persistence (its log line), if any."""
    needle = f"lcm-worker: the broker at {url} "
    return next((ln for ln in worker.log_text().splitlines() if needle in ln), None)


def _results(s3, settings) -> set[str]:
    keys = list_keys(s3, settings.s3_bucket, settings.s3_prefix)
    return {k for k in keys if k.endswith("/result.json")}


def test_redis_restart_with_aof_loses_nothing(scenario, s3, tmp_path):
    server = _own_redis(tmp_path, AOF_PORT_OFFSET, aof=True)
    try:
        sc = scenario(server.url)
        worker = sc.start_worker(
            "worker.log", sc.env(LCM_SIZES="512x512", LCM_HEARTBEAT_TTL_S=str(TTL_S))
        )
        warning = _persistence_warning(worker, server.url)
        assert warning is None, f"an AOF broker was taken for one without: {warning}"
        batch = submit_batch(sc.settings, 10, "redis restart aof", **JOB)
        wait_succeeded(sc.settings, batch.ids, 3, JOB_SLACK_S)
        time.sleep(1.5)  # past appendfsync everysec: every accepted write is on disk
        # Kill the moment one more job's result.json is stored: its bookkeeping after the
        # upload (record, deliveries, acknowledgement) meets a Redis that is gone.
        stored = _results(s3, sc.settings)
        deadline = time.monotonic() + JOB_SLACK_S
        while time.monotonic() < deadline and _results(s3, sc.settings) <= stored:
            time.sleep(0.02)
        server.kill()
        killed_at = time.time()
        time.sleep(DOWN_S)
        server.start()
        back_at = time.time()
        recs = wait_finished(sc.settings, batch.ids, JOB_SLACK_S, workers=[worker])
        result = audit(s3, sc.settings, batch.ids, records=recs)
        after = [t for t in result.finished_at.values() if t > back_at]
        report(
            "redis_kill_restart_aof",
            result,
            recovery_s=recovery_after(result, batch.ids, back_at),
            down_s=back_at - killed_at,
            first_success_after_back_s=(min(after) - back_at) if after else None,
            worker_alive=worker.proc.poll() is None,
            worker_exit_code=worker.proc.poll(),
        )
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log_text()[-3000:]}"
        assert_clean(result)
    finally:
        server.stop()


def _queued_ids(r: redis.Redis, queue: str) -> set[str]:
    ids = set()
    for raw in r.lrange(queue, 0, -1):
        ids.add(json.loads(raw)["headers"]["id"])
    return ids


def _settle(s3, settings, quiet_s: float = 3.0, timeout_s: float = 60.0) -> None:
    """Until the scenario's objects stop changing (what the worker held has run out)."""
    deadline = time.monotonic() + timeout_s
    last = list_keys(s3, settings.s3_bucket, settings.s3_prefix)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = list_keys(s3, settings.s3_bucket, settings.s3_prefix)
        if now == last:
            return
        last = now


def test_redis_restart_without_persistence_loses_what_redis_held(scenario, s3, tmp_path):
    """Documents the loss: every queued job is gone (never rendered), and every record with
    it, also of the jobs finished before the kill, whose objects stay in S3."""
    server = _own_redis(tmp_path, BARE_PORT_OFFSET, aof=False)
    try:
        sc = scenario(server.url)
        worker = sc.start_worker("worker.log", sc.env(LCM_SIZES="512x512"))
        warning = _persistence_warning(worker, server.url)
        first = submit_batch(sc.settings, 6, "redis restart bare", **JOB)
        wait_succeeded(sc.settings, first.ids, 2, JOB_SLACK_S)
        # Freeze the worker's main process: the jobs submitted now stay in the Redis list,
        # and the picture taken is the one Redis loses.
        os.kill(worker.proc.pid, signal.SIGSTOP)
        try:
            tail = submit_batch(sc.settings, 6, "redis restart bare tail", **JOB)
            ids = first.ids + tail.ids
            r = redis.Redis.from_url(sc.settings.redis_url)
            job = tail.handles[0].job
            assert job is not None
            queued = _queued_ids(r, queue_for(job, sc.settings.queue))
            before = records_of(sc.settings, ids)
            finished = {
                j
                for j, rec in before.items()
                if rec is not None and rec.state is JobState.SUCCEEDED
            }
            held = set(ids) - queued - finished
            server.kill()
            killed_at = time.time()
            time.sleep(DOWN_S)
            server.start()
            back_at = time.time()
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        # Anything the worker still had runs out first; a new job then shows it serves again.
        probe = submit("after the restart", settings=sc.settings, seed=7, **JOB)
        probe_result = probe.wait(JOB_SLACK_S)
        probe_s = time.time() - back_at
        _settle(s3, sc.settings)
        ids.append(probe.job_id)
        after = records_of(sc.settings, ids)
        stored = {
            j
            for j in ids
            if list_keys(s3, sc.settings.s3_bucket, result_key(sc.settings.s3_prefix, j))
        }
        result = audit(s3, sc.settings, ids, records=after)
        report(
            "redis_kill_restart_no_persistence",
            result,
            recovery_s=probe_s,
            warned_at_start=warning is not None,
            down_s=back_at - killed_at,
            queued_at_kill=len(queued),
            held_by_worker_at_kill=len(held),
            finished_at_kill=len(finished),
            queued_lost=len(queued - stored),
            records_lost=sum(1 for j in ids if after[j] is None),
            held_rendered_after_back=len(held & stored),
            results_in_s3=len(stored),
        )
        assert warning is not None and "has no persistence" in warning, worker.log_text()[-3000:]
        assert queued, "the kill should have come while jobs were queued"
        # What no persistence loses, exactly: every queued job (never rendered) ...
        assert not queued & stored
        for job_id in queued:
            assert after[job_id] is None
            assert not list_keys(
                s3, sc.settings.s3_bucket, f"{sc.settings.s3_prefix}/jobs/{job_id}/"
            )
        # ... and the records of the jobs that had finished; their objects stay in S3, whole.
        assert finished <= stored
        for job_id in finished:
            assert after[job_id] is None
        assert not result.duplicate and not result.partial
        assert probe_result.images and worker.proc.poll() is None
    finally:
        server.stop()
