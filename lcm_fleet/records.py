"""Job and batch records in Redis: the one place a job's state, progress and result live.

The CLI, the Python API and the HTTP API read them the same way; the worker writes them
as the job moves. A job's record is created when it is submitted (owner: an API key id,
or ``local`` for the CLI and the Python API), so an unknown id is "not found", never
"queued". Every change is one Lua script, so a state change and the counts of its batch
move together, and two workers (or a worker and a cancel) cannot both win a transition:

    queued -> running -> succeeded | failed | canceled
    queued -> canceled | failed          (cancelled, or refused before it rendered)
    running -> queued                    (given back: retry, dead render process)

A cancel of a queued job makes it ``canceled`` at once, and the worker, which starts a job
only through :meth:`RecordStore.start`, never renders it. A cancel of a running job sets
``cancel_requested``; the render stops at its next denoising step and the job ends
``canceled`` (if it finishes first, it stays ``succeeded``). A finished job cannot be
cancelled: :class:`CancelOutcome` says so.

Records expire ``ttl_s`` after their last change (``LCM_RECORD_TTL_S``). The scripts need
one Redis (or a primary with replicas), not Redis Cluster: a job's script updates its
batch, whose key it reads from the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lcm_fleet.contract import Job, JobClass, JobResult, JobState
from lcm_fleet.enums import TextEnum
from lcm_fleet.keys import (
    IN_FLIGHT_PREFIX,
    batch_jobs_key,
    batch_key,
    batch_webhooks_key,
    in_flight_key,
    job_key,
    job_webhooks_key,
)
from lcm_fleet.settings import ConnectionSettings

#: Owner of jobs submitted by the CLI and the Python API (no API key).
LOCAL_OWNER = "local"
#: Owner of a job that reached a worker without a record (sent straight to the queue).
UNKNOWN_OWNER = "unknown"
#: What ``owner=`` matches to see every record (the HTTP API's admin scope).
ANY_OWNER = "*"

FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})
_STATE_COUNTS = tuple(s.value for s in JobState)


class Progress(BaseModel):
    """Where a running job is: image ``image`` of ``images`` (1-based), step of steps."""

    model_config = ConfigDict(frozen=True)

    image: int = Field(ge=0)
    images: int = Field(ge=1)
    step: int = Field(ge=0)
    steps: int = Field(ge=1)
    #: Unix seconds of the step.
    at: float


class WaitingFor(TextEnum):
    """What a running job waits for, besides its render."""

    #: Its storage writes are in their transient-retry loop (LCM_STORAGE_RETRY_BUDGET_S).
    STORAGE = "storage"


#: How much of the last error a waiting record keeps.
WAITING_ERROR_MAX_CHARS = 200


class Waiting(BaseModel):
    """A running job waits: for what, since when (Unix seconds), and the last error."""

    model_config = ConfigDict(frozen=True)

    waiting_for: WaitingFor
    since: float
    #: The last error, cut to WAITING_ERROR_MAX_CHARS.
    error: str = Field(max_length=WAITING_ERROR_MAX_CHARS)
    #: Unix seconds of the last error.
    at: float


class JobRecord(BaseModel):
    """A job as the record holds it; timestamps are Unix seconds."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    owner: str
    batch_id: str | None = None
    state: JobState
    job: Job | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float
    #: Why it failed or was cancelled.
    reason: str | None = None
    worker: str | None = None
    progress: Progress | None = None
    cancel_requested: bool = False
    #: The worker's result once it succeeded.
    result: JobResult | None = None
    #: Keys of images stored before the job ended without a result (canceled, failed).
    partial_keys: tuple[str, ...] = ()
    webhook_url: str | None = None
    #: Interactive (a single job) or bulk (a batch, a bulk file, a schedule's run); None for
    #: a record made before classes, or by a worker for a job sent straight to its queue.
    job_class: JobClass | None = None
    #: Set while the running job waits (e.g. for storage); cleared when it goes on or ends.
    waiting: Waiting | None = None
    #: The job's row in its batch: the file's line for a bulk file (the manifest's ``row``).
    row: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


class BatchCounts(BaseModel):
    model_config = ConfigDict(frozen=True)

    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.canceled


