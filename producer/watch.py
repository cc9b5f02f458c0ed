"""``lcm status|watch|cancel JOB_ID``, ``lcm batch status|watch|cancel|download|manifest
BATCH_ID``, and the wait of ``lcm submit-file --wait``.

All of them read the job and batch records (lcm_fleet/records.py), the same records the
HTTP API reads. The CLI talks to Redis directly, so it sees every owner's jobs.

Redis away: ``status`` and ``cancel`` retry for ``STATUS_BUDGET_S`` and ``watch`` until its
own timeout (capped, jittered backoff), then say so in one line naming the (masked) Redis
address and exit 1 (lcm_fleet/broker.py), never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from lcm_fleet.broker import REDIS_TRANSIENT, BrokerUnavailable, ride_out
from lcm_fleet.contract import JobState
from lcm_fleet.records import BatchRecord, CancelOutcome, JobRecord, RecordStore
from producer.queue import cached_records
from producer.settings import ProducerSettings

#: How often ``watch`` reads the record.
POLL_S = 0.2
#: How long ``status`` and ``cancel`` ride out a Redis outage before they give up.
STATUS_BUDGET_S = 10.0


class Patient:
    """A record store whose reads and cancels ride out a Redis outage for ``budget_s``
    (``watch`` moves the budget to its own deadline)."""

    def __init__(self, records: RecordStore, url: str, budget_s: float = STATUS_BUDGET_S) -> None:
        self.records, self.url, self.budget_s = records, url, budget_s
        self.deadline: float | None = None

    def _left(self) -> float:
        if self.deadline is None:
            return self.budget_s
        return max(0.001, self.deadline - time.monotonic())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.records, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return ride_out(
                lambda: method(*args, **kwargs),
                url=self.url,
                what=f"reading the records ({name})",
                budget_s=self._left(),
                transient=REDIS_TRANSIENT,
            )

        return call


def _expired_hint(what: str, ident: str, settings: ProducerSettings) -> str:
    return (
        f"lcm: no {what} {ident}: the id is unknown, or its record expired "
        f"(LCM_RECORD_TTL_S={settings.record_ttl_s}s after its last change)"
    )


def describe_job(record: JobRecord) -> str:
    """One line: the state, where a running job is, why a job failed."""
    line = f"{record.job_id}: {record.state.value}"
    progress = record.progress
    if record.state is JobState.RUNNING and progress is not None:
        line += (
            f" (image {progress.image} of {progress.images}, "
            f"step {progress.step} of {progress.steps})"
        )
    waiting = record.waiting
    if record.state is JobState.RUNNING and waiting is not None:
        since = time.strftime("%H:%M:%S", time.gmtime(waiting.since))
        line += f", waiting for {waiting.waiting_for.value} since {since} UTC ({waiting.error})"
    if record.cancel_requested and not record.finished:
        line += ", cancel requested"
    if record.reason and record.state in (JobState.FAILED, JobState.CANCELED):
        line += f": {record.reason}"
    if record.result is not None:
        line += f" ({len(record.result.images)} image(s))"
    if record.job_class is not None:
        line += f" [{record.job_class.value}]"
    return line


def describe_batch(record: BatchRecord) -> str:
    c = record.counts
    state = "finished" if record.finished else ("submitting" if not record.sealed else "running")
    line = (
        f"batch {record.batch_id}: {state}, {record.total} job(s): {c.queued} queued, "
        f"{c.running} running, {c.succeeded} succeeded, {c.failed} failed, "
        f"{c.canceled} canceled"
    )
    if record.finished_at is not None:
        line += f"; took {record.finished_at - record.created_at:.1f}s"
    if record.output_prefix:
        line += f"; output prefix {record.output_prefix}/"
    if record.summary is not None:
        from producer.bulk import describe_summary

        line += f"\nsummary: {describe_summary(record.summary)}"
    return line


def _steps_done(record: JobRecord) -> tuple[int, int]:
    """(denoising steps done, steps in all) of one job."""
    job = record.job
    images, steps = (job.num_images, job.steps) if job is not None else (1, 1)
    total = images * steps
    if record.state is JobState.SUCCEEDED:
        return total, total
    progress = record.progress
    if progress is None or record.state is not JobState.RUNNING:
        return 0, total
    return (progress.image - 1) * progress.steps + progress.step, total


def _until(records: Any, deadline: float) -> None:
    if isinstance(records, Patient):
        records.deadline = deadline


def watch_job(records: RecordStore, job_id: str, timeout_s: float) -> JobRecord | None:
    """A progress bar over the job's denoising steps until it ends; the last record."""
    from tqdm import tqdm

    deadline = time.monotonic() + timeout_s
    _until(records, deadline)
    record = records.get_job(job_id)
    if record is None:
        return None
    done, total = _steps_done(record)
    with tqdm(total=total, desc=job_id[:16], unit="step", file=sys.stderr) as bar:
        while True:
            done, total = _steps_done(record)
            bar.total = total
            bar.n = done
            bar.set_postfix_str(record.state.value)
            bar.refresh()
            if record.finished or time.monotonic() >= deadline:
                return record
            time.sleep(POLL_S)
            record = records.get_job(job_id) or record


