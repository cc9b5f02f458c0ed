"""A storage outage is a transient fault: the job retries with backoff and then succeeds."""

from __future__ import annotations

import time

from producer.api import submit


def test_job_survives_s3_outage(worker, producer_settings, services_state):
    services, state = services_state["module"], services_state["state"]
    s3_port = int(services_state["env"]["LCM_S3_ENDPOINT_URL"].rsplit(":", 1)[1])
    services.stop_s3(state)
    try:
        handle = submit("during an outage", settings=producer_settings, seed=9)
        # Let the uploads fail (in-process backoff, then a task retry) before S3 returns.
        needle = f"job {handle.job_id}: storage failed"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and needle not in worker.log_text():
            time.sleep(0.2)
        assert needle in worker.log_text()
    finally:
        services.start(
            state,
            s3_port=s3_port,
            redis_url=producer_settings.redis_url,
            bucket=producer_settings.s3_bucket,
        )
    result = handle.wait(timeout_s=120)
    assert result.images and result.images[0].seed == 9
    log = [ln for ln in worker.log_text().splitlines() if handle.job_id in ln]
    assert any("retry 1 in" in ln for ln in log)
    assert sum("succeeded" in ln for ln in log) == 1
