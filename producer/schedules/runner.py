"""Runs of a schedule: which slots are due, claiming each once, and queueing its batch.

:meth:`Runner.run_due` is what the beat's task calls when a schedule fires:

1. read the schedule (gone or paused: nothing to do);
2. take over its runs that no process is expanding (a scheduler died mid-run, a run-now
   nobody picked up) once their lease lapsed;
3. work out the due slots since the last claimed one (``missed: skip``: the latest only;
   ``catch_up``: up to ``catch_up_max`` of the latest, oldest first);
4. claim each (producer/schedules/store.py: once per (schedule, slot)) and expand the ones
   this call claimed: read the prompt source, apply the template and the job defaults, and
   queue every row as a bulk job of the batch ``<name>.<slot>`` through producer.bulk.

Each run is a normal batch (record, progress, cancel, webhooks). Its jobs are
``<batch>-<line>`` (a row's own job_id is not used: every run needs ids of its own), so a run
taken over after a crash queues the same ids into the same batch again.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lcm_fleet.contract import Job, parse_job
from lcm_fleet.errors import InvalidJob, LcmError, StorageError
from lcm_fleet.schedules import (
    UTC,
    RunState,
    RunTrigger,
    Schedule,
    ScheduleRun,
    parse_slot,
    slot_id,
)
from lcm_fleet.storage import ObjectStore
from producer.bulk import (
    MAX_PROBLEMS_SHOWN,
    BulkRow,
    CheckedFile,
    check_jobs_file,
    check_sizes,
    iter_rows,
    submit_stream,
)
from producer.errors import ProducerError
from producer.schedules.store import ClaimOutcome, ScheduleStore
from producer.settings import ProducerSettings

logger = logging.getLogger(__name__)

#: Lease of a run being expanded; extended while its jobs are queued.
LEASE_S_DEFAULT = 60.0


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class RunReport:
    """What one call did: runs it expanded (by trigger), slots it skipped, runs that failed."""

    schedule: str
    expanded: list[ScheduleRun] = field(default_factory=list)
    #: Due slots left behind by the missed-run policy (counted by the call that claimed).
    skipped: int = 0
    #: Slots another process had claimed already.
    already_claimed: int = 0
    paused: bool = False
    missing: bool = False

    @property
    def failed(self) -> list[ScheduleRun]:
        return [r for r in self.expanded if r.state is RunState.FAILED]


@dataclass(frozen=True)
class SourceRows:
    """A schedule's source for one slot, checked whole; :meth:`rows` streams it again."""

    schedule: Schedule
    slot: datetime
    checked: CheckedFile

    def _templated(self, row: BulkRow) -> Job:
        fields = row.job.model_dump()
        fields["prompt"] = self.schedule.prompt_for(row.job.prompt, self.slot)
        # The run's own ids (a file's explicit ids would be the same in every run).
        fields["job_id"] = f"{self.checked.batch_id}-{row.line:06d}"
        return parse_job(fields)

    def rows(self) -> Iterator[BulkRow]:
        """The source's rows as this slot's jobs, a line at a time."""
        for row in iter_rows(self.checked):
            yield BulkRow(row.line, self._templated(row))


@contextmanager
def source_rows(
    schedule: Schedule, slot: datetime, settings: ProducerSettings, batch_id: str
) -> Iterator[SourceRows]:
    """The schedule's source for ``slot`` (an ``s3://`` one copied to a temporary file),
    streamed: every row checked by the job contract, then checked again once templated;
    InvalidJob naming the lines (nothing is queued then). No pass holds the rows."""
    with tempfile.TemporaryDirectory(prefix="lcm-schedule-") as tmp:
        path = _local_copy(schedule.source, settings, Path(tmp))
        checked = check_jobs_file(
            path,
            defaults=schedule.defaults.given(),
            batch_id=batch_id,
            output_prefix=schedule.prefix_for(slot),
        )
        source = SourceRows(schedule, slot, checked)
        problems: list[str] = []
        count = 0
        for row in iter_rows(checked):
            try:
                source._templated(row)
            except InvalidJob as e:
                count += 1
                if len(problems) < MAX_PROBLEMS_SHOWN:
                    problems.append(f"line {row.line}: {str(e).removeprefix('invalid job: ')}")
        if count:
            raise InvalidJob(
                f"{schedule.source}: {count} row(s) are invalid once templated for slot "
                f"{slot_id(slot)}; nothing was queued: {'; '.join(problems)}"
            )
        yield source


