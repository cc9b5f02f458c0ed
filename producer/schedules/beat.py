"""The beat side of schedules: celery-redbeat entries that fire on a cron read in a time zone.

RedBeat keeps each entry in Redis (a hash with its JSON definition and its last run, and a
sorted set scored by the next due time) and lets one beat at a time fire them: the beat
takes a Redis lock (``redbeat_lock_key``) with a timeout at start, extends it on every
tick, and releases it on a clean stop. A standby beat blocks on the lock, trying again
every ``max_interval`` seconds (1 s for the threaded beat lcm-scheduler runs), so it takes
over within that of a clean stop, and within the lock timeout
(``LCM_SCHEDULER_LOCK_TIMEOUT_S``) plus that of a crash.

RedBeat's own crontab entries carry no time zone (its JSON encoder writes the five fields
only, read back in the app's zone), so an entry here holds a :class:`CronSchedule`: the
expression and an IANA zone, encoded by a subclass of RedBeat's JSON encoder and decoder
(``__type__: lcm-cron``), and asked for its next slot with
:class:`lcm_fleet.schedules.CronClock` (DST rules there). The entry fires the run task; the
task works out which slots are due and claims them (producer/schedules/runner.py), so a
late, repeated or duplicated firing never makes a second batch.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from celery import Celery
from celery.schedules import BaseSchedule, schedstate
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder
from redbeat.schedulers import RedBeatScheduler, RedBeatSchedulerEntry, get_redis

from lcm_fleet.contract import WIRE_CONFIG
from lcm_fleet.keys import REDBEAT_PREFIX
from lcm_fleet.schedules import (
    QUEUE_SCHEDULES,
    TASK_SCHEDULE_RUN,
    UTC,
    CronClock,
    Schedule,
)
from lcm_fleet.settings import ConnectionSettings

logger = logging.getLogger(__name__)

_TYPE = "lcm-cron"
#: Beat lock timeout when none is configured (LCM_SCHEDULER_LOCK_TIMEOUT_S).
LOCK_TIMEOUT_S_DEFAULT = 10


class CronSchedule(BaseSchedule):
    """A Celery beat schedule: a 5-field cron expression in an IANA time zone."""

    def __init__(self, cron: str, timezone: str, nowfun: Any = None, app: Any = None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.cron = cron
        self.timezone = timezone
        self.clock = CronClock(cron, ZoneInfo(timezone))

    def _aware(self, at: datetime) -> datetime:
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.clock.next_after(self._aware(last_run_at)) - self._aware(self.now())

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self._aware(self.now())
        due = self.clock.next_after(self._aware(last_run_at)) <= now
        nxt = self.clock.next_after(now) if due else self.clock.next_after(self._aware(last_run_at))
        return schedstate(due, max(0.0, (nxt - now).total_seconds()))

    def __repr__(self) -> str:
        return f"<CronSchedule {self.cron!r} in {self.timezone}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.cron, self.timezone))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CronSchedule):
            return (self.cron, self.timezone) == (other.cron, other.timezone)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.cron, self.timezone))


class _Encoder(RedBeatJSONEncoder):
    def default(self, obj: Any) -> Any:
        if isinstance(obj, CronSchedule):
            return {"__type__": _TYPE, "cron": obj.cron, "timezone": obj.timezone}
        return super().default(obj)


class _Decoder(RedBeatJSONDecoder):
    def dict_to_object(self, d: dict[str, Any]) -> Any:
        if d.get("__type__") == _TYPE:
            return CronSchedule(d["cron"], d["timezone"])
        return super().dict_to_object(d)


class CronEntry(RedBeatSchedulerEntry):
    """A RedBeat entry whose definition may hold a :class:`CronSchedule`.

    RedBeat's ``save`` writes the definition with its own encoder, so this one writes it with
    the subclass (same hash fields, same sorted set); reading goes through
    ``decode_definition``, RedBeat's hook for it.
    """

    @staticmethod
    def decode_definition(definition: Any) -> Any:
        return json.loads(definition, cls=_Decoder)

    def save(self) -> CronEntry:
        definition = {
            "name": self.name,
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "schedule": self.schedule,
            "enabled": self.enabled,
        }
        conf = self.app.redbeat_conf
        with get_redis(self.app).pipeline() as pipe:
            pipe.hset(self.key, "definition", json.dumps(definition, cls=_Encoder))
            # The last run is kept when a definition is replaced (RedBeat's own rule).
            pipe.hsetnx(
                self.key, "meta", json.dumps({"last_run_at": self.last_run_at}, cls=_Encoder)
            )
            pipe.zadd(conf.schedule_key, {self.key: self.score})
            pipe.execute()
        return self


class CronScheduler(RedBeatScheduler):
    """RedBeat's scheduler (lock, Redis-held entries) with :class:`CronEntry` entries."""

    Entry = CronEntry


def configure_beat(app: Celery, settings: ConnectionSettings, lock_timeout_s: float) -> None:
    """RedBeat's settings on ``app``: Redis of the records, lcm-fleet's key prefix, the lock."""
    app.conf.update(
        redbeat_redis_url=settings.records_url,
        redbeat_redis_use_ssl=settings.celery_tls_config().get("broker_use_ssl"),
        redbeat_redis_options={},
        redbeat_key_prefix=REDBEAT_PREFIX,
        redbeat_lock_timeout=int(lock_timeout_s),
        # No result backend to clean: no default celery.backend_cleanup entry either.
        result_expires=None,
    )


def beat_client(
    settings: ConnectionSettings, lock_timeout_s: float = LOCK_TIMEOUT_S_DEFAULT
) -> Celery:
    """A Celery app that writes RedBeat entries (the CLI and the HTTP API; no tasks)."""
    app = Celery("lcm_schedules_client", broker=settings.redis_url, set_as_current=False)
    app.conf.update(WIRE_CONFIG)
    app.conf.update(settings.celery_tls_config())
    configure_beat(app, settings, lock_timeout_s)
    return app


class BeatEntries:
    """The RedBeat entry of each schedule: written when a schedule is put, paused, resumed
    or removed (the entry only fires the run task; the schedule record is the truth)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def _entry(self, schedule: Schedule) -> CronEntry:
        return CronEntry(
            name=schedule.name,
            task=TASK_SCHEDULE_RUN,
            schedule=CronSchedule(schedule.cron, schedule.timezone, app=self.app),
            args=[schedule.name],
            options={"queue": QUEUE_SCHEDULES},
            enabled=schedule.enabled,
            app=self.app,
        )

    def save(self, schedule: Schedule, restart: bool = False) -> None:
        """Write the entry; ``restart``: count from now (a new cron, a resume), so the beat
        does not fire at once for a slot the schedule has already left behind."""
        entry = self._entry(schedule).save()
        if restart:
            entry.reschedule()

    def delete(self, name: str) -> None:
        CronEntry(name=name, app=self.app).delete()

    def get(self, name: str) -> CronEntry | None:
        try:
            return CronEntry.from_key(CronEntry.generate_key(self.app, name), app=self.app)
        except KeyError:
            return None
