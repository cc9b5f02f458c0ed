"""What ``lcm schedule`` and ``/v1/schedules`` do: put, pause, resume, remove, show, run now.

Each change writes the schedule record (producer/schedules/store.py, the truth) and its
RedBeat entry (producer/schedules/beat.py, which only fires the run task). Every operation
takes the caller's owner: an API key id, ``local`` for the CLI, or ``*`` (an admin key) to
see and change every schedule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from lcm_fleet.records import ANY_OWNER, BatchRecord, RecordStore
from lcm_fleet.schedules import UTC, Schedule, ScheduleRun
from producer.queue import cached_records
from producer.schedules.beat import BeatEntries, beat_client
from producer.schedules.runner import Runner
from producer.schedules.store import PutOutcome, ScheduleState, ScheduleStore
from producer.settings import ProducerSettings


@dataclass(frozen=True)
class RunView:
    """A run and its batch's record (counts, finished), if the record has not expired."""

    run: ScheduleRun
    batch: BatchRecord | None


@dataclass(frozen=True)
class ScheduleView:
    schedule: Schedule
    state: ScheduleState | None
    #: The next slot the cron names (None while paused).
    next_slot: datetime | None
    runs: list[RunView]


@dataclass(frozen=True)
class ApplyReport:
    """What ``apply`` did to each schedule of the file, and what it removed (--prune)."""

    outcomes: dict[str, PutOutcome]
    removed: list[str]


class Schedules:
    """Schedule operations on one Redis (the records'), for the CLI and the HTTP API."""

    def __init__(self, settings: ProducerSettings, records: RecordStore | None = None) -> None:
        self.settings = settings
        self.records = records or cached_records(settings)
        self.store = ScheduleStore(self.records.redis, settings.record_ttl_s)
        self.entries = BeatEntries(beat_client(settings))

    def _visible(self, name: str, owner: str) -> Schedule | None:
        return self.store.get(name, owner)

    def put(self, schedule: Schedule) -> PutOutcome:
        """Create or replace; a new cron or time zone counts from now (no past slot runs)."""
        old = self.store.get(schedule.name)
        outcome = self.store.put(schedule)
        if outcome is not PutOutcome.UNCHANGED:
            clock_changed = old is None or (old.cron, old.timezone) != (
                schedule.cron,
                schedule.timezone,
            )
            resumed = old is not None and not old.enabled and schedule.enabled
            if resumed:
                self.store.start_from(schedule.name, time.time())
            self.entries.save(schedule, restart=clock_changed or resumed)
        return outcome

    def apply(self, schedules: list[Schedule], owner: str, prune: bool = False) -> ApplyReport:
        """Put every schedule (already checked as a whole); with ``prune`` remove the owner's
        schedules the list does not name."""
        outcomes = {s.name: self.put(s) for s in schedules}
        removed: list[str] = []
        if prune:
            for existing in self.store.schedules(owner):
                if existing.name not in outcomes and self.remove(existing.name, owner):
                    removed.append(existing.name)
        return ApplyReport(outcomes, removed)

    def list(self, owner: str = ANY_OWNER) -> list[Schedule]:
        return self.store.schedules(owner)

    def get(self, name: str, owner: str = ANY_OWNER) -> Schedule | None:
        return self._visible(name, owner)

    def set_enabled(self, name: str, owner: str, enabled: bool) -> Schedule | None:
        """Pause or resume. A resumed schedule runs from its next slot: slots that passed
        while it was paused are neither run nor caught up."""
        schedule = self._visible(name, owner)
        if schedule is None:
            return None
        changed = schedule.model_copy(update={"enabled": enabled})
        self.put(changed)
        return changed

    def remove(self, name: str, owner: str) -> bool:
        if self._visible(name, owner) is None:
            return False
        self.entries.delete(name)
        return self.store.delete(name)

    def view(self, name: str, owner: str = ANY_OWNER, runs: int = 10) -> ScheduleView | None:
        schedule = self._visible(name, owner)
        if schedule is None:
            return None
        views = [
            RunView(run, self.records.get_batch(run.batch_id))
            for run in self.store.runs(name, runs)
        ]
        nxt = schedule.clock.next_after(datetime.now(UTC)) if schedule.enabled else None
        return ScheduleView(schedule, self.store.state(name), nxt, views)

    def run_now(self, name: str, owner: str, *, expand: bool = True) -> ScheduleRun | None:
        """A manual run now (see :meth:`Runner.run_now`); None: no such schedule."""
        runner = Runner(self.store, self.settings)
        return runner.run_now(name, owner, expand=expand)


@lru_cache(maxsize=8)
def schedules_for(settings: ProducerSettings) -> Schedules:
    """One :class:`Schedules` per settings object in a process (the HTTP API's routes)."""
    return Schedules(settings)
