"""Schedules and their runs in Redis: definitions, the last slot claimed, one record per run.

A run is claimed by one Lua script that refuses a slot at or before the schedule's last
claimed slot (cron and catch-up runs) or one whose run record exists, and otherwise creates
the record, indexes it and moves the last slot forward, in one step. So two schedulers, a
restart, a redelivered task or a catch-up that overlaps another never claim a slot twice,
and a slot's batch id (``<name>.<slot>``) is created by the one claimer only.

The claimer expands the run under a lease (``lease_until``), extended while it queues the
jobs; a run whose lease lapsed (its process died) or that waits ``pending`` (run-now over
HTTP) is taken over by one process (:meth:`ScheduleStore.take`), which queues the same job
ids into the same batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lcm_fleet.enums import TextEnum
from lcm_fleet.keys import (
    SCHEDULES_KEY,
    schedule_key,
    schedule_run_key,
    schedule_runs_key,
    schedule_state_key,
)
from lcm_fleet.records import ANY_OWNER
from lcm_fleet.schedules import RunState, RunTrigger, Schedule, ScheduleRun, slot_id

#: Runs kept in a schedule's index (their records expire with LCM_RECORD_TTL_S).
RUNS_KEPT = 1000

# KEYS: 1 state, 2 run, 3 runs index. ARGV: 1 slot time, 2 slot id, 3 '1' to require a slot
# after the last claimed one and move it forward, 4 ttl, 5 runs kept, 6... field, value pairs.
_CLAIM = """
if ARGV[3] == '1' then
  local last = tonumber(redis.call('HGET', KEYS[1], 'last_slot') or '0')
  if tonumber(ARGV[1]) <= last then return 'past' end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'taken' end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[5]) - 1)
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'last_slot', ARGV[1]) end
return 'claimed'
"""

# KEYS[1]: state. ARGV[1]: a time; the last slot moves up to it, never back.
_START_FROM = """
local last = tonumber(redis.call('HGET', KEYS[1], 'last_slot') or '0')
if tonumber(ARGV[1]) > last then redis.call('HSET', KEYS[1], 'last_slot', ARGV[1]) end
return 0
"""

# KEYS[1]: run. ARGV: 1 now, 2 worker, 3 lease until. A pending run, or one whose lease lapsed.
_TAKE = """
local run = redis.call('HMGET', KEYS[1], 'state', 'lease_until')
if not run[1] then return 0 end
if run[1] == 'pending' or (run[1] == 'submitting' and tonumber(run[2] or '0') < tonumber(ARGV[1]))
then
  redis.call('HSET', KEYS[1], 'state', 'submitting', 'worker', ARGV[2], 'lease_until', ARGV[3])
  return 1
end
return 0
"""

# KEYS[1]: run. ARGV: 1 worker, 2 lease until (or '' to end), 3... field, value pairs to set.
# Only the lease holder extends or ends a run.
_HOLD = """
local run = redis.call('HMGET', KEYS[1], 'state', 'worker')
if run[1] ~= 'submitting' or run[2] ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'lease_until', ARGV[2]) end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


class ClaimOutcome(TextEnum):
    CLAIMED = "claimed"
    #: The run exists already (another scheduler, an earlier run-now).
    TAKEN = "taken"
    #: The slot is at or before the last one claimed: run, skipped or caught up before.
    PAST = "past"


