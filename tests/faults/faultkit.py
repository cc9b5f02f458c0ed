"""What only the fault tier needs: workers to kill, batches, the loss/duplicate/partial audit
and the report. The services to kill (``OwnRedis``, ``OwnS3``) and ``wait_until`` are the
shared kit's (tests/faultkit.py), which the integration tier's outage tests use too.

A helper module (not a test module): tests/faults/conftest.py and the tests import it.
Everything here runs against real processes: ``redis-server`` started by the test on a port
of its own, SeaweedFS through deploy/local/services.py, real ``lcm-worker`` processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from lcm_fleet.contract import JobResult, JobState
from lcm_fleet.keys import INCARNATIONS_KEY, held_key, normalise_prefix, result_key
from lcm_fleet.records import JobRecord, RecordStore
from producer.api import JobHandle, submit
from producer.settings import ProducerSettings
from tests.faultkit import wait_until
from tests.integration.conftest import ROOT, WorkerProcess, wait_for_log

#: Where the tier's own services listen (weed takes the S3 port and the next 9).
FAULTS_S3_PORT = int(os.environ.get("LCM_TEST_S3_PORT", "18350"))
FAULTS_REDIS_URL = os.environ.get("LCM_TEST_REDIS_URL", "redis://127.0.0.1:16400/0")
FAULTS_REDIS_PORT = int(FAULTS_REDIS_URL.rsplit(":", 1)[1].split("/")[0])
#: Seconds a job of the fault batches may take at most, whatever the CPU (generous).
JOB_SLACK_S = 120.0


# ---------------------------------------------------------------- workers


def start_worker_cmd(
    env: dict[str, str], log: Path, prefix: Sequence[str] = (), ready_s: float = 180
) -> WorkerProcess:
    """``lcm-worker`` as tests/integration/conftest.py's start_worker, optionally behind a
    command prefix (``ip netns exec NS``)."""
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "worker.cli"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(proc=proc, log=log, env=env)
    wait_for_log(worker, "pipeline loaded", timeout_s=ready_s)
    wait_for_log(worker, " ready.", timeout_s=60)
    wait_for_log(worker, "render process 0 (pid", timeout_s=120)
    return worker


def render_pids(worker: WorkerProcess) -> list[int]:
    return [
        int(p) for p in re.findall(r"render process 0 started \(pid (\d+)\)", worker.log_text())
    ]


def kill_worker(worker: WorkerProcess) -> None:
    """kill -9 of the worker's main process and of its render processes (as a machine loss)."""
    pids = render_pids(worker)
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker.proc.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.proc.wait(10)


def held_jobs(r: redis.Redis, unit: str) -> dict[str, str]:
    """Delivery tag -> job id of what the worker ``lcm-worker-<unit>@...`` holds."""
    held: dict[str, str] = {}
    for incarnation, name in r.hgetall(INCARNATIONS_KEY).items():
        if name.decode().startswith(f"lcm-worker-{unit}@"):
            for tag, job in r.hgetall(held_key(incarnation.decode())).items():
                held[tag.decode()] = job.decode()
    return held


def freeze_held(
    worker: WorkerProcess, r: redis.Redis, unit: str, settings: ProducerSettings
) -> tuple[dict[str, str], set[str]]:
    """SIGSTOP the worker's main process, then read what it holds: (held, of those the jobs
    not finished yet). Frozen, it can finish nothing more; kill it next."""
    os.kill(worker.proc.pid, signal.SIGSTOP)
    held = held_jobs(r, unit)
    recs = records_of(settings, held.values())
    unfinished = {j for j, rec in recs.items() if rec is None or not rec.finished}
    return held, unfinished


def succeeded_lines(workers: Iterable[WorkerProcess], job_id: str) -> int:
    return sum(f"job {job_id} succeeded" in ln for w in workers for ln in w.log_text().splitlines())


# ---------------------------------------------------------------- batches


@dataclass
class Batch:
    settings: ProducerSettings
    handles: list[JobHandle]
    num_images: int
    #: Unix time of each job's submission.
    submitted_at: dict[str, float] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [h.job_id for h in self.handles]


