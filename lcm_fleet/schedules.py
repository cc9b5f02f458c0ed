"""Schedules: "every night at 02:00 in Europe/Berlin, render this file of prompts".

A :class:`Schedule` names a cron expression (5 fields) in a time zone, a prompt source (a
JSONL or CSV file, local or ``s3://bucket/key``, read like ``lcm submit-file`` reads it), an
optional prompt template with date variables, job defaults, an output prefix and what to do
with slots missed while no scheduler ran. Each firing is one *run* of one *slot* (the
instant the cron names), and each run is one batch of bulk jobs, created once per
(schedule, slot) (producer/schedules/store.py).

Slots are computed here, on wall-clock time in the schedule's zone, with croniter (imported
when first needed: the kernel stays light). Daylight saving time, stated once:

- **spring forward** (a wall-clock hour that does not exist): a slot in the gap runs at the
  first instant after it (``30 2 * * *`` in Europe/Berlin on the last Sunday of March runs at
  03:00 CEST); slots that land on the same instant are one slot, one run;
- **fall back** (a wall-clock hour that happens twice): a slot in it runs once, in its first
  pass (``30 2 * * *`` runs at 02:30 CEST, not again at 02:30 CET; ``*/15 * * * *`` has no
  slots in the second pass).

So slots are strictly increasing instants and a slot's id (its UTC time) is unique.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lcm_fleet.contract import quote
from lcm_fleet.enums import TextEnum
from lcm_fleet.errors import InvalidJob
from lcm_fleet.records import LOCAL_OWNER

UTC = timezone.utc
#: Celery task that the beat sends when a schedule fires: ``args=[name]``, on QUEUE_SCHEDULES.
TASK_SCHEDULE_RUN = "lcm_fleet.schedule_run"
#: Celery task that expands one claimed run: ``args=[name, slot]`` (run-now over HTTP).
TASK_SCHEDULE_EXPAND = "lcm_fleet.schedule_expand"
#: Celery task that takes over stalled runs of every schedule, sent by the beat's own entry
#: ``SWEEP_ENTRY`` every LCM_SCHEDULER_SWEEP_S (a name no schedule can have: it has a dot).
TASK_SCHEDULE_SWEEP = "lcm_fleet.schedule_sweep"
SWEEP_ENTRY = "lcm.sweep"
#: Queue of these tasks, consumed only by lcm-scheduler (never by render workers).
QUEUE_SCHEDULES = "lcm.schedules"
#: A schedule's name: it becomes part of Redis keys, batch and job ids and object keys.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
#: The five cron fields, in order.
CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_RANGES = ("0-59", "0-23", "1-31", "1-12 or JAN-DEC", "0-7 or SUN-SAT")
#: A slot's id: its instant in UTC, ISO 8601 basic format (sortable, safe in keys and paths).
SLOT_FORMAT = "%Y%m%dT%H%M%SZ"
DEFAULT_OUTPUT_PREFIX = "schedules/{name}/{slot}"
#: The most slots one catch-up may run.
CATCH_UP_MAX = 1000
#: Missed slots counted past the ones a run takes (a schedule stopped for years stops counting).
SKIPPED_COUNT_CAP = 10_000
#: How far past "now" the backward scan starts, so that a repeated (fall-back) hour's slots
#: are seen; longer than any DST repeat in the tz database.
_REPEAT_MARGIN = timedelta(hours=3)
#: Cron matches scanned for one answer before the expression is taken to never fire.
_SCAN_LIMIT = 200_000
PREFIX_MAX_CHARS = 200
_PREFIX_CHARS = frozenset(string.ascii_letters + string.digits + "._/-")

#: Variables of a prompt template and of an output prefix (their values for each slot, in
#: the schedule's time zone unless said otherwise).
TEMPLATE_VARIABLES: dict[str, str] = {
    "name": "the schedule's name",
    "slot": "the slot's id: its UTC time, e.g. 20261203T010000Z",
    "date": "the slot's local date, 2026-12-03",
    "time": "the slot's local time, 02:00",
    "datetime": "the slot's local date and time with its UTC offset, 2026-12-03T02:00:00+01:00",
    "year": "2026",
    "month": "12",
    "day": "03",
    "hour": "02",
    "minute": "00",
    "weekday": "the local weekday's English name, Thursday",
    "timezone": "the schedule's time zone, Europe/Berlin",
}
#: Only in a prompt template: the row's own prompt.
PROMPT_VARIABLE = "prompt"


class InvalidSchedule(InvalidJob):
    """A schedule that can never run as written; the message names the schedule, the field,
    the value and what is allowed. An InvalidJob, so every role's input-error handling
    (``lcm`` exit code 2, HTTP 400) applies."""


class MissedPolicy(TextEnum):
    """What a run does with slots that passed while no scheduler fired them."""

    #: Run only the latest due slot; the older ones are counted as skipped.
    SKIP = "skip"
    #: Run the missed slots too, oldest first, at most ``catch_up_max`` (the latest ones).
    CATCH_UP = "catch_up"


class RunTrigger(TextEnum):
    CRON = "cron"
    #: A missed slot run late (``missed: catch_up``).
    CATCH_UP = "catch_up"
    #: ``lcm schedule run-now`` / ``POST /v1/schedules/{name}/run``.
    MANUAL = "manual"


class RunState(TextEnum):
    #: Claimed, waiting for a scheduler process to expand it (run-now over HTTP).
    PENDING = "pending"
    #: A scheduler process is reading the source and queueing the jobs (under a lease).
    SUBMITTING = "submitting"
    #: Every job is queued; the batch record tells how they do.
    SUBMITTED = "submitted"
    #: Nothing more will be queued: ``reason`` says why (the batch has what was queued).
    FAILED = "failed"


ALLOWED: dict[str, str] = {
    "name": "1-64 letters, digits, '_' or '-', starting with a letter or digit",
    "cron": "5 fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *'",
    "timezone": "an IANA time zone name such as UTC or Europe/Berlin",
    "source": "a .jsonl, .ndjson or .csv file: a local path or s3://bucket/key",
    "template": "text with {prompt} and the variables "
    + ", ".join("{" + v + "}" for v in TEMPLATE_VARIABLES),
    "output_prefix": f"at most {PREFIX_MAX_CHARS} characters of letters, digits, '.', '_', '-'"
    " and '/', with {slot} and the variables above (no '..', no leading '/')",
    "missed": "skip or catch_up",
    "catch_up_max": f"an integer from 1 to {CATCH_UP_MAX}, with missed: catch_up only",
    "defaults": "job fields for rows that leave them out: seed, steps, guidance_scale, "
    "width, height, num_images",
}


def check_cron(expr: str) -> str:
    """The expression with single spaces; ValueError naming the bad field and its range."""
    from croniter import CroniterError, croniter

    if not isinstance(expr, str):
        raise ValueError(f"must be text, got {type(expr).__name__}")
    fields = expr.split()
    if len(fields) != len(CRON_FIELDS):
        raise ValueError(
            f"has {len(fields)} field(s); a cron expression has 5: {' '.join(CRON_FIELDS)} "
            "(no seconds field, no @daily-style macros)"
        )
    for index, (field, span) in enumerate(zip(CRON_FIELDS, _CRON_RANGES, strict=True)):
        probe = ["*"] * len(CRON_FIELDS)
        probe[index] = fields[index]
        if not croniter.is_valid(" ".join(probe)):
            raise ValueError(f"its {field} field {quote(fields[index])} is not valid ({span})")
    text = " ".join(fields)
    if not croniter.is_valid(text):
        raise ValueError("is not a valid cron expression")
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterError:
        raise ValueError("names no date that exists (e.g. 30 February)") from None
    return text


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"is not a time zone of the tz database ({e})") from None


def _wall(at: datetime, zone: ZoneInfo) -> datetime:
    """The naive wall-clock time of an instant in ``zone``."""
    return at.astimezone(zone).replace(tzinfo=None)


def _offset_at(ts: int, zone: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(ts, zone).utcoffset()


def instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a naive wall-clock time in ``zone``: a repeated time's first
    occurrence; for a time in a gap, the first instant after the gap."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if _wall(first, zone) == wall:
        return first
    # In a gap: the transition lies between the two readings of the wall time.
    other = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo, hi = sorted((int(first.timestamp()), int(other.timestamp())))
    after = _offset_at(hi, zone)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset_at(mid, zone) == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


@dataclass(frozen=True)
class DueSlots:
    """The slots a run takes, oldest first, and how many older due ones it leaves."""

    slots: tuple[datetime, ...]
    skipped: int
    #: True when the skipped count stopped at SKIPPED_COUNT_CAP.
    skipped_capped: bool = False


@dataclass(frozen=True)
class CronClock:
    """A cron expression read in a time zone: the slots it names, as UTC instants."""

    expr: str
    zone: ZoneInfo

    def next_after(self, at: datetime) -> datetime:
        """The first slot strictly after ``at`` (an aware datetime)."""
        from croniter import croniter

        # The wall time of `at` maps back to `at` or earlier (first pass of a repeated hour),
        # so no slot before it can lie after `at`.
        it = croniter(self.expr, _wall(at, self.zone))
        for _ in range(_SCAN_LIMIT):
            slot = instant(it.get_next(datetime), self.zone)
            if slot > at:
                return slot
        raise InvalidSchedule(f"cron {self.expr!r} has no slot after {at.isoformat()}")

    def due(self, after: datetime, now: datetime, limit: int) -> DueSlots:
        """The latest ``limit`` slots in ``(after, now]``, oldest first, and the count of the
        older ones in that range (up to SKIPPED_COUNT_CAP)."""
        from croniter import croniter

        it = croniter(self.expr, _wall(now, self.zone) + _REPEAT_MARGIN)
        newest: list[datetime] = []
        skipped, previous = 0, None
        for _ in range(_SCAN_LIMIT + SKIPPED_COUNT_CAP):
            slot = instant(it.get_prev(datetime), self.zone)
            if slot > now or slot == previous:  # past the margin, or a gap merged into one
                continue
            if slot <= after:
                break
            previous = slot
            if len(newest) < limit:
                newest.append(slot)
                continue
            skipped += 1
            if skipped >= SKIPPED_COUNT_CAP:
                return DueSlots(tuple(reversed(newest)), skipped, skipped_capped=True)
        return DueSlots(tuple(reversed(newest)), skipped)


def slot_id(at: datetime) -> str:
    return at.astimezone(UTC).strftime(SLOT_FORMAT)


def parse_slot(text: str) -> datetime:
    """A slot id back to its instant; ValueError naming the format."""
    try:
        return datetime.strptime(text, SLOT_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(
            f"slot {quote(text)} is not a slot id; write it as UTC time YYYYMMDDTHHMMSSZ, "
            "e.g. 20261203T020000Z"
        ) from None


def _template_names(text: str, what: str) -> set[str]:
    """The variables of a format string; ValueError for anything but plain ``{name}``."""
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(
            f"is not a valid {what} ({e}); write a literal brace as {{{{ or }}}}"
        ) from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if spec or conversion or not field.isidentifier():
            raise ValueError(
                f"has {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}: write variables as plain {{name}}"
            )
        names.add(field)
    return names


def _check_variables(text: str, what: str, allowed: set[str]) -> set[str]:
    names = _template_names(text, what)
    unknown = sorted(names - allowed)
    if unknown:
        raise ValueError(
            f"names unknown variable(s) {', '.join('{' + n + '}' for n in unknown)}; known: "
            + ", ".join("{" + n + "}" for n in sorted(allowed))
        )
    return names


def check_prefix(prefix: str) -> str:
    """An output prefix as the job contract allows it (the interface of Job.output_prefix)."""
    bad = sorted(set(prefix) - _PREFIX_CHARS)
    if bad:
        raise ValueError(f"holds {''.join(bad)!r}; allowed: letters, digits, '.', '_', '-', '/'")
    if ".." in prefix or prefix.startswith("/") or not prefix.strip("/"):
        raise ValueError("must be a relative key prefix: not empty, no '..', no leading '/'")
    if len(prefix) > PREFIX_MAX_CHARS:
        raise ValueError(f"is {len(prefix)} characters long; at most {PREFIX_MAX_CHARS}")
    return prefix


class JobDefaults(BaseModel):
    """Job fields for the rows of a schedule's source that leave them out (what
    ``lcm submit-file --steps ...`` takes); checked by the job contract itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    num_images: int | None = None

    @model_validator(mode="after")
    def _as_a_job(self) -> JobDefaults:
        from lcm_fleet.contract import parse_job

        try:
            parse_job({"prompt": "x", **self.given()})
        except InvalidJob as e:
            raise ValueError(str(e).removeprefix("invalid job: ")) from None
        return self

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class Schedule(BaseModel):
    """One schedule's definition, as a schedule file, the CLI and the HTTP API give it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    cron: str = Field(max_length=200)
    timezone: str = "UTC"
    source: str = Field(min_length=1, max_length=2000)
    template: str | None = Field(default=None, max_length=2000)
    defaults: JobDefaults = JobDefaults()
    output_prefix: str = DEFAULT_OUTPUT_PREFIX
    missed: MissedPolicy = MissedPolicy.SKIP
    catch_up_max: int | None = Field(default=None, ge=1, le=CATCH_UP_MAX)
    enabled: bool = True
    #: Where each run's batch reports when it finishes (the batch webhook).
    webhook_url: str | None = Field(default=None, max_length=2000)
    #: The API key id that owns it, or ``local`` (the CLI).
    owner: str = LOCAL_OWNER

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(NAME_PATTERN, value):
            raise ValueError("is not a schedule name")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        check_timezone(value)
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        path = value
        if value.startswith("s3://"):
            bucket, _, key = value.removeprefix("s3://").partition("/")
            if not bucket or not key:
                raise ValueError("is an s3:// URI without a bucket or a key (s3://bucket/key)")
            path = key
        suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
        if suffix not in ("jsonl", "ndjson", "csv"):
            raise ValueError("does not end in .jsonl, .ndjson or .csv")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            _check_variables(value, "template", {*TEMPLATE_VARIABLES, PROMPT_VARIABLE})
        return value

    @field_validator("output_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        names = _check_variables(value, "output prefix", set(TEMPLATE_VARIABLES))
        if "slot" not in names:
            raise ValueError("has no {slot}: every run needs a prefix of its own")
        sample = {name: "x" for name in TEMPLATE_VARIABLES}
        check_prefix(value.format_map({**sample, "datetime": "x", "timezone": "x"}))
        return value

    @model_validator(mode="after")
    def _policy(self) -> Schedule:
        if self.missed is MissedPolicy.CATCH_UP and self.catch_up_max is None:
            raise ValueError(
                "field 'catch_up_max' is required with missed: catch_up (the most missed "
                f"slots one run may make up, 1 to {CATCH_UP_MAX})"
            )
        if self.missed is MissedPolicy.SKIP and self.catch_up_max is not None:
            raise ValueError("field 'catch_up_max' applies to missed: catch_up only")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def clock(self) -> CronClock:
        return CronClock(self.cron, self.zone)

    @property
    def run_limit(self) -> int:
        """The most slots one run takes: the latest only, or the catch-up bound."""
        return (self.catch_up_max or 1) if self.missed is MissedPolicy.CATCH_UP else 1

    def variables(self, slot: datetime) -> dict[str, str]:
        """The template variables of ``slot`` (see TEMPLATE_VARIABLES)."""
        local = slot.astimezone(self.zone)
        return {
            "name": self.name,
            "slot": slot_id(slot),
            "date": local.strftime("%Y-%m-%d"),
            "time": local.strftime("%H:%M"),
            "datetime": local.isoformat(),
            "year": local.strftime("%Y"),
            "month": local.strftime("%m"),
            "day": local.strftime("%d"),
            "hour": local.strftime("%H"),
            "minute": local.strftime("%M"),
            "weekday": local.strftime("%A"),
            "timezone": self.timezone,
        }

    def prefix_for(self, slot: datetime) -> str:
        return check_prefix(self.output_prefix.format_map(self.variables(slot)).strip("/"))

    def prompt_for(self, prompt: str, slot: datetime) -> str:
        if self.template is None:
            return prompt
        return self.template.format_map({**self.variables(slot), PROMPT_VARIABLE: prompt})

    def batch_id(self, slot: datetime) -> str:
        """The batch of the run of ``slot``: one id per (schedule, slot)."""
        return f"{self.name}.{slot_id(slot)}"


def _describe(name: str, error: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ()))
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    where = f"schedule {name!r}"
    if not loc:
        return f"{where}: {msg}"
    field = str(error["loc"][0])
    if error.get("type") == "missing":
        problem = "is required"
    elif error.get("type") == "extra_forbidden":
        return f"{where}: field {loc!r} is not part of a schedule; known fields: " + ", ".join(
            f for f in Schedule.model_fields if f != "owner"
        )
    else:
        problem = f"got {quote(error.get('input'))}: {msg}"
    allowed = None if "allowed:" in problem else ALLOWED.get(field)
    return f"{where}: field {loc!r} {problem}" + (f"; allowed: {allowed}" if allowed else "")


def schedule_problems(payload: Any, where: str = "") -> list[str]:
    """Every problem of a schedule definition, each naming the schedule and the field."""
    name = payload.get("name") if isinstance(payload, dict) else None
    label = str(name) if isinstance(name, str) and name else (where or "(no name)")
    if not isinstance(payload, dict):
        return [f"schedule {label!r}: must be a mapping of fields, got {type(payload).__name__}"]
    try:
        Schedule.model_validate(payload)
    except ValidationError as e:
        return [_describe(label, err) for err in e.errors()]
    return []


def parse_schedule(payload: Any, owner: str | None = None) -> Schedule:
    """A checked schedule; :class:`InvalidSchedule` listing every problem."""
    if isinstance(payload, dict) and owner is not None:
        payload = {**payload, "owner": owner}
    problems = schedule_problems(payload)
    if problems:
        raise InvalidSchedule("; ".join(problems))
    return Schedule.model_validate(payload)


class ScheduleRun(BaseModel):
    """One run: a schedule's slot and the batch it made (producer/schedules/store.py)."""

    model_config = ConfigDict(frozen=True)

    schedule: str
    slot: str
    #: The slot's instant, Unix seconds.
    slot_at: float
    trigger: RunTrigger
    state: RunState
    batch_id: str
    output_prefix: str
    claimed_at: float
    submitted_at: float | None = None
    #: Jobs queued for it.
    jobs: int = 0
    #: Older due slots this run left (missed: skip, or past the catch-up bound).
    skipped_before: int = 0
    reason: str | None = None
    #: The scheduler process that expands it, while it does, and until when it may.
    worker: str | None = None
    lease_until: float | None = None

    @property
    def finished_submitting(self) -> bool:
        return self.state in (RunState.SUBMITTED, RunState.FAILED)
