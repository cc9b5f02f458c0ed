"""Bulk submission: a JSONL or CSV file of prompts, checked whole, then enqueued, streamed.

Each row is one job with the fields of :class:`lcm_fleet.contract.Job` (JSONL: one JSON
object per line; CSV: a header row naming the fields, empty cells mean "not given").
Defaults given by the caller fill the fields a row leaves out. A row without ``job_id``
gets ``<batch_id>-<line>``, and a row without ``seed`` a seed derived from the batch id and
its line: the batch id defaults to a digest of the file's bytes, so submitting the same file
again addresses the same jobs with the same seeds.

The file is read twice, a row at a time, so the producer's memory does not grow with the
file (docs/performance.md#bulk-files): the first pass (:func:`check_jobs_file`) checks
every row, and a bad row is reported with its line, field, value and what is allowed, and
nothing is submitted (unless the caller asks to skip invalid rows, which are then returned
as rejects: nothing is dropped silently); the second (:func:`iter_rows`) yields the rows
again for :func:`submit_stream`.

Resubmitting a file as the same batch resumes it (:func:`submit_stream`): a row whose job
is still queued or running is left alone (its record says so; the submission script's
id-in-use guard makes that atomic), a row whose result.json and images are stored and
verify (lcm_fleet/batch_manifest.py) is counted as succeeded without rendering, and every
other row is queued. So however the first submission ended (the producer killed, a worker
or S3 gone part-way), every row renders once and none is lost. When the batch ends, its
output manifest is written (by the worker whose job ended it, or here when the seal finds
every job done).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lcm_fleet.batch_manifest import NO_RESULT, StoredCheck, verify_stored, write_manifest
from lcm_fleet.broker import REDIS_TRANSIENT, BrokerUnavailable, ride_out
from lcm_fleet.contract import (
    SEED_MAX,
    Job,
    JobClass,
    JobResult,
    JobState,
    job_fields_from_text,
    parse_job,
)
from lcm_fleet.enums import TextEnum
from lcm_fleet.errors import InvalidJob, StorageError
from lcm_fleet.keys import job_prefix, jobs_root
from lcm_fleet.records import (
    LOCAL_OWNER,
    AdoptStatus,
    BatchRecord,
    BatchSummary,
    Guards,
    JobRecord,
    RecordStore,
    SubmitStatus,
)
from lcm_fleet.served import UnservedSize
from lcm_fleet.storage import ObjectStore
from producer.api import JobHandle, check_served, submit_job
from producer.api import handle as job_handle
from producer.download import result_store
from producer.errors import JobFailed, JobTimeout, SubmitError, SubmitRefused
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
#: Rows decided together: their records read in one round trip, their stored objects
#: checked in parallel (the producer holds at most this many jobs at once).
CHUNK_ROWS = 200
#: Parallel S3 reads while a resume checks what is stored.
VERIFY_THREADS = 16
_LIVE = (JobState.QUEUED, JobState.RUNNING)
#: A manifest the producer could not write is logged: the batch's jobs are all done.
_MANIFEST_ERRORS: tuple[type[BaseException], ...] = (StorageError, *REDIS_TRANSIENT)


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


@dataclass(frozen=True)
class CheckedFile:
    """A file whose every row was checked (the first pass), without its rows: the second
    pass (:func:`iter_rows`) reads them again."""

    path: Path
    kind: str
    batch_id: str
    #: sha256 of the file's bytes (the second pass must read the same file).
    sha256: str
    #: The fields given for every row (with the batch's output prefix).
    defaults: Mapping[str, Any]
    #: Rows accepted.
    rows: int
    rejected: list[RejectedRow]
    #: One accepted job of each size (width, height or None) the file asks for, with its
    #: line: what must be served before anything is queued.
    sizes: tuple[BulkRow, ...]
    output_prefix: str | None = None


class BulkSubmitError(SubmitError):
    """The broker failed part-way: ``submitted`` jobs are queued, the rest are not."""

    def __init__(self, message: str, submitted: list[JobHandle], next_line: int) -> None:
        super().__init__(message)
        self.submitted = submitted
        self.next_line = next_line


class RowOutcome(TextEnum):
    """What the submission did with one row."""

    #: Queued now.
    QUEUED = "queued"
    #: Its job was already queued or running: left alone, it renders once.
    IN_FLIGHT = "in_flight"
    #: Its images are stored and verified: counted as succeeded, not rendered again.
    STORED = "stored"


@dataclass(frozen=True)
class SubmitReport:
    """How many rows :func:`submit_stream` queued, found in flight, found stored."""

    batch_id: str | None
    queued: int
    in_flight: int
    stored: int
    #: The batch existed before (this was a resume).
    resumed: bool = False
    #: The seal found every job done: the batch ended here (its manifest was written).
    finished: bool = False
    elapsed_s: float = 0.0

    @property
    def rows(self) -> int:
        return self.queued + self.in_flight + self.stored


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
    return _batch_id(hashlib.sha256(data).hexdigest())


def _batch_id(sha256: str) -> str:
    return "b" + sha256[:12]


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in blocks (:func:`batch_id_of` of its bytes, streamed)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as e:
        raise InvalidJob(f"cannot read the jobs file {path}: {e}") from e
    return digest.hexdigest()


def row_seed(batch_id: str, line: int) -> int:
    """The seed of a row that gives none: the same for the same batch and line."""
    digest = hashlib.sha256(f"{batch_id}:{line}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (SEED_MAX + 1)


class _Hashing(io.RawIOBase):
    """A binary file read through, hashing every byte (so one read checks and digests)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.digest.update(memoryview(buffer)[:n])
        return int(n or 0)