def submit_batch(
    settings: ProducerSettings, n: int, word: str, *, num_images: int = 2, **fields: Any
) -> Batch:
    batch = Batch(settings, [], num_images)
    for i in range(n):
        h = submit(f"{word} {i}", settings=settings, seed=1000 + i, num_images=num_images, **fields)
        batch.handles.append(h)
        batch.submitted_at[h.job_id] = time.time()
    return batch


def records_of(settings: ProducerSettings, ids: Iterable[str]) -> dict[str, JobRecord | None]:
    """Each job's record, read with a fresh client (None when Redis does not answer)."""
    client = redis.Redis.from_url(settings.records_url, socket_timeout=5, socket_connect_timeout=2)
    store = RecordStore(client, ttl_s=3600)
    out: dict[str, JobRecord | None] = {}
    try:
        for job_id in ids:
            try:
                out[job_id] = store.get_job(job_id)
            except (redis.RedisError, OSError):
                out[job_id] = None
    finally:
        client.close()
    return out


def wait_finished(
    settings: ProducerSettings,
    ids: Sequence[str],
    timeout_s: float,
    *,
    count: int | None = None,
    workers: Sequence[WorkerProcess] = (),
) -> dict[str, JobRecord | None]:
    """Poll the records until ``count`` (default: all) of ``ids`` are finished, time is up,
    or every one of ``workers`` (if given) has exited; Redis being down is ridden out."""
    want = len(ids) if count is None else count
    deadline = time.monotonic() + timeout_s
    while True:
        recs = records_of(settings, ids)
        done = sum(1 for r in recs.values() if r is not None and r.finished)
        if done >= want or time.monotonic() >= deadline:
            return recs
        if workers and all(w.proc.poll() is not None for w in workers):
            return records_of(settings, ids)
        time.sleep(0.25)


def wait_succeeded(
    settings: ProducerSettings, ids: Sequence[str], count: int, timeout_s: float
) -> None:
    def enough() -> bool:
        recs = records_of(settings, ids).values()
        return sum(1 for r in recs if r is not None and r.state is JobState.SUCCEEDED) >= count

    wait_until(enough, timeout_s, f"{count} of {len(ids)} jobs succeeded")


# ---------------------------------------------------------------- the audit


@dataclass
class Audit:
    """What became of each job, and of each object under the scenario's S3 prefix."""

    states: dict[str, str]
    reasons: dict[str, str]
    #: Accepted jobs that did not reach their expected end (succeeded, or failed for
    #: the jobs expected to fail).
    lost: list[str]
    #: Keys under the prefix beyond exactly one result.json and the PNGs it lists per job.
    duplicate: list[str]
    #: PNGs without a result.json, or listed in one but missing / with another sha256. A
    #: job that fails or times out removes the PNGs it had stored; what it could not remove
    #: is listed in its record (``partial_keys``) and is still counted here.
    partial: list[str]
    #: Partial PNGs that a failed job's record lists (``partial_keys``).
    partial_listed: list[str]
    #: Keys a record lists in ``partial_keys`` that are not stored (the record is wrong).
    listed_missing: list[str]
    keys: int
    finished_at: dict[str, float]

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for s in self.states.values():
            counts[s] = counts.get(s, 0) + 1
        return {
            "jobs": len(self.states),
            "states": counts,
            "lost": len(self.lost),
            "duplicate_objects": len(self.duplicate),
            "partial_objects": len(self.partial),
            "partial_listed_in_record": len(self.partial_listed),
            "listed_but_missing": len(self.listed_missing),
            "objects": self.keys,
            "lost_ids": self.lost[:10],
            "duplicate_keys": self.duplicate[:10],
            "partial_keys": self.partial[:10],
            "failure_reasons": sorted(set(self.reasons.values()))[:5],
        }


