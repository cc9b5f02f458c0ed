"""Bulk submission: a JSONL or CSV file of prompts, validated whole, then enqueued.

Each row is one job with the fields of :class:`lcm_fleet.contract.Job` (JSONL: one JSON
object per line; CSV: a header row naming the fields, empty cells mean "not given").
Defaults given by the caller fill the fields a row leaves out. A row without ``job_id``
gets ``<batch_id>-<line>``: the batch id defaults to a digest of the file's bytes, so
submitting the same file again addresses the same jobs (their objects are overwritten,
never duplicated) and a batch interrupted by a broker outage can be resumed from the line
the error names.

The whole file is checked before anything is queued: a bad row is reported with its line,
field, value and what is allowed, and nothing is submitted, unless the caller asks to
skip invalid rows, in which case they are returned as rejects (nothing is dropped silently).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcm_fleet.broker import BrokerUnavailable, ride_out
from lcm_fleet.contract import Job, JobClass, JobResult, job_fields_from_text, parse_job
from lcm_fleet.errors import InvalidJob
from lcm_fleet.records import LOCAL_OWNER
from lcm_fleet.served import UnservedSize
from producer.api import JobHandle, check_served, submit_job
from producer.errors import JobFailed, JobTimeout, SubmitError
from producer.queue import cached_records
from producer.settings import ProducerSettings

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
#: Problems listed in one error message; the count of the rest follows.
MAX_PROBLEMS_SHOWN = 20
#: Rows in one file (a job holds up to 8 images; larger batches are split by the caller).
MAX_ROWS = 100_000
#: How long creating, reading or sealing a batch record rides out a Redis outage.
BATCH_RECORD_BUDGET_S = 30.0


@dataclass(frozen=True)
class BulkRow:
    """One accepted row: its 1-based line in the file and its validated job."""

    line: int
    job: Job


@dataclass(frozen=True)
class RejectedRow:
    line: int
    reason: str


@dataclass(frozen=True)
class BulkFile:
    """A checked file: the accepted rows in file order and the rejected ones."""

    path: Path
    batch_id: str
    rows: list[BulkRow]
    rejected: list[RejectedRow] = field(default_factory=list)


class BulkSubmitError(SubmitError):
    """The broker failed part-way: ``submitted`` jobs are queued, the rest are not."""

    def __init__(self, message: str, submitted: list[JobHandle], next_line: int) -> None:
        super().__init__(message)
        self.submitted = submitted
        self.next_line = next_line


def file_format(path: Path, fmt: str | None = None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise InvalidJob(f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}")
        return fmt
    found = _SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise InvalidJob(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; name the file "
            f"*.jsonl or *.csv, or give the format ({', '.join(FORMATS)})"
        )
    return found


def batch_id_of(data: bytes) -> str:
    """The default batch id: the start of the file's sha256 (same file, same job ids)."""
    return "b" + hashlib.sha256(data).hexdigest()[:12]


