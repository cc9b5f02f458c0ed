"""Storage outages on a real worker and a real S3 (SeaweedFS stopped and started by the test).

- S3 away for ~30 s with jobs queued: every upload retries in place on the time budget
  (LCM_STORAGE_RETRY_BUDGET_S), so every job succeeds, once, without a task retry.
- While a job's writes wait for S3, its record says so (``waiting``: storage, since, the last
  error), and ``lcm status`` and ``GET /v1/jobs/{id}`` show it; it is cleared once stored.
- A job that ends without a result leaves no unlisted objects: a timed-out job's images are
  removed; a cancelled job's are listed in its record (``partial_keys``), S3 away or not.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from lcm_fleet.contract import JobState
from lcm_fleet.keys import image_key
from lcm_fleet.records import WaitingFor
from producer.api import handle as job_handle
from producer.api import submit
from producer.settings import ProducerSettings
from tests.faultkit import OwnS3, session_s3, wait_until  # noqa: F401  (a fixture)
from tests.integration.conftest import (
    api_env,
    run_cli,
    start_api,
    start_worker,
    stop_api,
    stop_worker,
    worker_env,
)

# A fault scenario on real processes: the faults tier (`-m faults`, .ci/run), not the default run.
pytestmark = pytest.mark.faults

OUTAGE_S = 30.0


def _objects(s3, bucket: str, job_id: str) -> list[str]:
    found = s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{job_id}/")
    return sorted(o["Key"] for o in found.get("Contents", []))


def test_jobs_queued_during_a_30s_s3_outage_all_succeed(
    worker,
    producer_settings,
    session_s3: OwnS3,  # noqa: F811
):
    with session_s3.down():
        handles = [
            submit(f"during an outage {n}", settings=producer_settings, seed=9 + n)
            for n in range(4)
        ]
        started = time.monotonic()
        first = f"put s3://{producer_settings.s3_bucket}/jobs/{handles[0].job_id}/"
        wait_until(lambda: first in worker.log_text(), 60, "the first upload failing")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
    for n, handle in enumerate(handles):
        result = handle.wait(timeout_s=180)
        assert result.images and result.images[0].seed == 9 + n
    log = worker.log_text()
    for handle in handles:
        lines = [ln for ln in log.splitlines() if handle.job_id in ln]
        assert sum(f"job {handle.job_id} succeeded" in ln for ln in lines) == 1
        assert not any("storage failed" in ln for ln in lines)  # no task retry: kept its place
    assert "budget left" in log


def test_a_job_waiting_for_storage_says_so_in_its_record_status_and_api(
    worker,
    producer_settings,
    service_env,
    queue_name,
    tmp_path,
    session_s3: OwnS3,  # noqa: F811
):
    api = start_api(api_env(service_env, queue_name), tmp_path / "api.log")
    try:
        auth = {"Authorization": f"Bearer {api.create_key('waiting')}"}
        with session_s3.down():
            answer = httpx.post(f"{api.url}/v1/jobs", json={"prompt": "kept waiting"}, headers=auth)
            assert answer.status_code == 202, answer.text
            handle = job_handle(answer.json()["id"], producer_settings)
            wait_until(
                lambda: (r := handle.record()) is not None and r.waiting is not None,
                60,
                "the record's waiting",
            )
            record = handle.record()
            assert record is not None and record.state is JobState.RUNNING
            waiting = record.waiting
            assert waiting is not None and waiting.waiting_for is WaitingFor.STORAGE
            assert f"put s3://{producer_settings.s3_bucket}/jobs/{handle.job_id}/" in waiting.error
            assert len(waiting.error) <= 200 and waiting.since <= waiting.at
            status = run_cli("producer.cli", "status", handle.job_id, env=api.env)
            assert "running" in status.stdout and "waiting for storage since" in status.stdout
            view = httpx.get(f"{api.url}/v1/jobs/{handle.job_id}", headers=auth).json()
            assert view["state"] == "running" and view["waiting"]["waiting_for"] == "storage"
        assert handle.wait(timeout_s=180).images
        record = handle.record()
        assert record is not None and record.state is JobState.SUCCEEDED and record.waiting is None
        view = httpx.get(f"{api.url}/v1/jobs/{handle.job_id}", headers=auth).json()
        assert view["waiting"] is None
    finally:
        stop_api(api)


SOFT_LIMIT_S = 20


@pytest.fixture
def limited_worker(service_env, model_dirs, tmp_path):
    """A worker of its own with a 20 s soft limit (512x512: seconds per image)."""
    queue = f"lcm.orphans.{uuid.uuid4().hex[:8]}"
    env = worker_env(
        service_env,
        model_dirs["int8"],
        tmp_path,
        queue,
        LCM_SIZES="512x512",
        LCM_TASK_SOFT_TIME_LIMIT_S=str(SOFT_LIMIT_S),
        LCM_TASK_TIME_LIMIT_S=str(2 * SOFT_LIMIT_S),
        LCM_UNIT="orphans",
    )
    worker = start_worker(env, tmp_path / "worker.log")
    yield worker, queue
    stop_worker(worker)


def test_a_timed_out_job_removes_the_images_it_had_stored(
    limited_worker,
    producer_settings,
    s3,
    session_s3: OwnS3,  # noqa: F811
):
    worker, queue = limited_worker
    settings = ProducerSettings(**{**producer_settings.model_dump(), "queue": queue})
    bucket = settings.s3_bucket
    started = time.monotonic()
    handle = submit(
        "too slow to store", settings=settings, width=512, height=512, steps=8, num_images=3
    )
    first = image_key("", handle.job_id, 0)
    wait_until(lambda: first in _objects(s3, bucket, handle.job_id), 60, f"{first} stored")
    # S3 hangs while the next images upload: the job cannot finish within its soft limit.
    session_s3.hang()
    try:
        time.sleep(max(0.0, SOFT_LIMIT_S + 3 - (time.monotonic() - started)))
    finally:
        session_s3.resume()  # the hung upload ends; then the job's cleanup runs
    wait_until(
        lambda: (r := handle.record()) is not None and r.finished, 60, "the job's end recorded"
    )
    record = handle.record()
    assert record is not None and record.state is JobState.FAILED
    assert "soft time limit" in (record.reason or "")
    assert _objects(s3, bucket, handle.job_id) == [] and record.partial_keys == ()
    removed = [ln for ln in worker.log_text().splitlines() if "ended without a result" in ln]
    assert len(removed) == 1 and handle.job_id in removed[0] and "removed the" in removed[0]


def test_images_that_cannot_be_removed_are_listed_in_the_record(
    worker,
    producer_settings,
    s3,
    session_s3: OwnS3,  # noqa: F811
):
    bucket = producer_settings.s3_bucket
    handle = submit("stopped with S3 away", settings=producer_settings, num_images=4, steps=8)
    key = image_key("", handle.job_id, 0)
    wait_until(lambda: key in _objects(s3, bucket, handle.job_id), 120, f"{key} stored")
    # Cancelled while S3 is away: it stops waiting for its uploads at the cancel, and keeps
    # (listed) what it had stored.
    with session_s3.down():
        handle.cancel()
        wait_until(
            lambda: (r := handle.record()) is not None and r.finished, 120, "its end recorded"
        )
    record = handle.record()
    assert record is not None and record.state is JobState.CANCELED
    stored = _objects(s3, bucket, handle.job_id)
    assert stored and set(stored) == set(record.partial_keys)
    assert "left in storage, listed in partial_keys" in (record.reason or "")