def _jsonl_rows(text: IO[str]) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            yield number, InvalidJob(f"not valid JSON ({e.msg} at column {e.colno})")


def _csv_rows(text: IO[str]) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(text)
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


class _RowReader:
    """The rows of a file, read a line at a time; its sha256 once they are all read."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self.sha256 = ""

    def rows(self) -> Iterator[tuple[int, Any]]:
        """(line, payload or InvalidJob) of every row."""
        try:
            raw = open(self.path, "rb")  # noqa: SIM115 (closed when the generator ends)
        except OSError as e:
            raise InvalidJob(f"cannot read the jobs file {self.path}: {e}") from e
        with raw:
            hashing = _Hashing(raw)
            text = io.TextIOWrapper(
                io.BufferedReader(hashing, 1 << 16),
                encoding="utf-8-sig",
                newline="" if self.kind == "csv" else None,
            )
            try:
                yield from _jsonl_rows(text) if self.kind == "jsonl" else _csv_rows(text)
                while text.read(1 << 16):  # the rest (e.g. trailing blank lines) is hashed too
                    pass
            except UnicodeDecodeError as e:
                raise InvalidJob(f"{self.path} is not UTF-8 text ({e}); save it as UTF-8") from e
            except OSError as e:
                raise InvalidJob(f"cannot read the jobs file {self.path}: {e}") from e
            self.sha256 = hashing.digest.hexdigest()


def _own_id_pattern(batch: str, job_id: str, line: int) -> bool:
    """An explicit id that is another line's default id in this batch (``<batch>-<line>``)."""
    tail = job_id.removeprefix(f"{batch}-")
    return tail != job_id and tail.isdigit() and len(tail) == 6 and int(tail) != line


def _row_job(line: int, payload: Any, defaults: Mapping[str, Any], batch: str) -> Job | str:
    """The row's job, or why it is refused."""
    if isinstance(payload, InvalidJob):
        return str(payload)
    if not isinstance(payload, dict):
        return f"a row must be a JSON object, got {type(payload).__name__}"
    fields = {**defaults, **payload}
    fields.setdefault("job_id", f"{batch}-{line:06d}")
    fields.setdefault("seed", row_seed(batch, line))
    try:
        return parse_job(fields)
    except InvalidJob as e:
        return str(e).removeprefix("invalid job: ")


