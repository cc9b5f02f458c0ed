"""A bulk file resumed after S3 and then its worker died part-way: every row exactly once.

S3 is stopped mid-batch, with fast-failing storage retries, until a job that met it failed;
then the worker is killed (kill -9) while it holds jobs. The same file
submitted again, with no worker alive, queues the failed rows, counts the stored ones as
succeeded and leaves the running and queued ones alone; a new worker takes back what the
dead one held. Every row ends succeeded, rendered at most once per submission that queued
it, each object stored once, and the manifest lists every row with the stored sha256.
"""

from __future__ import annotations

import hashlib
import json
import time

import redis

from lcm_fleet.batch_manifest import parse_manifest
from lcm_fleet.contract import JobState
from lcm_fleet.keys import batch_manifest_key
from tests.faultkit import OwnS3, wait_until
from tests.faults.faultkit import (
    JOB_SLACK_S,
    assert_clean,
    audit,
    held_jobs,
    kill_worker,
    records_of,
    recovery_after,
    report,
    succeeded_lines,
    wait_finished,
    wait_succeeded,
)
from tests.integration.conftest import run_cli

ROWS = 32
TTL_S = 3.0
ROW = {"width": 512, "height": 512, "steps": 2}


def test_a_batch_resumed_after_s3_and_its_worker_died_renders_every_row_once(
    scenario, s3, s3_services, tmp_path
):
    sc = scenario()
    env = sc.env(
        LCM_SIZES="512x512",
        LCM_HEARTBEAT_TTL_S=str(TTL_S),
        LCM_UNIT="first",
        # A job meeting the outage fails for good within seconds: LCM_UPLOAD_ATTEMPTS
        # attempts per upload (no in-place budget), then one task retry.
        LCM_STORAGE_RETRY_BUDGET_S="0",
        LCM_TASK_MAX_RETRIES="1",
    )
    first = sc.start_worker("first.log", env)
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"row {n}", **ROW}) + "\n" for n in range(ROWS)))
    batch = "resume-faults"
    ids = [f"{batch}-{n:06d}" for n in range(1, ROWS + 1)]
    cli_env = {**sc.service_env, "LCM_QUEUE": sc.settings.queue}
    run_cli("producer.cli", "submit-file", str(f), "--batch-id", batch, env=cli_env)
    wait_succeeded(sc.settings, ids, 2, JOB_SLACK_S)
    down_at = time.time()
    with OwnS3(s3_services).down():  # the jobs meeting it fail (short retries): one is enough

        def one_failed() -> bool:
            recs = records_of(sc.settings, ids).values()
            return any(r is not None and r.state is JobState.FAILED for r in recs)

        wait_until(one_failed, JOB_SLACK_S, "a job failed while S3 was down")
    outage_s = time.time() - down_at
    r = redis.Redis.from_url(sc.settings.redis_url)
    deadline = time.monotonic() + JOB_SLACK_S
    while not held_jobs(r, "first") and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_worker(first)
    killed_at = time.time()

    out = tmp_path / "resume.jsonl"
    resumed = run_cli(
        "producer.cli", "submit-file", str(f), "--batch-id", batch, "--ids-out", str(out),
        env=cli_env,
    )  # fmt: skip
    outcomes = [json.loads(t)["outcome"] for t in out.read_text().splitlines()]
    second = sc.start_worker("second.log", {**env, "LCM_UNIT": "second"})
    recs = wait_finished(sc.settings, ids, JOB_SLACK_S + 10 * TTL_S + ROWS * 10)
    result = audit(s3, sc.settings, ids, records=recs)
    renders = {j: succeeded_lines([first, second], j) for j in ids}
    report(
        "batch_resumed_after_s3_and_worker_died",
        result,
        recovery_s=recovery_after(result, ids, killed_at),
        outage_s=outage_s,
        resumed_queued=outcomes.count("queued"),
        resumed_stored=outcomes.count("stored"),
        resumed_in_flight=outcomes.count("in_flight"),
        renders_per_job=sorted(set(renders.values())),
    )
    assert_clean(result)
    assert len(outcomes) == ROWS, resumed.stderr
    assert outcomes.count("queued") >= 1, "no row failed in the outage: it hit nothing"
    assert outcomes.count("stored") >= 2 and outcomes.count("in_flight") >= 1, outcomes
    assert set(renders.values()) <= {0, 1}, renders  # 0: recorded from its stored objects
    bucket, key = sc.settings.s3_bucket, batch_manifest_key(sc.settings.s3_prefix, batch)
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:  # the last job's worker writes it after its record
        try:
            lines = list(parse_manifest(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        except s3.exceptions.NoSuchKey:
            time.sleep(0.5)
            continue
        break
    assert [line.row for line in lines] == list(range(1, ROWS + 1))
    assert {line.state for line in lines} == {"succeeded"}
    for line in lines:
        for image in line.images:
            body = s3.get_object(Bucket=bucket, Key=image.key)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == image.sha256
    assert second.proc.poll() is None
