"""A job over the hard time limit: its render process frozen (SIGSTOP) after its first PNG
is stored, so only the hard limit can end it. It fails once with its reason, the next job
is fine, and nothing of it is left in S3 that no record or result lists."""

from __future__ import annotations

import os
import signal
import time

from lcm_fleet.contract import JobState
from lcm_fleet.keys import image_key
from producer.api import submit
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
    deadline = time.monotonic() + JOB_SLACK_S
    while time.monotonic() < deadline and not list_keys(s3, sc.settings.s3_bucket, first_png):
        time.sleep(0.05)
    os.kill(pid, signal.SIGSTOP)  # past the soft limit's reach: only the hard one can act
    frozen_at = time.time()
    (rec,) = wait_finished(sc.settings, [slow.job_id], HARD_S + JOB_SLACK_S).values()
    failed_after_s = time.time() - frozen_at
    nxt = submit("the next one", settings=sc.settings, width=512, height=512, steps=4, seed=5)
    (nxt_rec,) = wait_finished(sc.settings, [nxt.job_id], JOB_SLACK_S).values()
    ids = [slow.job_id, nxt.job_id]
    result = audit(s3, sc.settings, ids, expect_failed=[slow.job_id])
    log = worker.log_text()
    report(
        "hard_time_limit",
        result,
        failed_after_freeze_s=failed_after_s,
        reason=(rec.reason or "")[:200] if rec else None,
        failed_lines=sum(f"job {slow.job_id} failed" in ln for ln in log.splitlines()),
        render_processes_started=len(render_pids(worker)),
    )
    assert rec is not None and rec.state is JobState.FAILED
    assert rec.reason and f"hard time limit ({HARD_S}s) exceeded" in rec.reason
    assert sum(f"job {slow.job_id} failed" in ln for ln in log.splitlines()) == 1
    assert nxt_rec is not None and nxt_rec.state is JobState.SUCCEEDED
    assert len(render_pids(worker)) == 2 and worker.proc.poll() is None
    assert_clean(result)