def _problems(path: Path, rejected: list[RejectedRow], total: int) -> InvalidJob:
    shown = "\n".join(f"  line {r.line}: {r.reason}" for r in rejected[:MAX_PROBLEMS_SHOWN])
    more = len(rejected) - MAX_PROBLEMS_SHOWN
    return InvalidJob(
        f"{path}: {len(rejected)} of {total} row(s) are invalid; "
        f"nothing was submitted. Fix these rows (or skip them explicitly):\n{shown}"
        + (f"\n  ... and {more} more" if more > 0 else "")
    )


def check_jobs_file(
    path: Path,
    *,
    fmt: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    batch_id: str | None = None,
    skip_invalid: bool = False,
    output_prefix: str | None = None,
) -> CheckedFile:
    """The first pass: check every row, keeping only counts, rejects and one row per size;
    raise :class:`InvalidJob` listing the bad rows (unless ``skip_invalid``).

    ``output_prefix``: where the batch's objects and manifest go (checked like the job
    field; a row may name its own).
    """
    path = Path(path)
    kind = file_format(path, fmt)
    defaults = dict(defaults or {})
    if "job_id" in defaults:
        raise InvalidJob("a default job_id would give every row the same id; set batch_id")
    if output_prefix is not None:
        try:
            output_prefix = parse_job({"prompt": "-", "output_prefix": output_prefix}).output_prefix
        except InvalidJob as e:
            raise InvalidJob(
                str(e).replace("invalid job: field 'output_prefix'", "the output prefix")
            ) from e
        defaults["output_prefix"] = output_prefix
    # The batch id names the rows' job ids: a digest of the file first, unless it is given.
    batch = batch_id or _batch_id(file_sha256(path))
    rejected: list[RejectedRow] = []
    accepted = 0
    #: Explicit job ids and their first line (default ids are unique by their line).
    first_line_of: dict[str, int] = {}
    sizes: dict[tuple[int, int] | None, BulkRow] = {}
    reader = _RowReader(path, kind)
    for line, payload in reader.rows():
        job = _row_job(line, payload, defaults, batch)
        if isinstance(job, str):
            rejected.append(RejectedRow(line, job))
        elif job.job_id != f"{batch}-{line:06d}" and (
            job.job_id in first_line_of or _own_id_pattern(batch, job.job_id, line)
        ):
            where = first_line_of.get(job.job_id)
            rejected.append(
                RejectedRow(
                    line,
                    f"field 'job_id' got {job.job_id!r}, already used on line {where}; job ids "
                    "must be unique in a batch"
                    if where is not None
                    else f"field 'job_id' got {job.job_id!r}, the default id of another line "
                    f"of batch {batch}; choose an id not of the form {batch}-<line>",
                )
            )
        else:
            if job.job_id != f"{batch}-{line:06d}":
                first_line_of[job.job_id] = line
            accepted += 1
            size = None if job.width is None or job.height is None else (job.width, job.height)
            sizes.setdefault(size, BulkRow(line, job))
        if accepted + len(rejected) > MAX_ROWS:
            raise InvalidJob(
                f"{path} has more than {MAX_ROWS} rows; split it into files of at most "
                f"{MAX_ROWS} rows"
            )
    if rejected and not skip_invalid:
        raise _problems(path, rejected, accepted + len(rejected))
    if not accepted and not rejected:
        raise InvalidJob(f"{path} holds no rows; expected one job per line ({kind})")
    return CheckedFile(
        path, kind, batch, reader.sha256, dict(defaults), accepted, rejected, tuple(sizes.values()),
        output_prefix,
    )  # fmt: skip


def iter_rows(checked: CheckedFile, from_line: int = 1) -> Iterator[BulkRow]:
    """The second pass: the accepted rows again, a line at a time; InvalidJob when the
    file changed since it was checked."""
    rejected = {r.line for r in checked.rejected}
    reader = _RowReader(checked.path, checked.kind)
    for line, payload in reader.rows():
        if line in rejected:
            continue
        job = _row_job(line, payload, checked.defaults, checked.batch_id)
        if isinstance(job, str):
            raise InvalidJob(
                f"{checked.path} changed since it was checked: line {line} is now invalid "
                f"({job}); the rows before it are submitted"
            )
        if line >= from_line:
            yield BulkRow(line, job)
    if reader.sha256 != checked.sha256:
        raise InvalidJob(
            f"{checked.path} changed while it was submitted (its sha256 differs); check the "
            "file and submit it again: rows already queued are not queued twice"
        )