def watch_batch(records: RecordStore, batch_id: str, timeout_s: float) -> BatchRecord | None:
    """A progress bar over the batch's jobs (rate and ETA) until it finishes."""
    from tqdm import tqdm

    deadline = time.monotonic() + timeout_s
    _until(records, deadline)
    record = records.get_batch(batch_id)
    if record is None:
        return None
    with tqdm(
        total=record.total, desc=f"batch {batch_id[:16]}", unit="job", file=sys.stderr
    ) as bar:
        while True:
            c = record.counts
            bar.total = record.total
            bar.update(c.finished - bar.n)
            bar.set_postfix_str(f"{c.running} running, {c.failed} failed, {c.canceled} canceled")
            if record.finished or time.monotonic() >= deadline:
                return record
            time.sleep(POLL_S)
            record = records.get_batch(batch_id) or record


def _cancel_line(outcome: CancelOutcome, what: str, record: JobRecord | None) -> tuple[str, int]:
    if outcome is CancelOutcome.CANCELED:
        return f"{what}: canceled (it had not started)", 0
    if outcome is CancelOutcome.REQUESTED:
        return f"{what}: running; it stops at its next denoising step", 0
    state = record.state.value if record is not None else "finished"
    return f"lcm: {what} already {state}: nothing to cancel", 1


def _record_json(record: Any) -> str:
    return json.dumps(record.model_dump(mode="json"), indent=2, sort_keys=True)


def run(args: argparse.Namespace, settings: ProducerSettings) -> int:
    if "watch" not in (args.command, getattr(args, "action", None)):
        # One line if Redis stays away, not one per retry (watch shows its retries).
        logging.getLogger("lcm_fleet.backoff").setLevel(logging.ERROR)
    records: Any = Patient(cached_records(settings), settings.records_url)
    if args.command == "batch":
        return _run_batch(args, records, settings)
    job_id = args.job_id
    if args.command == "cancel":
        outcome = records.cancel_job(job_id)
        if outcome is CancelOutcome.NOT_FOUND:
            print(_expired_hint("job", job_id, settings), file=sys.stderr)
            return 1
        line, code = _cancel_line(outcome, f"job {job_id}", records.get_job(job_id))
        print(line, file=sys.stderr if code else sys.stdout)
        return code
    if args.command == "watch":
        record = watch_job(records, job_id, args.timeout_s)
    else:
        record = records.get_job(job_id)
    if record is None:
        print(_expired_hint("job", job_id, settings), file=sys.stderr)
        return 1
    print(_record_json(record) if getattr(args, "json", False) else describe_job(record))
    if args.command == "watch":
        return 0 if record.state is JobState.SUCCEEDED else 1
    return 0


def _run_batch(args: argparse.Namespace, records: RecordStore, settings: ProducerSettings) -> int:
    batch_id = args.batch_id
    if args.action == "cancel":
        counts = records.cancel_batch(batch_id)
        if counts[CancelOutcome.NOT_FOUND] and records.get_batch(batch_id) is None:
            print(_expired_hint("batch", batch_id, settings), file=sys.stderr)
            return 1
        print(
            f"batch {batch_id}: {counts[CancelOutcome.CANCELED]} queued job(s) canceled, "
            f"{counts[CancelOutcome.REQUESTED]} running job(s) stop at their next step, "
            f"{counts[CancelOutcome.FINISHED]} already finished"
        )
        _manifest_after_cancel(records, batch_id, settings)
        return 0
    if args.action == "watch":
        record = watch_batch(records, batch_id, args.timeout_s)
    else:
        record = records.get_batch(batch_id)
    if record is None:
        print(_expired_hint("batch", batch_id, settings), file=sys.stderr)
        return 1
    if args.action == "download":
        return _download_batch(records, record, args.out, settings)
    if args.action == "manifest":
        return _manifest(records, record, args.write, settings)
    print(_record_json(record) if args.json else describe_batch(record))
    if args.action == "watch":
        return 0 if record.finished and record.counts.finished == record.counts.succeeded else 1
    return 0


def _manifest_after_cancel(records: Any, batch_id: str, settings: ProducerSettings) -> None:
    """A cancel that ended the batch (nothing was running) writes its manifest: no worker's
    job ends it. With jobs still running, the last of them does."""
    from lcm_fleet.batch_manifest import write_manifest
    from producer.download import result_store

    record = records.get_batch(batch_id)
    if record is not None and record.finished and record.summary is None:
        write_manifest(records.records, result_store(settings), settings.s3_prefix, batch_id)