class BatchSummary(BaseModel):
    """What an ended batch produced, written with its manifest (lcm_fleet/batch_manifest.py)."""

    model_config = ConfigDict(frozen=True)

    counts: BatchCounts
    #: Rows in the manifest (one per job of the batch).
    rows: int = Field(ge=0)
    #: Images of the succeeded jobs.
    images: int = Field(ge=0)
    #: From the batch's first submit to the end of its last job, in seconds.
    wall_s: float = Field(ge=0)
    images_per_s: float = Field(ge=0)
    #: The manifest's object key and when it was written (Unix seconds).
    manifest_key: str
    written_at: float


class BatchRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch_id: str
    owner: str
    created_at: float
    finished_at: float | None = None
    #: Jobs recorded in the batch so far.
    total: int
    #: True once every job of the batch was submitted; only then can it finish.
    sealed: bool
    counts: BatchCounts
    webhook_url: str | None = None
    source: str | None = None
    #: The batch's output prefix (its jobs' objects and its manifest go under it), or None.
    output_prefix: str | None = None
    #: Set with the manifest when the batch ends (and again after a resume).
    summary: BatchSummary | None = None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


class StartOutcome(TextEnum):
    """What :meth:`RecordStore.start` decided for a delivered job."""

    RUN = "run"
    #: Cancelled (or otherwise finished) before it started: do not render it.
    SKIP = "skip"


class CancelOutcome(TextEnum):
    CANCELED = "canceled"
    #: Running: it stops at its next denoising step.
    REQUESTED = "requested"
    #: Already succeeded, failed or cancelled: nothing changed.
    FINISHED = "finished"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class Transition:
    """The result of a state change: whether it happened, and the state before it."""

    done: bool
    before: JobState | None
    #: The change finished the job's batch.
    batch_finished: bool = False


class SubmitStatus(TextEnum):
    """What the submission script decided (:meth:`RecordStore.submit`)."""

    #: Recorded as queued (and, given a message, published).
    QUEUED = "queued"
    #: The API key is revoked or gone: nothing changed.
    REVOKED = "revoked"
    #: The Idempotency-Key answered before: ``detail`` is the value stored with it.
    EARLIER = "earlier"
    #: The job id names another owner's job (``detail`` "other") or one of the owner's jobs
    #: still in flight ("own").
    ID_IN_USE = "id_in_use"
    #: The owner has ``detail`` jobs in flight, as many as it may.
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class SubmitOutcome:
    status: SubmitStatus
    detail: str = ""


@dataclass(frozen=True)
class Guards:
    """The HTTP API's checks, made by the submission script itself (atomically)."""

    #: Redis key of the API key's hash: a revoked (or deleted) key submits nothing.
    api_key: str | None = None
    #: Queued + running jobs the owner may have; None: no limit (the CLI, the Python API).
    max_in_flight: int | None = None
    #: Refuse a job id that is another owner's, or one of the owner's still in flight.
    refuse_used_id: bool = False
    #: (Redis key, value, ttl_s) of an Idempotency-Key: an earlier answer wins, else it is
    #: set with the record.
    idempotency: tuple[str, str, int] | None = None


@dataclass(frozen=True)
class Enqueue:
    """The broker message that the script pushes after the record (broker in this Redis)."""

    #: The Redis list the workers consume.
    queue: str
    #: The transport's message (kombu's Redis envelope of a Celery task message).
    payload: str
    #: The result backend's key of the task id, deleted with the push (a reused id's old
    #: result), or None.
    result_key: str | None = None