def read_jobs_file(
    path: Path,
    *,
    fmt: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    batch_id: str | None = None,
    skip_invalid: bool = False,
    output_prefix: str | None = None,
) -> BulkFile:
    """Read and validate every row; raise :class:`InvalidJob` listing the bad ones.

    With ``skip_invalid`` bad rows come back in ``BulkFile.rejected`` instead. This holds
    every row; :func:`check_jobs_file` and :func:`iter_rows` stream them.
    """
    checked = check_jobs_file(
        path,
        fmt=fmt,
        defaults=defaults,
        batch_id=batch_id,
        skip_invalid=skip_invalid,
        output_prefix=output_prefix,
    )
    return BulkFile(checked.path, checked.batch_id, list(iter_rows(checked)), checked.rejected)


def _chunks(rows: Iterable[BulkRow], size: int) -> Iterator[list[BulkRow]]:
    chunk: list[BulkRow] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _patient(settings: ProducerSettings, fn: Callable[[], Any], what: str) -> Any:
    """A batch record call through a Redis outage (BrokerUnavailable after the budget)."""
    url = str(getattr(settings, "records_url", ""))
    return ride_out(fn, url=url, what=what, budget_s=BATCH_RECORD_BUDGET_S)


def open_batch(
    records: RecordStore,
    settings: ProducerSettings,
    batch_id: str,
    *,
    owner: str,
    webhook_url: str | None,
    source: str | None,
    output_prefix: str | None,
    new_batch: bool = False,
) -> bool:
    """Create the batch record, or reopen the existing one (a resume); True for a resume.

    ``new_batch``: start afresh even when the batch exists (its old jobs no longer count).
    """
    existing: BatchRecord | None = None
    if not new_batch:
        existing = _patient(settings, lambda: records.get_batch(batch_id), "reading the batch")
    if existing is None:
        _patient(
            settings,
            lambda: records.create_batch(
                batch_id, owner, webhook_url=webhook_url, source=source, output_prefix=output_prefix
            ),
            f"creating batch {batch_id}",
        )
        return False
    if existing.owner != owner:
        raise InvalidJob(f"batch id {batch_id!r} is another owner's batch; choose another id")
    if existing.output_prefix != output_prefix:
        raise InvalidJob(
            f"batch {batch_id} was submitted with output prefix {existing.output_prefix!r}, "
            f"not {output_prefix!r}: resume it with the same --output-prefix, or give a new "
            "--batch-id"
        )
    _patient(settings, lambda: records.reopen_batch(batch_id), f"reopening batch {batch_id}")
    return True