class PutOutcome(TextEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class ScheduleState:
    """A schedule's bookkeeping beside its definition (Unix seconds)."""

    #: Slots at or before this are done with (run, skipped or caught up); at creation, resume
    #: and a change of cron or time zone it is "now", so no past slot runs.
    last_slot: float
    created_at: float
    updated_at: float


class OwnedElsewhere(Exception):
    """The schedule name is another owner's."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float | None:
    return float(_text(value)) if value not in (None, b"", "") else None


class ScheduleStore:
    """Schedule definitions, their state and their runs in one Redis (a redis-py client)."""

    def __init__(self, redis: Any, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = int(ttl_s)
        self._claim = redis.register_script(_CLAIM)
        self._take = redis.register_script(_TAKE)
        self._hold = redis.register_script(_HOLD)
        self._start_from = redis.register_script(_START_FROM)

    # ---------------------------------------------------------------- definitions

    def get(self, name: str, owner: str = ANY_OWNER) -> Schedule | None:
        raw = self.redis.get(schedule_key(name))
        if raw is None:
            return None
        schedule = Schedule.model_validate_json(_text(raw))
        return schedule if owner in (ANY_OWNER, schedule.owner) else None

    def names(self) -> list[str]:
        return sorted(_text(n) for n in self.redis.smembers(SCHEDULES_KEY))

    def schedules(self, owner: str = ANY_OWNER) -> list[Schedule]:
        names = self.names()
        if not names:
            return []
        raws = self.redis.mget([schedule_key(n) for n in names])
        found = (Schedule.model_validate_json(_text(r)) for r in raws if r is not None)
        return [s for s in found if owner in (ANY_OWNER, s.owner)]

    def state(self, name: str) -> ScheduleState | None:
        raw = {_text(k): _text(v) for k, v in self.redis.hgetall(schedule_state_key(name)).items()}
        if not raw:
            return None
        return ScheduleState(
            last_slot=float(raw.get("last_slot") or 0),
            created_at=float(raw.get("created_at") or 0),
            updated_at=float(raw.get("updated_at") or 0),
        )

    def put(self, schedule: Schedule, now: float | None = None) -> PutOutcome:
        """Create or replace a definition. A new schedule, or a new cron or time zone, starts
        from ``now``: no slot before it runs. OwnedElsewhere if the name is another's."""
        at = time.time() if now is None else now
        old = self.get(schedule.name)
        if old is not None and old.owner != schedule.owner:
            raise OwnedElsewhere(schedule.name)
        if old == schedule:
            return PutOutcome.UNCHANGED
        pipe = self.redis.pipeline()
        pipe.set(schedule_key(schedule.name), schedule.model_dump_json())
        pipe.sadd(SCHEDULES_KEY, schedule.name)
        state = {"updated_at": repr(at)}
        if old is None:
            state.update(created_at=repr(at), last_slot=repr(at))
            pipe.delete(schedule_state_key(schedule.name))
        pipe.hset(schedule_state_key(schedule.name), mapping=state)
        pipe.execute()
        if old is not None and (old.cron, old.timezone) != (schedule.cron, schedule.timezone):
            self.start_from(schedule.name, at)
        return PutOutcome.CREATED if old is None else PutOutcome.UPDATED

    def start_from(self, name: str, at: float) -> None:
        """No slot at or before ``at`` runs (resume, a changed cron): the last slot moves up."""
        self._start_from([schedule_state_key(name)], [repr(at)])

    def delete(self, name: str) -> bool:
        """Remove the definition and its state; its run records expire with their TTL."""
        pipe = self.redis.pipeline()
        pipe.delete(schedule_key(name), schedule_state_key(name))
        pipe.srem(SCHEDULES_KEY, name)
        return bool(pipe.execute()[0])

    # ---------------------------------------------------------------- runs

    def claim(
        self,
        schedule: Schedule,
        slot: Any,
        trigger: RunTrigger,
        *,
        worker: str | None,
        lease_s: float,
        skipped_before: int = 0,
        now: float | None = None,
    ) -> ClaimOutcome:
        """Claim the run of ``slot`` (a datetime): held by ``worker`` (SUBMITTING under a
        lease) or, with ``worker`` None, left PENDING for a scheduler to take."""
        at = time.time() if now is None else now
        slot_text = slot_id(slot)
        fields = {
            "schedule": schedule.name,
            "slot": slot_text,
            "slot_at": repr(slot.timestamp()),
            "trigger": trigger.value,
            "batch_id": schedule.batch_id(slot),
            "output_prefix": schedule.prefix_for(slot),
            "claimed_at": repr(at),
            "skipped_before": str(skipped_before),
            "state": RunState.PENDING.value if worker is None else RunState.SUBMITTING.value,
            "jobs": "0",
        }
        if worker is not None:
            fields.update(worker=worker, lease_until=repr(at + lease_s))
        advance = "0" if trigger is RunTrigger.MANUAL else "1"
        out = self._claim(
            [
                schedule_state_key(schedule.name),
                schedule_run_key(schedule.name, slot_text),
                schedule_runs_key(schedule.name),
            ],
            [
                repr(slot.timestamp()),
                slot_text,
                advance,
                self.ttl_s,
                RUNS_KEPT,
                *(x for pair in fields.items() for x in pair),
            ],
        )
        return ClaimOutcome(_text(out))

    def take(
        self, name: str, slot: str, worker: str, lease_s: float, now: float | None = None
    ) -> bool:
        """Take over a PENDING run or one whose lease lapsed; True if this caller holds it."""
        at = time.time() if now is None else now
        return bool(
            self._take([schedule_run_key(name, slot)], [repr(at), worker, repr(at + lease_s)])
        )

    def extend(self, name: str, slot: str, worker: str, lease_s: float, jobs: int) -> bool:
        """Extend the lease (and note the jobs queued); False if ``worker`` lost it."""
        until = repr(time.time() + lease_s)
        return bool(self._hold([schedule_run_key(name, slot)], [worker, until, "jobs", str(jobs)]))

    def finish(
        self,
        name: str,
        slot: str,
        worker: str,
        state: RunState,
        jobs: int,
        reason: str | None = None,
    ) -> bool:
        """End the run as SUBMITTED or FAILED; False if ``worker`` no longer holds it."""
        fields = [
            "state",
            state.value,
            "jobs",
            str(jobs),
            "submitted_at",
            repr(time.time()),
            "reason",
            reason or "",
            "lease_until",
            "",
        ]
        return bool(self._hold([schedule_run_key(name, slot)], [worker, "", *fields]))

    def run(self, name: str, slot: str) -> ScheduleRun | None:
        raw = self.redis.hgetall(schedule_run_key(name, slot))
        return _run(raw) if raw else None

    def runs(self, name: str, limit: int = 10) -> list[ScheduleRun]:
        """The latest ``limit`` runs, newest first (those whose records have not expired)."""
        slots = [_text(s) for s in self.redis.zrevrange(schedule_runs_key(name), 0, limit - 1)]
        return self._runs(name, slots)

    def _runs(self, name: str, slots: Sequence[str]) -> list[ScheduleRun]:
        pipe = self.redis.pipeline()
        for slot in slots:
            pipe.hgetall(schedule_run_key(name, slot))
        return [_run(raw) for raw in pipe.execute() if raw]

    def stalled(self, name: str, now: float | None = None, recent: int = 50) -> list[ScheduleRun]:
        """Recent runs that no process is expanding: PENDING, or SUBMITTING past the lease."""
        at = time.time() if now is None else now
        return [
            r
            for r in self.runs(name, recent)
            if r.state is RunState.PENDING
            or (r.state is RunState.SUBMITTING and (r.lease_until or 0.0) < at)
        ]


def _run(raw: dict[Any, Any]) -> ScheduleRun:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return ScheduleRun(
        schedule=fields["schedule"],
        slot=fields["slot"],
        slot_at=float(fields["slot_at"]),
        trigger=RunTrigger(fields["trigger"]),
        state=RunState(fields["state"]),
        batch_id=fields["batch_id"],
        output_prefix=fields["output_prefix"],
        claimed_at=float(fields["claimed_at"]),
        submitted_at=_float(fields.get("submitted_at")),
        jobs=int(fields.get("jobs") or 0),
        skipped_before=int(fields.get("skipped_before") or 0),
        reason=fields.get("reason") or None,
        worker=fields.get("worker") or None,
        lease_until=_float(fields.get("lease_until")),
    )