# Lua shared by the scripts: move the job at KEYS[1] from `cur` to `to`, count it in its
# batch and in its owner's jobs in flight (queued + running: the HTTP API's per-key limit),
# and mark the batch finished when its last job is. ARGV[1]: now, ARGV[2]: ttl,
# ARGV[3]: the batch key prefix.
_MOVE = (
    f"local IN_FLIGHT_PREFIX = '{IN_FLIGHT_PREFIX}'\n"
    + """
local live = {queued=1, running=1}
local function in_flight(owner, delta)
  if not owner or owner == '' then return end
  local key = IN_FLIGHT_PREFIX .. owner
  if redis.call('INCRBY', key, delta) <= 0 then redis.call('DEL', key)
  else redis.call('EXPIRE', key, ARGV[2]) end
end
local function move(cur, to)
  redis.call('HSET', KEYS[1], 'state', to, 'updated_at', ARGV[1])
  if live[cur] and not live[to] then in_flight(redis.call('HGET', KEYS[1], 'owner'), -1) end
  if live[to] and not live[cur] then in_flight(redis.call('HGET', KEYS[1], 'owner'), 1) end
  if to == 'running' then redis.call('HSET', KEYS[1], 'started_at', ARGV[1]) end
  if to == 'succeeded' or to == 'failed' or to == 'canceled' then
    redis.call('HSET', KEYS[1], 'finished_at', ARGV[1])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  local batch = redis.call('HGET', KEYS[1], 'batch_id')
  if not batch or batch == '' then return 0 end
  local bkey = ARGV[3] .. batch
  if redis.call('EXISTS', bkey) == 0 then return 0 end
  redis.call('HINCRBY', bkey, cur, -1)
  redis.call('HINCRBY', bkey, to, 1)
  redis.call('EXPIRE', bkey, ARGV[2])
  local final = {succeeded=1, failed=1, canceled=1}
  if final[to] and not final[cur] then
    local done = redis.call('HINCRBY', bkey, 'done', 1)
    local total = tonumber(redis.call('HGET', bkey, 'total') or '0')
    if redis.call('HGET', bkey, 'sealed') == '1' and done >= total then
      if redis.call('HSETNX', bkey, 'finished_at', ARGV[1]) == 1 then return 1 end
    end
  end
  return 0
end
"""
)

# A job recorded again leaves its old state's count in its old batch (when that still exists);
# true when the old batch is `this` one: the job is in its job list already.
_UNCOUNT = """
local function uncount(state, batch, this)
  if not state or not batch or batch == '' then return false end
  local okey = ARGV[3] .. batch
  if redis.call('EXISTS', okey) == 0 then return false end
  redis.call('HINCRBY', okey, state, -1)
  redis.call('HINCRBY', okey, 'total', -1)
  local final = {succeeded=1, failed=1, canceled=1}
  if final[state] then redis.call('HINCRBY', okey, 'done', -1) end
  return batch == this
end
"""

# ARGV[4]: the new state, ARGV[5]: allowed states before it (space-separated),
# ARGV[6...]: field, value pairs to set with it.
_TRANSITION = (
    _MOVE
    + """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', ''} end
local allowed = false
for s in string.gmatch(ARGV[5], '%S+') do if s == cur then allowed = true end end
if not allowed then return {'refused', cur} end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local finished = move(cur, ARGV[4])
return {'ok', cur, tostring(finished)}
"""
)

# ARGV[4]: owner or '*'.
_CANCEL = (
    _MOVE
    + """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'not_found', ''} end
if ARGV[4] ~= '*' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[4] then
  return {'not_found', ''}
end
if cur == 'queued' then
  redis.call('HSET', KEYS[1], 'reason', 'canceled before it started')
  move(cur, 'canceled')
  return {'canceled', cur}
end
if cur == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[1])
  return {'requested', cur}
end
return {'finished', cur}
"""
)