def submit_stream(
    rows: Iterable[BulkRow],
    settings: ProducerSettings | None = None,
    *,
    queue: str | None = None,
    batch_id: str | None = None,
    owner: str = LOCAL_OWNER,
    webhook_url: str | None = None,
    source: str | None = None,
    output_prefix: str | None = None,
    new_batch: bool = False,
    on_row: Callable[[BulkRow, RowOutcome, JobHandle | None], None] | None = None,
    store: ObjectStore | None = None,
) -> SubmitReport:
    """Enqueue the rows in order, holding at most :data:`CHUNK_ROWS` of them at once.

    With ``batch_id`` the jobs count in that batch record (created, or reopened: a resume).
    On a resume each row is first looked up: queued or running, left alone; stored and
    verified, counted as succeeded (``store``: the results bucket, default the settings');
    else queued. A new batch queues every row. The batch is sealed once every row is
    through; if that ended it, its manifest is written here. Without ``batch_id`` every row
    is queued.

    If the broker (or, on a resume, S3) stays unreachable, :class:`BulkSubmitError` says
    how many were queued and the line to resume from.
    """
    settings = settings or ProducerSettings()
    started = time.perf_counter()
    records = cached_records(settings) if batch_id is not None else None
    resumed = False
    if records is not None and batch_id is not None:
        resumed = open_batch(
            records,
            settings,
            batch_id,
            owner=owner,
            webhook_url=webhook_url,
            source=source,
            output_prefix=output_prefix,
            new_batch=new_batch,
        )
        # A resume looks up what its rows stored; a new batch has stored nothing (its ids are
        # its own: at worst, the same file after its records expired renders again over its
        # own objects), so it needs no S3 round trip.
        if resumed:
            store = store or result_store(settings)
    prefix = settings.s3_prefix if store is not None else ""
    counts = dict.fromkeys(RowOutcome, 0)
    done = 0
    with ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="lcm-verify") as pool:
        for chunk in _chunks(rows, CHUNK_ROWS):
            decided = _decide(chunk, records, store, pool, prefix, batch_id)
            for row, (record, stored) in zip(chunk, decided, strict=True):
                outcome, made = _submit_row(
                    row, record, stored, records, settings, queue, batch_id, owner,
                    webhook_url, done,
                )  # fmt: skip
                counts[outcome] += 1
                done += 1
                if on_row is not None:
                    on_row(row, outcome, made)
    finished = False
    if records is not None and batch_id is not None:
        try:
            finished = bool(
                _patient(settings, lambda: records.seal_batch(batch_id), f"sealing {batch_id}")
            )
        except BrokerUnavailable as e:
            raise BrokerUnavailable(
                f"all {done} row(s) of batch {batch_id} are queued or stored, but the batch "
                f"could not be sealed: {e}; its jobs run regardless (follow them with `lcm "
                f"status JOB_ID`), and resubmitting the file seals it"
            ) from e
        if finished and store is not None:
            try:
                write_manifest(records, store, settings.s3_prefix, batch_id)
            except _MANIFEST_ERRORS as e:
                logger.warning("batch %s ended, but its manifest was not written: %s", batch_id, e)
    report = SubmitReport(
        batch_id,
        counts[RowOutcome.QUEUED],
        counts[RowOutcome.IN_FLIGHT],
        counts[RowOutcome.STORED],
        resumed,
        finished,
        time.perf_counter() - started,
    )
    logger.info(
        "batch %s: %d row(s) queued, %d in flight, %d stored, in %.2fs",
        batch_id,
        report.queued,
        report.in_flight,
        report.stored,
        report.elapsed_s,
    )
    return report


def _listed(
    chunk: list[BulkRow], store: ObjectStore, s3_prefix: str, batch_id: str | None
) -> set[str] | None:
    """The job folders stored for a chunk of rows with default ids (``<batch>-<line>``,
    consecutive in key order under one output prefix), in one listing instead of a read per
    row; None for any other chunk. A folder not listed has nothing stored."""
    prefixes = {row.job.output_prefix for row in chunk}
    ids = [row.job.job_id for row in chunk]
    if batch_id is None or len(prefixes) != 1 or ids != [f"{batch_id}-{r.line:06d}" for r in chunk]:
        return None
    return store.folders_between(jobs_root(s3_prefix, prefixes.pop()), ids[0][:-1], ids[-1])


def _decide(
    chunk: list[BulkRow],
    records: RecordStore | None,
    store: ObjectStore | None,
    pool: ThreadPoolExecutor,
    s3_prefix: str,
    batch_id: str | None = None,
) -> list[tuple[JobRecord | None, StoredCheck | None]]:
    """Each row's record (one round trip) and, unless its job is in flight, what is stored."""
    if records is None or store is None:
        return [(None, None)] * len(chunk)
    found = records.get_jobs([row.job.job_id for row in chunk])
    try:
        listed = _listed(chunk, store, s3_prefix, batch_id)
    except StorageError as e:
        raise BulkSubmitError(
            f"cannot list what is stored for lines {chunk[0].line}-{chunk[-1].line}: {e}. The "
            "rows before them are queued or stored; resubmit the file once S3 answers "
            "(nothing is queued twice)",
            [],
            chunk[0].line,
        ) from e

    def check(pair: tuple[BulkRow, JobRecord | None]) -> StoredCheck | None:
        row, record = pair
        if record is not None and record.state in _LIVE:
            return None
        folder = job_prefix(s3_prefix, row.job.job_id, row.job.output_prefix)
        if listed is not None and folder not in listed:
            return StoredCheck(None, NO_RESULT)
        try:
            return verify_stored(store, s3_prefix, row.job)
        except StorageError as e:
            raise BulkSubmitError(
                f"cannot check what is stored for line {row.line} (job {row.job.job_id}): "
                f"{e}. The rows before it are queued or stored; resubmit the file once S3 "
                "answers (nothing is queued twice)",
                [],
                row.line,
            ) from e

    return list(zip(found, pool.map(check, zip(chunk, found, strict=True)), strict=True))


