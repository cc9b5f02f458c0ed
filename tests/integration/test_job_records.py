"""Job records moved by a real worker: progress, result, cancel queued and running, the CLI.

The tiny model at 512x512 takes about 0.5 s a denoising step on the AVX2 machine (0.12 s
on the VNNI one), so a job of four 8-step images is slow enough to cancel mid-render.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from lcm_fleet.contract import JobState
from lcm_fleet.keys import job_prefix
from lcm_fleet.records import CancelOutcome, JobRecord, open_records
from producer.api import submit
from producer.errors import JobCanceled
from producer.settings import ProducerSettings
from tests.integration.conftest import ROOT, start_worker, stop_worker, wait_for_log, worker_env


@pytest.fixture(scope="module")
def big_worker(service_env, model_dirs, producer_settings, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("records-worker")
    queue = f"lcm.records.{uuid.uuid4().hex[:8]}"
    env = worker_env(
        service_env,
        model_dirs["int8"],
        tmp,
        queue,
        LCM_SIZES="128x128,512x512",
        LCM_MEMORY_BUDGET_GIB="4",
    )
    worker = start_worker(env, tmp / "worker.log")
    settings = ProducerSettings(**{**producer_settings.model_dump(), "queue": queue})
    yield worker, settings
    stop_worker(worker)


def _until(what: str, check: Any, timeout_s: float = 120.0, poll_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(poll_s)
    raise AssertionError(f"not within {timeout_s}s: {what}")


def _objects(s3: Any, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_a_job_shows_its_steps_then_its_result(big_worker):
    _worker, settings = big_worker
    h = submit("a red circle", settings=settings, width=512, height=512, steps=4, num_images=2)
    first = h.record()
    assert first is not None and first.state in (JobState.QUEUED, JobState.RUNNING)
    seen: set[tuple[int, int]] = set()

    def finished() -> JobRecord | None:
        record = h.record()
        if record is not None and record.progress is not None:
            seen.add((record.progress.image, record.progress.step))
        return record if record is not None and record.finished else None

    record = _until("the job finished", finished, poll_s=0.02)
    result = h.wait(10)
    assert record.state is JobState.SUCCEEDED and record.result == result
    assert record.created_at <= record.started_at <= record.finished_at  # type: ignore[operator]
    assert record.worker and record.reason is None
    # Steps of both images were shown while it ran (0.5 s a step here: each one is written).
    assert {image for image, _ in seen} == {1, 2}, seen


def test_cancel_running_stops_at_the_next_step_and_spares_the_job_beside_it(big_worker, s3):
    worker, settings = big_worker
    a = submit("cancel me", settings=settings, width=512, height=512, steps=8, num_images=4)
    b = submit("keep me", settings=settings, width=512, height=512, steps=2, num_images=1)

    def rendering() -> JobRecord | None:
        record = a.record()
        ok = record is not None and record.progress is not None and record.progress.image >= 2
        return record if ok else None

    running = _until("job a rendered its second image", rendering, poll_s=0.02)
    assert running.progress is not None and running.started_at is not None
    done_steps = (running.progress.image - 1) * 8 + running.progress.step
    step_s = (running.progress.at - running.started_at) / done_steps
    assert a.cancel() is CancelOutcome.REQUESTED
    t0 = time.monotonic()
    record = _until("job a ended", lambda: (r := a.record()) is not None and r.finished and r)
    latency_s = time.monotonic() - t0
    assert record.state is JobState.CANCELED, record
    assert "denoising step" in (record.reason or "") and "cancelled" in (record.reason or "")
    # Within one step's time, plus the record's throttles (0.1 s cancel check) and polling.
    assert latency_s <= step_s + 1.0, (latency_s, step_s)
    with pytest.raises(JobCanceled):
        a.wait(5)
    # The images finished before the cancel stay, listed; nothing else of it is stored.
    stored = _objects(s3, settings.s3_bucket, job_prefix(settings.s3_prefix, a.job_id))
    assert stored == sorted(record.partial_keys) and len(stored) >= 1
    assert not any(key.endswith("result.json") for key in stored)
    assert b.wait(120).images  # the job beside it is untouched
    log = worker.log_text()
    assert f"job {a.job_id} canceled" in log and f"job {b.job_id} succeeded" in log


def test_cancel_queued_never_renders(big_worker, s3):
    worker, settings = big_worker
    busy = submit("busy", settings=settings, width=512, height=512, steps=8, num_images=2)
    _until("the busy job runs", lambda: (r := busy.record()) and r.state is JobState.RUNNING)
    # Two jobs in flight per render process: the second waits for the render slot, the
    # third waits in the queue.
    waiting = submit("in flight", settings=settings, width=512, height=512, steps=1)
    queued = submit("never", settings=settings, width=512, height=512, steps=1)
    assert queued.cancel() is CancelOutcome.CANCELED
    assert busy.wait(180).images and waiting.wait(60).images
    wait_for_log(worker, f"job {queued.job_id} canceled", timeout_s=60)
    record = queued.record()
    assert record is not None and record.state is JobState.CANCELED
    assert record.started_at is None
    assert _objects(s3, settings.s3_bucket, job_prefix(settings.s3_prefix, queued.job_id)) == []
    # A finished job cannot be cancelled, and says so.
    assert busy.cancel() is CancelOutcome.FINISHED


def _lcm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_reads_the_records(big_worker, tmp_path):
    worker, settings = big_worker
    env = {k: v for k, v in worker.env.items() if k != "PYTHONPATH"}
    jobs = tmp_path / "batch.jsonl"
    jobs.write_text("".join(f'{{"prompt": "row {i}", "seed": {i}}}\n' for i in range(3)))
    out = _lcm("submit-file", str(jobs), "--batch-id", f"b{uuid.uuid4().hex[:8]}", env=env)
    assert out.returncode == 0, out.stderr
    first_id = out.stdout.split()[0]
    batch_id = first_id.rsplit("-", 1)[0]
    watched = _lcm("batch", "watch", batch_id, "--timeout-s", "120", env=env)
    assert watched.returncode == 0, watched.stderr
    assert "3 succeeded, 0 failed, 0 canceled" in watched.stdout
    status = _lcm("status", first_id, env=env)
    assert status.returncode == 0 and f"{first_id}: succeeded (1 image(s))" in status.stdout
    cancel = _lcm("cancel", first_id, env=env)
    assert cancel.returncode == 1 and "already succeeded: nothing to cancel" in cancel.stderr
    unknown = _lcm("status", "no-such-job-" + uuid.uuid4().hex, env=env)
    assert unknown.returncode == 1 and "the id is unknown" in unknown.stderr
    download = _lcm("batch", "download", batch_id, str(tmp_path / "png"), env=env)
    assert download.returncode == 0 and len(list((tmp_path / "png").glob("*.png"))) == 3
    records = open_records(settings)
    batch = records.get_batch(batch_id)
    assert batch is not None and batch.finished and batch.counts.succeeded == batch.total == 3


def test_a_finished_job_with_a_webhook_url_queues_its_delivery(big_worker):
    """The worker queues the webhook task by name for lcm-webhooks (tested in
    test_webhooks.py); here nothing consumes lcm.webhooks, so the message stays to be read."""
    import base64
    import json

    import redis

    from lcm_fleet.contract import QUEUE_WEBHOOKS, Job
    from producer.api import submit_job

    _worker, settings = big_worker
    hook = "http://127.0.0.1:9/hook"
    h = submit_job(Job(prompt="with a webhook", seed=7), settings, webhook_url=hook)
    h.wait(60)
    client = redis.Redis.from_url(settings.redis_url)

    def queued_delivery() -> list[Any] | None:
        for raw in client.lrange(QUEUE_WEBHOOKS, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            if body[0] == ["job", h.job_id, "job.succeeded"]:
                client.lrem(QUEUE_WEBHOOKS, 1, raw)  # no later test's lcm-webhooks delivers it
                return list(body)
        return None

    assert _until("the webhook task was queued", queued_delivery, timeout_s=10)
    record = h.record()
    assert record is not None and record.webhook_url == hook