# The submission, in one round trip: the guards of the HTTP API (revoked key, an earlier
# answer to the same Idempotency-Key, a job id in use, the owner's jobs in flight: checked and
# counted atomically, so concurrent submits cannot overshoot the limit), the record, its
# batch, and, when the broker is this Redis, the Celery message itself (LPUSH on the queue,
# after the record: a worker never sees a job without one). A job recorded again (a
# resubmitted id) leaves its old state's count in its old batch.
#
# KEYS: 1 job, 2 the owner's in-flight counter, 3 the Idempotency-Key's key or '', 4 the API
# key's hash or '', 5 the batch or '', 6 the batch's job list or '', 7 the queue or '', 8 the
# result backend's key of the task or ''.
# ARGV (after the three of _MOVE): 4 owner, 5 max in flight (-1: no limit), 6 '1' to refuse a
# job id in use, 7 the idempotency value, 8 its ttl, 9 the message or '', 10 batch id or '',
# 11... field, value pairs of the record.
_SUBMIT = (
    _MOVE
    + _UNCOUNT
    + """
if KEYS[4] ~= '' then
  local key = redis.call('HMGET', KEYS[4], 'digest', 'revoked_at')
  if not key[1] or key[2] then return {'revoked', ''} end
end
if KEYS[3] ~= '' then
  local earlier = redis.call('GET', KEYS[3])
  if earlier then return {'earlier', earlier} end
end
local old = redis.call('HMGET', KEYS[1], 'owner', 'state', 'batch_id')
if ARGV[6] == '1' and old[1] and (old[1] ~= ARGV[4] or live[old[2]]) then
  if old[1] == ARGV[4] then return {'id_in_use', 'own'} end
  return {'id_in_use', 'other'}
end
local limit = tonumber(ARGV[5])
if limit >= 0 then
  local now = tonumber(redis.call('GET', KEYS[2]) or '0')
  if now < 0 then now = 0 end
  if now + 1 > limit then return {'in_flight', tostring(now)} end
end
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[8]) end
if old[2] and live[old[2]] then in_flight(old[1], -1) end
local listed = uncount(old[2], old[3], ARGV[10])
redis.call('DEL', KEYS[1])
for i = 11, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
in_flight(ARGV[4], 1)
if ARGV[10] ~= '' then
  redis.call('HINCRBY', KEYS[5], 'queued', 1)
  redis.call('HINCRBY', KEYS[5], 'total', 1)
  redis.call('EXPIRE', KEYS[5], ARGV[2])
  if not listed then redis.call('RPUSH', KEYS[6], redis.call('HGET', KEYS[1], 'job_id')) end
  redis.call('EXPIRE', KEYS[6], ARGV[2])
end
if ARGV[9] ~= '' then
  if KEYS[8] ~= '' then redis.call('DEL', KEYS[8]) end
  redis.call('LPUSH', KEYS[7], ARGV[9])
end
return {'queued', ''}
"""
)

# KEYS[1]: job; ARGV[4..]: image, images, step, steps. Only while running.
#: The submission script's source, for clients other than :class:`RecordStore`'s own (the
#: HTTP API's asyncio client registers it; KEYS and ARGV from :meth:`RecordStore.submission`).
SUBMIT_SCRIPT = _SUBMIT

_PROGRESS = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[4], 'updated_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1]: job; ARGV[4]: the waiting JSON, or '' to clear it. Only while running.
_WAITING = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[1], 'waiting')
else
  redis.call('HSET', KEYS[1], 'waiting', ARGV[4])
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1]: batch; ARGV[1]: now, ARGV[2]: ttl. Seal: no more jobs come; finish if all done.
_SEAL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'sealed', '1')
redis.call('EXPIRE', KEYS[1], ARGV[2])
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if done >= total then
  if redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[1]) == 1 then return 1 end
end
return 0
"""

# KEYS: 1 job, 2 batch, 3 the batch's job list; ARGV (after the three of _MOVE): 4 batch id,
# 5... field, value pairs of the record (state succeeded). A row found stored and verified
# on a resume, counted as succeeded in its batch without rendering. A job in flight is left
# alone; one already succeeded in this batch is already counted.
_ADOPT = (
    _MOVE
    + _UNCOUNT
    + """
local old = redis.call('HMGET', KEYS[1], 'owner', 'state', 'batch_id')
if old[2] and live[old[2]] then return 'in_flight' end
if old[2] == 'succeeded' and old[3] == ARGV[4] and redis.call('EXISTS', KEYS[2]) == 1 then
  return 'counted'
end
local listed = uncount(old[2], old[3], ARGV[4])
redis.call('DEL', KEYS[1])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'succeeded', 1)
redis.call('HINCRBY', KEYS[2], 'total', 1)
redis.call('HINCRBY', KEYS[2], 'done', 1)
redis.call('EXPIRE', KEYS[2], ARGV[2])
if not listed then redis.call('RPUSH', KEYS[3], redis.call('HGET', KEYS[1], 'job_id')) end
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 'adopted'
"""
)


class AdoptStatus(TextEnum):
    """What :meth:`RecordStore.adopt_stored` did with a stored, verified row."""

    #: Recorded as succeeded in the batch.
    ADOPTED = "adopted"
    #: Its record already says succeeded in this batch.
    COUNTED = "counted"
    #: Its job is queued or running: left alone (it renders once).
    IN_FLIGHT = "in_flight"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def submit_outcome(out: Sequence[Any]) -> SubmitOutcome:
    """The submission script's answer as a :class:`SubmitOutcome`."""
    return SubmitOutcome(SubmitStatus(_text(out[0])), _text(out[1]) if len(out) > 1 else "")


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