def _submit_row(
    row: BulkRow,
    record: JobRecord | None,
    stored: StoredCheck | None,
    records: RecordStore | None,
    settings: ProducerSettings,
    queue: str | None,
    batch_id: str | None,
    owner: str,
    webhook_url: str | None,
    done: int,
) -> tuple[RowOutcome, JobHandle | None]:
    job = row.job
    if record is not None and record.state in _LIVE:
        return RowOutcome.IN_FLIGHT, None
    if stored is not None and stored.result is not None and records is not None and batch_id:
        status = records.adopt_stored(job, owner, batch_id, stored.result, row=row.line)
        if status is AdoptStatus.IN_FLIGHT:
            return RowOutcome.IN_FLIGHT, None
        return RowOutcome.STORED, None
    try:
        made = submit_job(
            job,
            settings=settings,
            queue=queue,
            owner=owner,
            batch_id=batch_id,
            webhook_url=None,
            guards=Guards(refuse_used_id=True) if batch_id else None,
            row=row.line,
            # Bulk work; the sizes of the whole file were checked before its first row.
            job_class=JobClass.BULK,
            served_checked=True,
        )
    except SubmitRefused as e:
        if e.outcome.status is SubmitStatus.ID_IN_USE and e.outcome.detail == "own":
            return RowOutcome.IN_FLIGHT, None  # queued meanwhile (another submission of it)
        raise BulkSubmitError(
            f"line {row.line} (job {job.job_id}) was refused: {e}; job ids of another owner's "
            f"jobs cannot be reused. {done} row(s) before it are through",
            [],
            row.line,
        ) from e
    except UnservedSize as e:  # the last worker of its size stopped meanwhile
        raise BulkSubmitError(
            f"{done} row(s) were through before line {row.line} (job {job.job_id}) was "
            f"refused: {e}. Resubmit from line {row.line}",
            [],
            row.line,
        ) from e
    except SubmitError as e:
        raise BulkSubmitError(
            f"{done} row(s) were through before the broker failed at line {row.line} (job "
            f"{job.job_id}): {e}. Resubmit from line {row.line} once Redis answers; the "
            "queued jobs keep their ids",
            [],
            row.line,
        ) from e
    return RowOutcome.QUEUED, made


def submit_rows(
    rows: list[BulkRow],
    settings: ProducerSettings | None = None,
    *,
    queue: str | None = None,
    on_submitted: Callable[[BulkRow, JobHandle], None] | None = None,
    batch_id: str | None = None,
    new_batch: bool = False,
    owner: str = LOCAL_OWNER,
    webhook_url: str | None = None,
    source: str | None = None,
    output_prefix: str | None = None,
) -> list[JobHandle]:
    """Enqueue the rows in order (see :func:`submit_stream`), every row's size checked as
    served first; the handles of every row (queued, in flight or stored), in order.

    If the broker stays unreachable, :class:`BulkSubmitError` says how many were queued
    (``submitted``) and the line to resume from.
    """
    settings = settings or ProducerSettings()
    try:  # every row's size is served, or nothing is queued
        check_served([row.job for row in rows], settings, queue, JobClass.BULK)
    except UnservedSize as e:
        raise InvalidJob(f"line {rows[e.index].line}: {e}; nothing was submitted") from e
    handles: list[JobHandle] = []

    def collect(row: BulkRow, outcome: RowOutcome, made: JobHandle | None) -> None:
        h = made if made is not None else job_handle(row.job.job_id, settings)
        handles.append(h)
        if on_submitted is not None:
            on_submitted(row, h)

    try:
        submit_stream(
            rows,
            settings,
            queue=queue,
            batch_id=batch_id,
            owner=owner,
            webhook_url=webhook_url,
            source=source,
            output_prefix=output_prefix,
            new_batch=new_batch,
            on_row=collect,
        )
    except BulkSubmitError as e:
        raise BulkSubmitError(
            f"{len(handles)} of {len(rows)} job(s) were queued before line {e.next_line}: {e}",
            handles,
            e.next_line,
        ) from e
    return handles