def _local_copy(source: str, settings: ProducerSettings, tmp: Path) -> Path:
    if not source.startswith("s3://"):
        return Path(source)
    bucket, _, key = source.removeprefix("s3://").partition("/")
    store = ObjectStore(ObjectStore.from_settings(settings).client, bucket)
    dest = tmp / Path(key).name
    try:
        store.download_file(key, dest)
    except StorageError as e:
        raise InvalidJob(f"cannot read the prompt source {source}: {e}") from e
    return dest


class Runner:
    """Claims and expands the runs of schedules; one per lcm-scheduler process (or CLI)."""

    def __init__(
        self,
        store: ScheduleStore,
        settings: ProducerSettings,
        *,
        lease_s: float = LEASE_S_DEFAULT,
        worker: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.lease_s = lease_s
        self.worker = worker or process_name()

    def run_due(self, name: str, now: datetime | None = None) -> RunReport:
        """Claim and expand the due runs of ``name`` (the beat task's body)."""
        at = now or datetime.now(UTC)
        # 1. the schedule
        schedule = self.store.get(name)
        if schedule is None:
            logger.warning("schedule %s fired but no longer exists; nothing to run", name)
            return RunReport(name, missing=True)
        if not schedule.enabled:
            return RunReport(name, paused=True)
        # 2. runs nobody is expanding
        expanded = self.resume_stalled(schedule, at)
        # 3. the due slots
        state = self.store.state(name)
        after = datetime.fromtimestamp(state.last_slot if state else at.timestamp(), UTC)
        due = schedule.clock.due(after, at, schedule.run_limit)
        # 4. claim, oldest first, and expand what this call claimed
        skipped, taken = 0, 0
        for index, slot in enumerate(due.slots):
            latest = index == len(due.slots) - 1
            trigger = RunTrigger.CRON if latest and _on_time(slot, at) else RunTrigger.CATCH_UP
            left = due.skipped if index == 0 else 0
            outcome = self.store.claim(
                schedule,
                slot,
                trigger,
                worker=self.worker,
                lease_s=self.lease_s,
                skipped_before=left,
                now=at.timestamp(),
            )
            if outcome is not ClaimOutcome.CLAIMED:
                taken += 1
                continue
            skipped += left
            if left:
                logger.warning(
                    "schedule %s: %s%d missed slot(s) before %s skipped (missed: %s)",
                    name,
                    "at least " if due.skipped_capped else "",
                    left,
                    slot_id(slot),
                    schedule.missed,
                )
            run = self.store.run(name, slot_id(slot))
            if run is not None:
                expanded.append(self.expand(schedule, run, new_batch=True))
        return RunReport(name, expanded, skipped=skipped, already_claimed=taken)

    def resume_stalled(self, schedule: Schedule, now: datetime) -> list[ScheduleRun]:
        out = []
        for run in self.store.stalled(schedule.name, now.timestamp()):
            resumed = self.resume(schedule.name, run.slot, now)
            if resumed is not None:
                out.append(resumed)
        return out

    def sweep(self, now: datetime | None = None) -> list[RunReport]:
        """Take over the stalled runs of every schedule (what the beat's sweep entry runs)."""
        at = now or datetime.now(UTC)
        reports = []
        for name in self.store.names():
            schedule = self.store.get(name)
            if schedule is not None:
                resumed = self.resume_stalled(schedule, at)
                if resumed:
                    reports.append(RunReport(name, resumed))
        return reports

    def resume(self, name: str, slot: str, now: datetime | None = None) -> ScheduleRun | None:
        """Expand a PENDING run, or one whose expander's lease lapsed (None: not ours)."""
        at = (now or datetime.now(UTC)).timestamp()
        schedule = self.store.get(name)
        if schedule is None or not self.store.take(name, slot, self.worker, self.lease_s, at):
            return None
        run = self.store.run(name, slot)
        if run is None:
            return None
        logger.info("schedule %s: expanding run %s (%s, taken over)", name, slot, run.trigger)
        # A lapsed run may have created its batch and queued part of it: keep that batch
        # (submit_rows creates it if there is none yet).
        return self.expand(schedule, run, new_batch=False)

    def run_now(self, name: str, owner: str, *, expand: bool = True) -> ScheduleRun | None:
        """A manual run of ``name`` at this second (the slot is now's UTC time): expanded here,
        or left PENDING for a scheduler (``expand`` False). None: no such schedule."""
        schedule = self.store.get(name, owner)
        if schedule is None:
            return None
        slot = parse_slot(slot_id(datetime.now(UTC)))
        outcome = self.store.claim(
            schedule,
            slot,
            RunTrigger.MANUAL,
            worker=self.worker if expand else None,
            lease_s=self.lease_s,
        )
        run = self.store.run(name, slot_id(slot))
        if outcome is not ClaimOutcome.CLAIMED or run is None or not expand:
            return run
        return self.expand(schedule, run, new_batch=True)

    def expand(self, schedule: Schedule, run: ScheduleRun, *, new_batch: bool) -> ScheduleRun:
        """Queue the run's jobs in its batch; the run ends SUBMITTED or FAILED (with why)."""
        slot = parse_slot(run.slot)
        started = time.monotonic()
        queued = 0
        last_extend = time.monotonic()
        try:
            with source_rows(schedule, slot, self.settings, run.batch_id) as source:

                def extend(_row: BulkRow, _outcome: object, _handle: object) -> None:
                    nonlocal queued, last_extend
                    queued += 1
                    if time.monotonic() - last_extend > self.lease_s / 3:
                        last_extend = time.monotonic()
                        if not self.store.extend(
                            schedule.name, run.slot, self.worker, self.lease_s, queued
                        ):
                            raise _LeaseLost(run.slot)

                check_sizes(source.checked, self.settings, None)
                submit_stream(
                    source.rows(),
                    self.settings,
                    on_row=extend,
                    batch_id=run.batch_id,
                    new_batch=new_batch,
                    owner=schedule.owner,
                    webhook_url=schedule.webhook_url,
                    source=f"schedule {schedule.name} slot {run.slot} ({schedule.source})",
                    # The batch record keeps it: the run's manifest is <prefix>/manifest.jsonl.
                    output_prefix=schedule.prefix_for(slot),
                )
            rows = source.checked.rows
        except _LeaseLost:
            logger.error(
                "schedule %s: run %s was taken over by another scheduler after %d job(s); "
                "leaving it to that one",
                schedule.name,
                run.slot,
                queued,
            )
            return self.store.run(schedule.name, run.slot) or run
        except (LcmError, ProducerError, OSError) as e:
            reason = f"{type(e).__name__}: {e}"
            logger.error("schedule %s: run %s failed: %s", schedule.name, run.slot, reason)
            self.store.finish(schedule.name, run.slot, self.worker, RunState.FAILED, queued, reason)
            return self.store.run(schedule.name, run.slot) or run
        self.store.finish(schedule.name, run.slot, self.worker, RunState.SUBMITTED, rows)
        logger.info(
            "schedule %s: run %s (%s) queued %d job(s) in batch %s in %.2f s",
            schedule.name,
            run.slot,
            run.trigger,
            rows,
            run.batch_id,
            time.monotonic() - started,
        )
        return self.store.run(schedule.name, run.slot) or run


class _LeaseLost(Exception):
    """Another scheduler took the run over (this one was too slow to extend its lease)."""


def _on_time(slot: datetime, now: datetime, grace_s: float = 300.0) -> bool:
    """A slot run within ``grace_s`` of its time is a normal run; older ones are catch-ups."""
    return (now - slot).total_seconds() <= grace_s
