"""S3 stopped for ~30 s mid-batch, and S3 hung (SIGSTOP ~30 s, then SIGCONT) mid-batch.

The worker runs with its default storage retry settings (not the integration tier's short
ones): each S3 call retries transient faults in place for LCM_STORAGE_RETRY_BUDGET_S, so a
30 s outage costs a job only its wait: every job succeeds, rendered once, without a task
retry (no "storage failed" line).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from tests.faultkit import OwnS3
from tests.faults.faultkit import (
    JOB_SLACK_S,
    assert_clean,
    audit,
    recovery_after,
    report,
    submit_batch,
    succeeded_lines,
    wait_finished,
    wait_succeeded,
)
from worker.settings import WorkerSettings

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
    "LCM_STORAGE_RETRY_BUDGET_S",
)
#: What the worker's defaults give one S3 call to ride out (LCM_STORAGE_RETRY_BUDGET_S).
BUDGET_S = float(WorkerSettings.model_fields["storage_retry_budget_s"].default)


def _run(
    sc, s3, name: str, outage: Callable[[], AbstractContextManager[None]], *, refused: bool
) -> None:
    """``refused``: S3 refuses connections (stopped), so the uploads that meet the outage
    log their in-place retries; a hung S3 holds them on the socket instead."""
    assert OUTAGE_S < BUDGET_S, "the outage must fit in the default retry budget"
    env = {k: v for k, v in sc.env(LCM_SIZES="512x512").items() if k not in SHORT_RETRIES}
    worker = sc.start_worker("worker.log", env)
    batch = submit_batch(sc.settings, 6, name, **JOB)
    wait_succeeded(sc.settings, batch.ids, 2, JOB_SLACK_S)
    start = time.time()
    with outage():
        time.sleep(OUTAGE_S)
    back_at = time.time()
    recs = wait_finished(sc.settings, batch.ids, JOB_SLACK_S + 60, workers=[worker])
    result = audit(s3, sc.settings, batch.ids, records=recs)
    lines = worker.log_text().splitlines()
    storage_failed = sum("storage failed" in ln for ln in lines)
    retried_in_place = sum("budget left" in ln for ln in lines)
    renders = {j: succeeded_lines([worker], j) for j in batch.ids}
    after = sum(1 for t in result.finished_at.values() if t > back_at)
    report(
        name,
        result,
        recovery_s=recovery_after(result, batch.ids, back_at),
        outage_s=back_at - start,
        retry_budget_s=BUDGET_S,
        retried_in_place_lines=retried_in_place,
        storage_failure_lines=storage_failed,
        renders_per_job=sorted(set(renders.values())),
        finished_after_outage=after,
    )
    assert_clean(result)
    assert after, "every job had finished before the outage ended: it hit nothing"
    if refused:
        assert retried_in_place, "no upload met the outage (no in-place retry logged)"
    assert storage_failed == 0, "a job was retried from its queue: the budget did not hold"
    assert set(renders.values()) == {1}, f"rendered other than once: {renders}"
    assert worker.proc.poll() is None


def test_s3_stopped_30s_mid_batch(scenario, s3, s3_services):
    _run(scenario(), s3, "s3_stopped_30s", OwnS3(s3_services).down, refused=True)


def test_s3_hung_30s_mid_batch(scenario, s3, s3_services):
    _run(scenario(), s3, "s3_hung_30s", OwnS3(s3_services).hung, refused=False)