class RecordStore:
    """Job and batch records in one Redis (a redis-py client)."""

    def __init__(self, redis: Any, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = int(ttl_s)
        self._transition = redis.register_script(_TRANSITION)
        self._cancel = redis.register_script(_CANCEL)
        self._submit = redis.register_script(_SUBMIT)
        self._progress = redis.register_script(_PROGRESS)
        self._seal = redis.register_script(_SEAL)
        self._waiting = redis.register_script(_WAITING)
        self._adopt = redis.register_script(_ADOPT)

    def _argv(self, now: float | None) -> list[Any]:
        return [repr(time.time() if now is None else now), self.ttl_s, batch_key("")]

    # ---------------------------------------------------------------- writes by producers

    def create_batch(
        self,
        batch_id: str,
        owner: str,
        *,
        webhook_url: str | None = None,
        source: str | None = None,
        output_prefix: str | None = None,
        now: float | None = None,
    ) -> None:
        """A new batch with no jobs yet (a batch id used before starts afresh)."""
        at = time.time() if now is None else now
        fields = {"batch_id": batch_id, "owner": owner, "created_at": repr(at), "sealed": "0"}
        fields.update({state: "0" for state in _STATE_COUNTS})
        fields.update({"total": "0", "done": "0"})
        if webhook_url:
            fields["webhook_url"] = webhook_url
        if source:
            fields["source"] = source
        if output_prefix:
            fields["output_prefix"] = output_prefix
        pipe = self.redis.pipeline()
        pipe.delete(batch_key(batch_id), batch_jobs_key(batch_id))
        pipe.hset(batch_key(batch_id), mapping=fields)
        pipe.expire(batch_key(batch_id), self.ttl_s)
        pipe.execute()

    def submission(
        self,
        job: Job,
        owner: str,
        *,
        batch_id: str | None = None,
        webhook_url: str | None = None,
        guards: Guards | None = None,
        enqueue: Enqueue | None = None,
        now: float | None = None,
        job_class: JobClass | None = None,
        row: int | None = None,
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the submission script (:data:`SUBMIT_SCRIPT`), for any client."""
        guards = guards or Guards()
        at = repr(time.time() if now is None else now)
        fields: dict[str, str] = {
            "job_id": job.job_id,
            "owner": owner,
            "state": JobState.QUEUED.value,
            "job": job.model_dump_json(),
            "created_at": at,
            "updated_at": at,
        }
        if batch_id:
            fields["batch_id"] = batch_id
        if webhook_url:
            fields["webhook_url"] = webhook_url
        if job_class is not None:
            fields["job_class"] = job_class.value
        if row is not None:
            fields["row"] = str(row)
        idem_key, idem_value, idem_ttl = guards.idempotency or ("", "", 0)
        keys = [
            job_key(job.job_id),
            in_flight_key(owner),
            idem_key,
            guards.api_key or "",
            batch_key(batch_id) if batch_id else "",
            batch_jobs_key(batch_id) if batch_id else "",
            enqueue.queue if enqueue else "",
            (enqueue.result_key or "") if enqueue else "",
        ]
        argv: list[Any] = [
            *self._argv(now),
            owner,
            -1 if guards.max_in_flight is None else guards.max_in_flight,
            "1" if guards.refuse_used_id else "0",
            idem_value,
            idem_ttl,
            enqueue.payload if enqueue else "",
            batch_id or "",
            *(x for pair in fields.items() for x in pair),
        ]
        return keys, argv

    def submit(
        self,
        job: Job,
        owner: str,
        *,
        batch_id: str | None = None,
        webhook_url: str | None = None,
        guards: Guards | None = None,
        enqueue: Enqueue | None = None,
        now: float | None = None,
        job_class: JobClass | None = None,
        row: int | None = None,
    ) -> SubmitOutcome:
        """Record a job as queued after ``guards`` pass, and push ``enqueue``: one script,
        one round trip. A reused id starts afresh (unless ``guards`` refuse it)."""
        keys, argv = self.submission(
            job,
            owner,
            batch_id=batch_id,
            webhook_url=webhook_url,
            guards=guards,
            enqueue=enqueue,
            now=now,
            job_class=job_class,
            row=row,
        )
        return self.run_submission(keys, argv)

    def run_submission(self, keys: list[str], argv: list[Any]) -> SubmitOutcome:
        """Run the submission script with the KEYS and ARGV of :meth:`submission`."""
        return submit_outcome(self._submit(keys, argv))

    def create_job(
        self,
        job: Job,
        owner: str,
        *,
        batch_id: str | None = None,
        webhook_url: str | None = None,
        now: float | None = None,
        job_class: JobClass | None = None,
    ) -> None:
        """Record a job as queued (before it is published). A reused id starts afresh."""
        self.submit(
            job, owner, batch_id=batch_id, webhook_url=webhook_url, now=now, job_class=job_class
        )

    def reopen_batch(self, batch_id: str) -> bool:
        """A resume of an existing batch: unsealed and not finished until it is sealed again
        (its summary goes with it, to be written again). False when there is no such batch."""
        pipe = self.redis.pipeline()
        pipe.exists(batch_key(batch_id))
        pipe.hset(batch_key(batch_id), "sealed", "0")
        pipe.hdel(batch_key(batch_id), "finished_at", "summary")
        exists, *_ = pipe.execute()
        if not exists:
            self.redis.delete(batch_key(batch_id))  # the HSET above made a stub
        return bool(exists)

    def adopt_stored(
        self,
        job: Job,
        owner: str,
        batch_id: str,
        result: JobResult,
        *,
        row: int | None = None,
        now: float | None = None,
    ) -> AdoptStatus:
        """Count a job whose objects are stored and verified as succeeded in ``batch_id``
        (a resumed batch), without rendering it; see :class:`AdoptStatus`."""
        at = repr(time.time() if now is None else now)
        fields = {
            "job_id": job.job_id,
            "owner": owner,
            "batch_id": batch_id,
            "state": JobState.SUCCEEDED.value,
            "job": job.model_dump_json(),
            "created_at": at,
            "updated_at": at,
            "finished_at": at,
            "result": result.model_dump_json(),
        }
        if row is not None:
            fields["row"] = str(row)
        keys = [job_key(job.job_id), batch_key(batch_id), batch_jobs_key(batch_id)]
        argv = [*self._argv(now), batch_id, *(x for pair in fields.items() for x in pair)]
        return AdoptStatus(_text(self._adopt(keys, argv)))

    def set_batch_summary(self, batch_id: str, summary: BatchSummary) -> None:
        """Keep the ended batch's summary in its record (when the record still exists)."""
        self.redis.hset(batch_key(batch_id), "summary", summary.model_dump_json())
        if not self.redis.hexists(batch_key(batch_id), "batch_id"):
            self.redis.delete(batch_key(batch_id))  # expired meanwhile: no stub

    def seal_batch(self, batch_id: str, now: float | None = None) -> bool:
        """Every job of the batch is recorded; True if that finished it (all already done)."""
        return int(self._seal([batch_key(batch_id)], self._argv(now)[:2])) == 1

    def cancel_job(self, job_id: str, owner: str = ANY_OWNER) -> CancelOutcome:
        """Cancel a job of ``owner`` (``*``: anyone's); see the module docstring."""
        out = self._cancel([job_key(job_id)], [*self._argv(None), owner])
        return CancelOutcome(_text(out[0]))

    def cancel_batch(self, batch_id: str, owner: str = ANY_OWNER) -> dict[CancelOutcome, int]:
        """Cancel every job of the batch not yet finished; counts by outcome."""
        counts = dict.fromkeys(CancelOutcome, 0)
        if self.get_batch(batch_id, owner) is None:
            counts[CancelOutcome.NOT_FOUND] = 1
            return counts
        start, page = 0, 1000
        while True:
            ids = self.batch_job_ids(batch_id, start, page)
            if not ids:
                return counts
            pipe = self.redis.pipeline()
            for job_id in ids:
                self._cancel([job_key(job_id)], [*self._argv(None), ANY_OWNER], client=pipe)
            for out in pipe.execute():
                counts[CancelOutcome(_text(out[0]))] += 1
            start += page

    # ---------------------------------------------------------------- writes by workers

    def _move(
        self,
        job_id: str,
        to: JobState,
        allowed: Iterable[JobState],
        fields: dict[str, str] | None = None,
        now: float | None = None,
    ) -> Transition:
        flat = [x for pair in (fields or {}).items() for x in pair]
        out = self._transition(
            [job_key(job_id)],
            [*self._argv(now), to.value, " ".join(s.value for s in allowed), *flat],
        )
        status, before = _text(out[0]), _text(out[1])
        return Transition(
            done=status == "ok",
            before=JobState(before) if before else None,
            batch_finished=status == "ok" and _text(out[2]) == "1",
        )

    def start(
        self,
        job: Job,
        worker: str,
        now: float | None = None,
        job_class: JobClass | None = None,
    ) -> StartOutcome:
        """A worker is about to render ``job``: RUN, or SKIP when it was cancelled.

        A job without a record (sent straight to the queue) gets one, owned by
        ``unknown``, of ``job_class`` (the class of the queue it came from). A redelivered
        running job runs again.
        """
        move = self._move(
            job.job_id,
            JobState.RUNNING,
            (JobState.QUEUED, JobState.RUNNING),
            {"worker": worker, "cancel_requested": "0"},
            now,
        )
        if move.done:
            return StartOutcome.RUN
        if move.before is None:
            self.create_job(job, UNKNOWN_OWNER, now=now, job_class=job_class)
            return self.start(job, worker, now)
        return StartOutcome.SKIP

    def progress(
        self, job_id: str, image: int, images: int, step: int, steps: int, now: float | None = None
    ) -> bool:
        at = time.time() if now is None else now
        value = json.dumps(
            {"image": image, "images": images, "step": step, "steps": steps, "at": at}
        )
        return int(self._progress([job_key(job_id)], [*self._argv(now)[:2], "", value])) == 1

    def waiting(self, job_id: str, waiting: Waiting | None, now: float | None = None) -> bool:
        """Show (or, with None, clear) what the running job waits for; False when the job
        is not running."""
        value = waiting.model_dump_json() if waiting is not None else ""
        return int(self._waiting([job_key(job_id)], [*self._argv(now)[:2], "", value])) == 1

    def requeue(self, job_id: str, reason: str, now: float | None = None) -> Transition:
        """A running job goes back to its queue (retry, dead render process)."""
        return self._move(
            job_id,
            JobState.QUEUED,
            (JobState.RUNNING,),
            {"reason": reason, "progress": "", "waiting": ""},
            now,
        )

    def succeed(self, job_id: str, result: JobResult, now: float | None = None) -> Transition:
        return self._move(
            job_id,
            JobState.SUCCEEDED,
            (JobState.RUNNING,),
            {"result": result.model_dump_json(), "reason": "", "waiting": ""},
            now,
        )

    def fail(
        self,
        job_id: str,
        reason: str,
        *,
        canceled: bool = False,
        partial_keys: Sequence[str] = (),
        now: float | None = None,
    ) -> Transition:
        """The job ended without a result: failed, or canceled at a step."""
        fields = {"reason": reason, "partial_keys": json.dumps(list(partial_keys)), "waiting": ""}
        to = JobState.CANCELED if canceled else JobState.FAILED
        return self._move(job_id, to, (JobState.QUEUED, JobState.RUNNING), fields, now)

    def cancel_requested(self, job_id: str) -> bool:
        return _text(self.redis.hget(job_key(job_id), "cancel_requested") or "") == "1"

    def record_webhook(self, job_id: str, attempt: dict[str, Any]) -> None:
        self._record_attempt(job_webhooks_key(job_id), attempt)

    def record_batch_webhook(self, batch_id: str, attempt: dict[str, Any]) -> None:
        self._record_attempt(batch_webhooks_key(batch_id), attempt)

    def _record_attempt(self, key: str, attempt: dict[str, Any]) -> None:
        """Append a webhook delivery attempt (the last 100 are kept, for the record's TTL)."""
        pipe = self.redis.pipeline()
        pipe.rpush(key, json.dumps(attempt, sort_keys=True))
        pipe.ltrim(key, -100, -1)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    # ---------------------------------------------------------------- reads

    def get_job(self, job_id: str, owner: str = ANY_OWNER) -> JobRecord | None:
        """The record, or None when it does not exist or belongs to another owner."""
        return self._job_record(self.redis.hgetall(job_key(job_id)), owner)

    def get_jobs(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Many records in one round trip (None for the ones that do not exist)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(job_key(job_id))
        return [self._job_record(raw, ANY_OWNER) for raw in pipe.execute()]

    def _job_record(self, hash_: dict[Any, Any], owner: str) -> JobRecord | None:
        raw = {_text(k): _text(v) for k, v in hash_.items()}
        if not raw or (owner != ANY_OWNER and raw.get("owner") != owner):
            return None
        progress = raw.get("progress")
        return JobRecord(
            job_id=raw["job_id"],
            owner=raw["owner"],
            batch_id=raw.get("batch_id") or None,
            state=JobState(raw["state"]),
            job=Job.model_validate_json(raw["job"]) if raw.get("job") else None,
            created_at=float(raw["created_at"]),
            started_at=_float(raw.get("started_at")),
            finished_at=_float(raw.get("finished_at")),
            updated_at=float(raw.get("updated_at") or raw["created_at"]),
            reason=raw.get("reason") or None,
            worker=raw.get("worker") or None,
            progress=Progress.model_validate_json(progress) if progress else None,
            cancel_requested=raw.get("cancel_requested") == "1",
            result=JobResult.model_validate_json(raw["result"]) if raw.get("result") else None,
            partial_keys=tuple(json.loads(raw.get("partial_keys") or "[]")),
            webhook_url=raw.get("webhook_url") or None,
            job_class=JobClass(raw["job_class"]) if raw.get("job_class") else None,
            waiting=Waiting.model_validate_json(raw["waiting"]) if raw.get("waiting") else None,
            row=int(raw["row"]) if raw.get("row") else None,
        )

    def in_flight(self, owner: str) -> int:
        """Queued + running jobs of ``owner`` (kept by every transition; records that expire
        unfinished leave their count until the counter itself expires, ``ttl_s`` after the
        owner's last change)."""
        return max(0, int(self.redis.get(in_flight_key(owner)) or 0))

    def webhook_attempts(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(_text(x)) for x in self.redis.lrange(job_webhooks_key(job_id), 0, -1)]

    def batch_webhook_attempts(self, batch_id: str) -> list[dict[str, Any]]:
        raw = self.redis.lrange(batch_webhooks_key(batch_id), 0, -1)
        return [json.loads(_text(x)) for x in raw]

    def get_batch(self, batch_id: str, owner: str = ANY_OWNER) -> BatchRecord | None:
        raw = {_text(k): _text(v) for k, v in self.redis.hgetall(batch_key(batch_id)).items()}
        if not raw or (owner != ANY_OWNER and raw.get("owner") != owner):
            return None
        return BatchRecord(
            batch_id=raw["batch_id"],
            owner=raw["owner"],
            created_at=float(raw["created_at"]),
            finished_at=_float(raw.get("finished_at")),
            total=int(raw.get("total", 0)),
            sealed=raw.get("sealed") == "1",
            counts=BatchCounts(**{s: max(0, int(raw.get(s, 0))) for s in _STATE_COUNTS}),
            webhook_url=raw.get("webhook_url") or None,
            source=raw.get("source") or None,
            output_prefix=raw.get("output_prefix") or None,
            summary=BatchSummary.model_validate_json(raw["summary"])
            if raw.get("summary")
            else None,
        )

    def batch_job_ids(self, batch_id: str, offset: int = 0, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        ids = self.redis.lrange(batch_jobs_key(batch_id), offset, offset + limit - 1)
        return [_text(x) for x in ids]


def open_records(settings: ConnectionSettings, socket_timeout_s: float = 10.0) -> RecordStore:
    """The record store of ``settings`` (its own Redis client; redis-py is thread-safe)."""
    client = settings.redis_client(settings.records_url, socket_timeout=socket_timeout_s)
    return RecordStore(client, settings.record_ttl_s)