def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def audit(
    s3: Any,
    settings: ProducerSettings,
    batch_ids: Sequence[str],
    *,
    expect_failed: Iterable[str] = (),
    records: dict[str, JobRecord | None] | None = None,
) -> Audit:
    """Read every record and every object under the settings' S3 prefix (``jobs/``)."""
    expect_failed = set(expect_failed)
    bucket, prefix = settings.s3_bucket, settings.s3_prefix
    recs = records if records is not None else records_of(settings, batch_ids)
    states = {j: (r.state.value if r is not None else "missing") for j, r in recs.items()}
    reasons = {j: r.reason for j, r in recs.items() if r is not None and r.reason}
    lost = [
        j
        for j in batch_ids
        if states[j] != (JobState.FAILED.value if j in expect_failed else JobState.SUCCEEDED.value)
    ]
    root = f"{normalise_prefix(prefix)}jobs/"
    keys = list_keys(s3, bucket, root)
    by_job: dict[str, list[str]] = {}
    for key in keys:
        by_job.setdefault(key[len(root) :].split("/", 1)[0], []).append(key)
    duplicate: list[str] = []
    partial: list[str] = []
    partial_listed: list[str] = []
    for job_id, job_keys in sorted(by_job.items()):
        rkey = result_key(prefix, job_id)
        if job_id not in batch_ids:
            duplicate += job_keys  # an object of no job of this batch
            continue
        if rkey not in job_keys:
            pngs = [k for k in job_keys if k.endswith(".png")]
            partial += pngs
            rec = recs.get(job_id)
            listed = set(rec.partial_keys) if rec is not None else set()
            partial_listed += [k for k in pngs if k in listed]
            duplicate += [k for k in job_keys if not k.endswith(".png")]
            continue
        body = s3.get_object(Bucket=bucket, Key=rkey)["Body"].read()
        result = JobResult.model_validate_json(body)
        expected = {rkey} | {i.key for i in result.images}
        duplicate += [k for k in job_keys if k not in expected]
        for image in result.images:
            if image.key not in job_keys:
                partial.append(image.key)
                continue
            data = s3.get_object(Bucket=bucket, Key=image.key)["Body"].read()
            if hashlib.sha256(data).hexdigest() != image.sha256:
                partial.append(image.key)
        if len(result.images) != len({i.key for i in result.images}):
            duplicate.append(rkey)  # one image listed twice
    stored = set(keys)
    listed_missing: list[str] = []
    for job_id in batch_ids:
        rec = recs.get(job_id)
        if rec is not None and rec.state is JobState.SUCCEEDED and job_id not in by_job:
            partial.append(result_key(prefix, job_id))  # succeeded, but nothing stored
        if rec is not None:
            listed_missing += [k for k in rec.partial_keys if k not in stored]
    finished_at = {
        j: r.finished_at for j, r in recs.items() if r is not None and r.finished_at is not None
    }
    return Audit(
        states,
        reasons,
        lost,
        duplicate,
        partial,
        partial_listed,
        listed_missing,
        len(keys),
        finished_at,
    )


# ---------------------------------------------------------------- the report


def report(
    scenario: str, audit_: Audit | None, *, recovery_s: float | None, **figures: Any
) -> dict[str, Any]:
    """Print one JSON line and append it to the tier's results file. Every scenario names
    its recovery time: seconds from the fault's end (or the fault itself, for a kill) until
    the work it hit was done (None: nothing it hit finished)."""
    line: dict[str, Any] = {
        "scenario": scenario,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recovery_s": recovery_s,
    }
    line.update(figures)
    line = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in line.items()}
    if audit_ is not None:
        line.update(audit_.summary())
    text = json.dumps(line, sort_keys=False)
    path = Path(os.environ["LCM_FAULTS_REPORT"])
    with path.open("a") as fh:
        fh.write(text + "\n")
    print(f"\nFAULTS {text}")
    return line


def assert_clean(audit_: Audit) -> None:
    """The three invariants of every scenario (and the records telling the truth about what
    was left)."""
    assert not audit_.lost, (
        f"accepted jobs lost: {audit_.lost} (states {audit_.states}, reasons {audit_.reasons})"
    )
    assert not audit_.duplicate, f"duplicate objects: {audit_.duplicate}"
    assert not audit_.partial, (
        f"partial objects: {audit_.partial} (listed in a record: {audit_.partial_listed})"
    )
    assert not audit_.listed_missing, (
        f"records list as left in storage keys that are not there: {audit_.listed_missing}"
    )


def recovery_after(audit_: Audit, ids: Iterable[str], since: float) -> float | None:
    """Seconds from ``since`` (Unix time) until the last of ``ids`` finished."""
    ends = [audit_.finished_at[j] for j in ids if j in audit_.finished_at]
    return max(ends) - since if ends else None
