"""A job over the hard time limit: its render process frozen (SIGSTOP) after its first PNG
is stored, so only the hard limit can end it. It fails once with its reason, removes the PNG
it had stored (S3 is up: nothing is left, so its record lists nothing in ``partial_keys``),
and the next job is fine on a render process started again."""

from __future__ import annotations

import os
import signal
import time

from lcm_fleet.contract import JobState
from lcm_fleet.keys import image_key
from producer.api import submit
from tests.faultkit import wait_until
from tests.faults.faultkit import (
    JOB_SLACK_S,
    assert_clean,
    audit,
    list_keys,
    render_pids,
    report,
    wait_finished,
)

SOFT_S, HARD_S = 12, 16


def test_hard_time_limit_fails_once_and_leaves_no_partial_objects(scenario, s3):
    sc = scenario()
    worker = sc.start_worker(
        "worker.log",
        sc.env(
            LCM_SIZES="512x512",
            LCM_TASK_SOFT_TIME_LIMIT_S=str(SOFT_S),
            LCM_TASK_TIME_LIMIT_S=str(HARD_S),
        ),
    )
    (pid,) = render_pids(worker)
    slow = submit("frozen", settings=sc.settings, width=512, height=512, steps=8, num_images=4)
    first_png = image_key(sc.settings.s3_prefix, slow.job_id, 0)
    wait_until(
        lambda: list_keys(s3, sc.settings.s3_bucket, first_png), JOB_SLACK_S, first_png, 0.05
    )
    os.kill(pid, signal.SIGSTOP)  # past the soft limit's reach: only the hard one can act
    frozen_at = time.time()
    (rec,) = wait_finished(sc.settings, [slow.job_id], HARD_S + JOB_SLACK_S).values()
    failed_after_s = time.time() - frozen_at
    nxt = submit("the next one", settings=sc.settings, width=512, height=512, steps=4, seed=5)
    (nxt_rec,) = wait_finished(sc.settings, [nxt.job_id], JOB_SLACK_S).values()
    ids = [slow.job_id, nxt.job_id]
    result = audit(s3, sc.settings, ids, expect_failed=[slow.job_id])
    log = worker.log_text()
    removed = [ln for ln in log.splitlines() if f"job {slow.job_id} ended without a result" in ln]
    recovery = (
        nxt_rec.finished_at - rec.finished_at
        if rec and rec.finished_at and nxt_rec and nxt_rec.finished_at
        else None
    )
    report(
        "hard_time_limit",
        result,
        recovery_s=recovery,
        failed_after_freeze_s=failed_after_s,
        reason=(rec.reason or "")[:200] if rec else None,
        failed_lines=sum(f"job {slow.job_id} failed" in ln for ln in log.splitlines()),
        render_processes_started=len(render_pids(worker)),
        partial_keys_in_record=list(rec.partial_keys) if rec else None,
        cleanup_lines=removed,
    )
    assert rec is not None and rec.state is JobState.FAILED
    assert rec.reason and f"hard time limit ({HARD_S}s) exceeded" in rec.reason
    assert sum(f"job {slow.job_id} failed" in ln for ln in log.splitlines()) == 1
    assert nxt_rec is not None and nxt_rec.state is JobState.SUCCEEDED
    assert len(render_pids(worker)) == 2 and worker.proc.poll() is None
    assert_clean(result)
    assert rec.partial_keys == (), "S3 was up: the failed job's PNGs should be removed"
    assert len(removed) == 1 and "removed the" in removed[0], removed
