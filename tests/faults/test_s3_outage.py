"""S3 stopped for ~30 s mid-batch, and S3 hung (SIGSTOP ~30 s, then SIGCONT) mid-batch.

The worker runs with its default storage retry settings (not the integration tier's short
ones): a 30 s outage is what those defaults must ride out.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.faults.faultkit import (
    JOB_SLACK_S,
    assert_clean,
    audit,
    recovery_after,
    report,
    submit_batch,
    wait_finished,
    wait_succeeded,
)

OUTAGE_S = 30.0
JOB = {"width": 512, "height": 512, "steps": 2}
#: The integration tier's fast-failing storage settings, dropped here.
SHORT_RETRIES = (
    "LCM_UPLOAD_BACKOFF_BASE_S",
    "LCM_UPLOAD_BACKOFF_CAP_S",
    "LCM_UPLOAD_ATTEMPTS",
    "LCM_RETRY_BACKOFF_BASE_S",
    "LCM_RETRY_BACKOFF_CAP_S",
    "LCM_TASK_MAX_RETRIES",
)


def _worker(sc):
    env = {k: v for k, v in sc.env(LCM_SIZES="512x512").items() if k not in SHORT_RETRIES}
    return sc.start_worker("worker.log", env)


def _run(sc, s3, name: str, outage) -> None:
    worker = _worker(sc)
    batch = submit_batch(sc.settings, 6, name, **JOB)
    wait_succeeded(sc.settings, batch.ids, 2, JOB_SLACK_S)
    start = time.time()
    outage()
    back_at = time.time()
    recs = wait_finished(sc.settings, batch.ids, JOB_SLACK_S + 60)
    result = audit(s3, sc.settings, batch.ids, records=recs)
    storage_failed = sum("storage failed" in ln for ln in worker.log_text().splitlines())
    report(
        name,
        result,
        outage_s=back_at - start,
        recovery_s=recovery_after(result, batch.ids, back_at),
        storage_failure_lines=storage_failed,
    )
    assert_clean(result)
    assert worker.proc.poll() is None


def test_s3_stopped_30s_mid_batch(scenario, s3, s3_services):
    services, state = s3_services["module"], s3_services["state"]

    def outage() -> None:
        services.stop_s3(state)
        try:
            time.sleep(OUTAGE_S)
        finally:
            services.start(
                state,
                s3_port=s3_services["port"],
                redis_url=s3_services["env"]["LCM_REDIS_URL"],
                bucket=s3_services["env"]["LCM_S3_BUCKET"],
            )

    _run(scenario(), s3, "s3_stopped_30s", outage)


def test_s3_hung_30s_mid_batch(scenario, s3, s3_services):
    pid = int((Path(s3_services["state"]) / "weed.pid").read_text())

    def outage() -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(OUTAGE_S)
        finally:
            os.kill(pid, signal.SIGCONT)

    _run(scenario(), s3, "s3_hung_30s", outage)