def _manifest(records: Any, batch: BatchRecord, write: bool, settings: ProducerSettings) -> int:
    """Print the batch's stored manifest (JSONL), or build and write it again first."""
    from lcm_fleet.batch_manifest import manifest_body, read_manifest, write_manifest
    from lcm_fleet.keys import batch_manifest_key
    from producer.bulk import describe_summary
    from producer.download import result_store

    store = result_store(settings)
    if write:
        summary = write_manifest(records.records, store, settings.s3_prefix, batch.batch_id)
        if summary is None:
            print(_expired_hint("batch", batch.batch_id, settings), file=sys.stderr)
            return 1
        print(f"batch {batch.batch_id}: {describe_summary(summary)}", file=sys.stderr)
        return 0
    key = batch_manifest_key(settings.s3_prefix, batch.batch_id, batch.output_prefix)
    lines = read_manifest(store, key)
    if lines is None:
        print(
            f"lcm: batch {batch.batch_id} has no manifest at {store.uri(key)} yet (it is "
            f"written when the batch ends; `lcm batch manifest {batch.batch_id} --write` "
            "writes it now)",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(manifest_body(lines).decode())
    return 0


def wait_and_report(
    batch_id: str,
    timeout_s: float,
    download: Path | None,
    settings: ProducerSettings,
    rows: int,
) -> int:
    """``lcm submit-file --wait``: wait for the batch (of ``rows`` jobs) to end, print its
    counts, failures and summary (writing the manifest when no worker did), download its
    images if asked. Redis away past the deadline: one line naming the batch."""
    from lcm_fleet.batch_manifest import write_manifest
    from producer.bulk import batch_jobs, describe_summary, wait_batch
    from producer.download import download_images, result_store

    records = cached_records(settings)
    try:
        record = wait_batch(records, batch_id, timeout_s, url=settings.records_url)
    except BrokerUnavailable as e:  # Redis away past the deadline: one line, what to run
        print(
            f"lcm: stopped waiting: {e}. {rows} job(s) of batch {batch_id} are queued or "
            f"stored; once Redis answers follow them with `lcm batch status {batch_id}` or "
            f"`lcm batch watch {batch_id}`",
            file=sys.stderr,
        )
        return 1
    if record is None:
        print(_expired_hint("batch", batch_id, settings), file=sys.stderr)
        return 1
    store = result_store(settings)
    if record.finished and record.summary is None:
        write_manifest(records, store, settings.s3_prefix, batch_id)  # no worker wrote it
        record = records.get_batch(batch_id) or record
    c = record.counts
    shown = 0
    if c.failed or c.canceled:
        for job in batch_jobs(records, batch_id):
            if job.state in (JobState.FAILED, JobState.CANCELED) and shown < 20:
                print(f"lcm: job {job.job_id} {job.state.value}: {job.reason}", file=sys.stderr)
                shown += 1
    unfinished = c.queued + c.running
    if not record.finished:
        print(
            f"lcm: {unfinished} job(s) of batch {batch_id} not finished after {timeout_s:.0f}s; "
            f"follow them with `lcm batch watch {batch_id}`",
            file=sys.stderr,
        )
    images = record.summary.images if record.summary is not None else 0
    print(
        f"{c.succeeded} succeeded ({images} image(s)), {c.failed + c.canceled} failed, "
        f"{unfinished} unfinished",
        file=sys.stderr,
    )
    if record.summary is not None:
        print(f"batch {batch_id}: {describe_summary(record.summary)}", file=sys.stderr)
    if download is not None:
        for job in batch_jobs(records, batch_id):
            if job.result is not None:
                for path in download_images(job.result, download, settings, store):
                    print(f"saved {path}", file=sys.stderr)
    ok = record.finished and c.succeeded == record.total
    return 0 if ok else 1


def _download_batch(
    records: RecordStore, batch: BatchRecord, out: Path | None, settings: ProducerSettings
) -> int:
    from producer.download import download_images, result_store

    if out is None:
        print(
            "lcm: batch download needs a folder: lcm batch download BATCH_ID DIR", file=sys.stderr
        )
        return 2
    store = result_store(settings)
    saved = missing = 0
    offset = 0
    while ids := records.batch_job_ids(batch.batch_id, offset, 500):
        offset += len(ids)
        for job_id in ids:
            record = records.get_job(job_id)
            if record is None or record.result is None:
                missing += 1
                continue
            saved += len(download_images(record.result, out, settings, store))
    print(
        f"batch {batch.batch_id}: {saved} image(s) saved in {out}"
        + (f"; {missing} job(s) have no images (not succeeded)" if missing else ""),
        file=sys.stderr,
    )
    return 0 if not missing else 1