def check_sizes(checked: CheckedFile, settings: ProducerSettings, queue: str | None) -> None:
    """Every size the file asks for is served, or nothing is queued."""
    try:
        check_served([row.job for row in checked.sizes], settings, queue, JobClass.BULK)
    except UnservedSize as e:
        raise InvalidJob(f"line {checked.sizes[e.index].line}: {e}; nothing was submitted") from e


def submit_file(
    path: Path,
    settings: ProducerSettings | None = None,
    *,
    queue: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    batch_id: str | None = None,
    output_prefix: str | None = None,
    owner: str = LOCAL_OWNER,
    webhook_url: str | None = None,
    on_row: Callable[[BulkRow, RowOutcome, JobHandle | None], None] | None = None,
) -> SubmitReport:
    """Check the whole file, then stream every row into its batch (a resubmitted file
    resumes it); the Python API of ``lcm submit-file``."""
    settings = settings or ProducerSettings()
    checked = check_jobs_file(
        path, defaults=defaults, batch_id=batch_id, output_prefix=output_prefix
    )
    check_sizes(checked, settings, queue)
    return submit_stream(
        iter_rows(checked),
        settings,
        queue=queue,
        batch_id=checked.batch_id,
        owner=owner,
        webhook_url=webhook_url,
        source=str(path),
        output_prefix=checked.output_prefix,
        on_row=on_row,
    )


def wait_batch(
    records: RecordStore,
    batch_id: str,
    timeout_s: float,
    *,
    url: str = "",
    poll_s: float = 0.5,
    manifest_grace_s: float = 10.0,
) -> BatchRecord | None:
    """Wait for the batch to end and its summary (the manifest) to be written, at most
    ``manifest_grace_s`` after its end; the last record read (not finished after
    ``timeout_s``). Redis away past the deadline: BrokerUnavailable naming ``url``."""
    deadline = time.monotonic() + timeout_s
    ended_at: float | None = None
    while True:
        record = ride_out(
            lambda: records.get_batch(batch_id),
            url=url,
            what=f"reading batch {batch_id}",
            budget_s=max(1.0, deadline - time.monotonic()),
        )
        now = time.monotonic()
        if record is None:
            return None
        if record.finished:
            if record.summary is not None:
                return record
            ended_at = ended_at or now
            if now - ended_at >= manifest_grace_s:
                return record
        elif now >= deadline:
            return record
        time.sleep(poll_s)


def batch_jobs(records: RecordStore, batch_id: str, page: int = 500) -> Iterator[JobRecord]:
    """Every job record of a batch, a page at a time (each job once)."""
    seen: set[str] = set()
    offset = 0
    while ids := records.batch_job_ids(batch_id, offset, page):
        fresh = [i for i in dict.fromkeys(ids) if i not in seen]
        seen.update(fresh)
        for record in records.get_jobs(fresh):
            if record is not None:
                yield record
        offset += len(ids)


def describe_summary(summary: BatchSummary) -> str:
    c = summary.counts
    return (
        f"{summary.rows} row(s): {c.succeeded} succeeded ({summary.images} image(s)), "
        f"{c.failed} failed, {c.canceled} canceled, {c.queued + c.running} unfinished; "
        f"{summary.wall_s:.1f}s from the first submit, {summary.images_per_s:.2f} images/s; "
        f"manifest {summary.manifest_key}"
    )


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
    "CheckedFile",
    "RejectedRow",
    "RowOutcome",
    "SubmitReport",
    "check_jobs_file",
    "iter_rows",
    "read_jobs_file",
    "submit_file",
    "submit_rows",
    "submit_stream",
    "wait_all",
    "wait_batch",
]
