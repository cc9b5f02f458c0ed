"""Storage outages on a real worker and a real S3 (SeaweedFS stopped and started by the test).

- S3 away for ~30 s with jobs queued: every upload retries in place on the time budget
  (LCM_STORAGE_RETRY_BUDGET_S), so every job succeeds, once, without a task retry.
- A job that ends without a result leaves no unlisted objects: the images it stored are
  removed, or, when they cannot be removed, listed in its record (``partial_keys``).
"""

from __future__ import annotations

import time

from lcm_fleet.contract import JobState
from lcm_fleet.keys import image_key
from producer.api import submit
from tests.faultkit import OwnS3, session_s3, wait_until  # noqa: F401  (a fixture)

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


def _cancel_after_first_image(handle, s3, bucket: str) -> None:
    key = image_key("", handle.job_id, 0)
    wait_until(lambda: key in _objects(s3, bucket, handle.job_id), 120, f"{key} stored")
    handle.cancel()
    wait_until(
        lambda: (r := handle.record()) is not None and r.finished, 120, "the job's end recorded"
    )


def test_a_cancelled_job_removes_the_images_it_had_stored(worker, producer_settings, s3):
    bucket = producer_settings.s3_bucket
    handle = submit("stopped half way", settings=producer_settings, num_images=4, steps=8)
    _cancel_after_first_image(handle, s3, bucket)
    record = handle.record()
    assert record is not None and record.state is JobState.CANCELED
    assert record.partial_keys == ()
    assert _objects(s3, bucket, handle.job_id) == []
    assert f"job {handle.job_id} ended without a result; removed the" in worker.log_text()


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
    with session_s3.down():
        handle.cancel()
        wait_until(
            lambda: (r := handle.record()) is not None and r.finished, 120, "its end recorded"
        )
    record = handle.record()
    assert record is not None and record.state is JobState.CANCELED
    stored = _objects(s3, bucket, handle.job_id)
    assert stored and set(stored) <= set(record.partial_keys)
    assert "left in storage, listed in partial_keys" in (record.reason or "")