def _jsonl_rows(text: str) -> Iterable[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            yield number, InvalidJob(f"not valid JSON ({e.msg} at column {e.colno})")


def _csv_rows(text: str) -> Iterable[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        return
    names = [name.strip() for name in reader.fieldnames]
    unknown = [name for name in names if name not in Job.model_fields]
    if unknown:
        raise InvalidJob(
            f"CSV header names column(s) {', '.join(repr(n) for n in unknown)} that are not "
            f"job fields; the header may name: {', '.join(Job.model_fields)}"
        )
    reader.fieldnames = names
    for record in reader:
        # reader.line_num is the physical line where this record ends.
        extra = record.pop(None, None)
        if extra:
            yield (
                reader.line_num,
                InvalidJob(
                    f"{len(extra)} more cell(s) than the header's {len(names)} columns: {extra!r}"
                ),
            )
            continue
        cells = {k: v.strip() for k, v in record.items() if v and v.strip()}
        yield reader.line_num, job_fields_from_text(cells)


def read_jobs_file(
    path: Path,
    *,
    fmt: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    batch_id: str | None = None,
    skip_invalid: bool = False,
) -> BulkFile:
    """Read and validate every row; raise :class:`InvalidJob` listing the bad ones.

    With ``skip_invalid`` bad rows come back in ``BulkFile.rejected`` instead.
    """
    path = Path(path)
    kind = file_format(path, fmt)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidJob(f"cannot read the jobs file {path}: {e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidJob(f"{path} is not UTF-8 text ({e}); save it as UTF-8") from e
    batch = batch_id or batch_id_of(data)
    defaults = dict(defaults or {})
    if "job_id" in defaults:
        raise InvalidJob("a default job_id would give every row the same id; set batch_id")

    rows: list[BulkRow] = []
    rejected: list[RejectedRow] = []
    first_line_of: dict[str, int] = {}
    parsed = _jsonl_rows(text) if kind == "jsonl" else _csv_rows(text)
    for line, payload in parsed:
        if isinstance(payload, InvalidJob):
            rejected.append(RejectedRow(line, str(payload)))
            continue
        if not isinstance(payload, dict):
            rejected.append(
                RejectedRow(line, f"a row must be a JSON object, got {type(payload).__name__}")
            )
            continue
        fields = {**defaults, **payload}
        fields.setdefault("job_id", f"{batch}-{line:06d}")
        try:
            job = parse_job(fields)
        except InvalidJob as e:
            rejected.append(RejectedRow(line, str(e).removeprefix("invalid job: ")))
            continue
        if job.job_id in first_line_of:
            rejected.append(
                RejectedRow(
                    line,
                    f"field 'job_id' got {job.job_id!r}, already used on line "
                    f"{first_line_of[job.job_id]}; job ids must be unique in a batch",
                )
            )
            continue
        first_line_of[job.job_id] = line
        rows.append(BulkRow(line, job))
        if len(rows) + len(rejected) > MAX_ROWS:
            raise InvalidJob(
                f"{path} has more than {MAX_ROWS} rows; split it into files of at most "
                f"{MAX_ROWS} rows"
            )
    if rejected and not skip_invalid:
        shown = "\n".join(f"  line {r.line}: {r.reason}" for r in rejected[:MAX_PROBLEMS_SHOWN])
        more = len(rejected) - MAX_PROBLEMS_SHOWN
        raise InvalidJob(
            f"{path}: {len(rejected)} of {len(rows) + len(rejected)} row(s) are invalid; "
            f"nothing was submitted. Fix these rows (or skip them explicitly):\n{shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    if not rows and not rejected:
        raise InvalidJob(f"{path} holds no rows; expected one job per line ({kind})")
    return BulkFile(path, batch, rows, rejected)


def submit_rows(
    rows: list[BulkRow],
    settings: ProducerSettings | None = None,
    *,
    queue: str | None = None,
    on_submitted: Callable[[BulkRow, JobHandle], None] | None = None,
    batch_id: str | None = None,
    new_batch: bool = True,
    owner: str = LOCAL_OWNER,
    webhook_url: str | None = None,
    source: str | None = None,
) -> list[JobHandle]:
    """Enqueue the rows in order; each publish has the producer's bounded backoff.

    With ``batch_id`` the jobs count in that batch record: a new one (``new_batch``, or
    when none exists), or the existing one when resuming; it is sealed once every row
    is queued.

    If the broker stays unreachable, :class:`BulkSubmitError` says how many were queued
    and the line to resume from.
    """
    settings = settings or ProducerSettings()
    try:  # every row's size is served, or nothing is queued
        check_served([row.job for row in rows], settings, queue, JobClass.BULK)
    except UnservedSize as e:
        raise InvalidJob(f"line {rows[e.index].line}: {e}; nothing was submitted") from e
    handles: list[JobHandle] = []
    started = time.perf_counter()
    records = cached_records(settings) if batch_id is not None else None

    def patient(fn: Callable[[], Any], what: str) -> Any:
        """A batch record call through a Redis outage (BrokerUnavailable after the budget)."""
        url = str(getattr(settings, "records_url", ""))
        return ride_out(fn, url=url, what=what, budget_s=BATCH_RECORD_BUDGET_S)

    if (
        records is not None
        and batch_id is not None
        and (new_batch or patient(lambda: records.get_batch(batch_id), "reading the batch") is None)
    ):
        patient(
            lambda: records.create_batch(batch_id, owner, webhook_url=webhook_url, source=source),
            f"creating batch {batch_id}",
        )
    for row in rows:
        try:
            handle = submit_job(
                row.job,
                settings=settings,
                queue=queue,
                owner=owner,
                batch_id=batch_id,
                job_class=JobClass.BULK,
                served_checked=True,
            )
        except SubmitError as e:
            raise BulkSubmitError(
                f"{len(handles)} of {len(rows)} job(s) were queued before the broker failed "
                f"at line {row.line} (job {row.job.job_id}): {e}. Resubmit from line "
                f"{row.line} once Redis answers; the queued jobs keep their ids",
                handles,
                row.line,
            ) from e
        handles.append(handle)
        if on_submitted is not None:
            on_submitted(row, handle)
    if records is not None and batch_id is not None:
        try:
            patient(lambda: records.seal_batch(batch_id), f"sealing batch {batch_id}")
        except BrokerUnavailable as e:
            raise BrokerUnavailable(
                f"all {len(handles)} job(s) of batch {batch_id} are queued, but the batch "
                f"could not be sealed: {e}; its jobs run regardless (follow them with `lcm "
                f"status JOB_ID`), and resubmitting the file with --from-line "
                f"{rows[-1].line + 1 if rows else 1} seals it"
            ) from e
    logger.info("submitted %d job(s) in %.2fs", len(handles), time.perf_counter() - started)
    return handles


def submit_file(
    path: Path,
    settings: ProducerSettings | None = None,
    *,
    queue: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    batch_id: str | None = None,
) -> list[JobHandle]:
    """Check the whole file, then enqueue every row; the Python API of ``lcm submit-file``."""
    bulk = read_jobs_file(path, defaults=defaults, batch_id=batch_id)
    return submit_rows(bulk.rows, settings, queue=queue, batch_id=bulk.batch_id, source=str(path))


@dataclass(frozen=True)
class BatchOutcome:
    """Results of a waited-for batch: one entry per job id, in submission order."""

    results: dict[str, JobResult]
    failed: dict[str, str]
    unfinished: list[str]
    #: Why waiting stopped early (Redis away past the deadline), or None.
    broker_lost: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unfinished


def wait_all(handles: list[JobHandle], timeout_s: float, poll_s: float = 0.25) -> BatchOutcome:
    """Wait for every job within one overall deadline; failures are collected, not raised."""
    deadline = time.monotonic() + timeout_s
    results: dict[str, JobResult] = {}
    failed: dict[str, str] = {}
    unfinished: list[str] = []
    lost: str | None = None
    for handle in handles:
        if lost is not None:
            unfinished.append(handle.job_id)
            continue
        remaining = max(0.0, deadline - time.monotonic())
        try:
            results[handle.job_id] = handle.wait(timeout_s=remaining, poll_s=poll_s)
        except JobFailed as e:
            failed[handle.job_id] = e.reason
        except JobTimeout:
            unfinished.append(handle.job_id)
        except BrokerUnavailable as e:  # Redis away past the deadline: stop waiting
            lost = str(e)
            unfinished.append(handle.job_id)
    return BatchOutcome(results, failed, unfinished, lost)


__all__ = [
    "BatchOutcome",
    "BulkFile",
    "BulkRow",
    "BulkSubmitError",
    "RejectedRow",
    "read_jobs_file",
    "submit_file",
    "submit_rows",
    "wait_all",
]
