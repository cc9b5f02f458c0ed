"""``lcm-scheduler``: the role that fires schedules and turns each run into a batch.

One process holds two things:

- a **beat** thread: Celery beat with celery-redbeat's Redis-held entries and lock
  (producer/schedules/beat.py). Only the process holding the lock fires; the others wait
  on it, so any number may run, and one takes over when the holder stops (within a tick)
  or dies (within ``LCM_SCHEDULER_LOCK_TIMEOUT_S`` plus a tick).
- a small Celery **worker** (threads) on ``lcm.schedules``, which runs the tasks the beat
  sends: work out the due slots, claim each once, read the prompt source and queue the
  batch (producer/schedules/runner.py). Every lcm-scheduler consumes, the lock holder's
  firings included, so expansion needs no second role, and a claim (not the lock) is what
  guarantees one batch per (schedule, slot).

A run whose expander died (its lease, ``LCM_SCHEDULER_LEASE_S``, lapsed) is taken over by
the sweep the beat sends every ``LCM_SCHEDULER_SWEEP_S`` (a RedBeat entry of its own), by
the next firing of its schedule, or by any lcm-scheduler when it starts; tasks are also
acknowledged after they ran.
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps
from celery.beat import Service
from celery.signals import beat_init, worker_ready
from pydantic import Field, ValidationError

from lcm_fleet.backoff import Backoff
from lcm_fleet.consuming.config import Guard, consumer_app, guard_app
from lcm_fleet.consuming.settings import ConsumerSettings
from lcm_fleet.records import open_records
from lcm_fleet.schedules import (
    QUEUE_SCHEDULES,
    SWEEP_ENTRY,
    TASK_SCHEDULE_EXPAND,
    TASK_SCHEDULE_RUN,
    TASK_SCHEDULE_SWEEP,
    RunState,
    RunTrigger,
)
from lcm_fleet.settings import settings_problems
from producer.schedules.beat import LOCK_TIMEOUT_S_DEFAULT, CronScheduler, configure_beat
from producer.schedules.runner import LEASE_S_DEFAULT, Runner, RunReport, process_name
from producer.schedules.store import ScheduleStore
from producer.settings import ProducerSettings

logger = logging.getLogger(__name__)


class SchedulerSettings(ProducerSettings, ConsumerSettings):
    """One object for ``lcm-scheduler`` (prefix ``LCM_``): the producer's and these."""

    #: The beat lock's lifetime: a dead holder's lock expires this long after its last tick.
    scheduler_lock_timeout_s: int = Field(default=LOCK_TIMEOUT_S_DEFAULT, ge=2, le=3600)
    #: Longest sleep of the beat between ticks (it also retries the lock this often).
    scheduler_tick_s: float = Field(default=1.0, ge=0.1, le=60)
    #: Runs expanded at once by this process (the worker's threads).
    scheduler_concurrency: int = Field(default=2, ge=1, le=64)
    #: Lease of a run being expanded; a run whose expander went silent this long is taken over.
    scheduler_lease_s: float = Field(default=LEASE_S_DEFAULT, ge=5, le=3600)
    #: How often the beat sends the sweep that takes over runs whose expander died.
    scheduler_sweep_s: float = Field(default=30.0, ge=1, le=3600)
    #: Run the beat here (False: only expand runs, e.g. more expanders beside one beat).
    scheduler_beat: bool = True
    #: Prometheus /metrics port (0: off) and the address it binds.
    scheduler_metrics_port: int = Field(default=9465, ge=0, le=65535)
    scheduler_metrics_addr: str = "127.0.0.1"


class SchedulerMetrics:
    """Prometheus metrics of one lcm-scheduler (registered on ``registry``)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge

        reg = registry or REGISTRY
        self.started = Counter(
            "lcm_schedule_runs_started",
            "Runs whose batch this process queued",
            ["schedule", "trigger"],
            registry=reg,
        )
        self.skipped = Counter(
            "lcm_schedule_runs_skipped",
            "Due slots left behind by the missed-run policy",
            ["schedule"],
            registry=reg,
        )
        self.caught_up = Counter(
            "lcm_schedule_runs_caught_up",
            "Missed slots run late (missed: catch_up)",
            ["schedule"],
            registry=reg,
        )
        self.failed = Counter(
            "lcm_schedule_runs_failed",
            "Runs that ended failed (source unreadable, invalid rows, broker)",
            ["schedule"],
            registry=reg,
        )
        self.last_run = Gauge(
            "lcm_schedule_last_run_timestamp_seconds",
            "Unix time of the slot of the last run queued",
            ["schedule"],
            registry=reg,
        )
        self._latest: dict[str, float] = {}
        self.leader = Gauge(
            "lcm_scheduler_beat_leader",
            "1 while this process holds the beat lock (fires schedules)",
            registry=reg,
        )

    def observe(self, report: RunReport) -> None:
        name = report.schedule
        if report.skipped:
            self.skipped.labels(name).inc(report.skipped)
        for run in report.expanded:
            if run.state is RunState.FAILED:
                self.failed.labels(name).inc()
                continue
            self.started.labels(name, run.trigger.value).inc()
            if run.trigger is RunTrigger.CATCH_UP:
                self.caught_up.labels(name).inc()
            latest = self._latest[name] = max(run.slot_at, self._latest.get(name, 0.0))
            self.last_run.labels(name).set(latest)


#: The task names QUEUE_SCHEDULES carries; anything else on it is dead-lettered.
SCHEDULER_TASKS = frozenset({TASK_SCHEDULE_RUN, TASK_SCHEDULE_EXPAND, TASK_SCHEDULE_SWEEP})
#: kombu's default: an unacknowledged schedule task is delivered again after an hour (a run's
#: expansion also has its lease, LCM_SCHEDULER_LEASE_S, and the sweep).
SCHEDULES_VISIBILITY_TIMEOUT_S = 3600.0


def make_app(
    settings: SchedulerSettings, runner: Runner, metrics: SchedulerMetrics | None
) -> Celery:
    """The lcm-scheduler Celery app: the run and expand tasks, RedBeat's settings."""
    app = consumer_app("lcm_scheduler", settings, QUEUE_SCHEDULES)
    app.conf.update(settings.celery_tls_config())  # for beat's own connection too
    app.conf.update(
        beat_max_loop_interval=settings.scheduler_tick_s,
        # RedBeat's static entry beside the schedules' own: the sweep of stalled runs.
        beat_schedule={
            SWEEP_ENTRY: {
                "task": TASK_SCHEDULE_SWEEP,
                "schedule": settings.scheduler_sweep_s,
                "options": {"queue": QUEUE_SCHEDULES, "expires": settings.scheduler_sweep_s},
            }
        },
    )
    configure_beat(app, settings, settings.scheduler_lock_timeout_s)
    # The render worker's guard: a malformed item on QUEUE_SCHEDULES is dead-lettered once,
    # with its reason, and the scheduler keeps running (lcm_fleet/consuming).
    guard_app(
        app,
        settings,
        Guard(
            tasks=SCHEDULER_TASKS,
            visibility_timeout_s=SCHEDULES_VISIBILITY_TIMEOUT_S,
            max_eta_ahead_s=SCHEDULES_VISIBILITY_TIMEOUT_S / 2,
            consumer_name=f"lcm-scheduler@{socket.gethostname()}",
        ),
    )

    @app.task(name=TASK_SCHEDULE_RUN)
    def run_schedule(name: str) -> dict[str, Any]:
        report = runner.run_due(name)
        if metrics is not None:
            metrics.observe(report)
        return {"runs": [r.slot for r in report.expanded], "skipped": report.skipped}

    @app.task(name=TASK_SCHEDULE_EXPAND)
    def expand_run(name: str, slot: str) -> dict[str, Any]:
        run = runner.resume(name, slot)
        if metrics is not None and run is not None:
            metrics.observe(RunReport(name, [run]))
        return {"run": run.slot if run else None}

    @app.task(name=TASK_SCHEDULE_SWEEP)
    def sweep() -> dict[str, Any]:
        return {"resumed": _sweep(runner, metrics)}

    return app


def _sweep(runner: Runner, metrics: SchedulerMetrics | None) -> int:
    reports = runner.sweep()
    for report in reports:
        if metrics is not None:
            metrics.observe(report)
    return sum(len(r.expanded) for r in reports)


#: Waits before a beat that failed (Redis away, its lock lost) starts again and waits on
#: the lock: capped and jittered.
BEAT_RESTART = Backoff(base_s=1.0, cap_s=30.0, attempts=1_000_000)


class BeatThread(bootsteps.StartStopStep):
    """The beat, in a thread of the worker: started and stopped with it. A clean stop
    releases the lock (RedBeat's close); a standby blocked on the lock just ends. A beat that
    fails (Redis away mid-tick, its lock taken by another meanwhile) is started again after
    a backoff, and waits on the lock like a standby."""

    label = "lcm-beat"
    #: Called when the beat stopped holding the lock (the metrics' leader gauge).
    on_lost: Callable[[], None] | None = None

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.service: Service | None = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def start(self, parent: Any) -> None:
        self.thread = threading.Thread(
            target=self._run, args=(parent.app,), name="beat", daemon=True
        )
        self.thread.start()

    def _run(self, app: Celery) -> None:
        app.set_current()
        failures = 0
        while not self.stopping.is_set():
            self.service = Service(
                app, max_interval=app.conf.beat_max_loop_interval, scheduler_cls=CronScheduler
            )
            try:
                self.service.start()
                return  # stopped
            except Exception as e:  # a beat must outlive a Redis outage
                if self.on_lost is not None:
                    self.on_lost()
                delay = BEAT_RESTART.delay(failures)
                failures += 1
                logger.warning(
                    "beat stopped (%s: %s); starting it again in %.1f s", type(e).__name__, e, delay
                )
                self.stopping.wait(delay)

    def stop(self, parent: Any) -> None:
        self.stopping.set()
        if self.service is not None:
            self.service.stop(wait=False)
        if self.thread is not None:
            self.thread.join(timeout=float(parent.app.conf.beat_max_loop_interval) + 5.0)


def _serve_metrics(settings: SchedulerSettings) -> SchedulerMetrics:
    if not settings.scheduler_metrics_port:
        return SchedulerMetrics()
    from prometheus_client import start_http_server

    metrics = SchedulerMetrics()
    start_http_server(settings.scheduler_metrics_port, addr=settings.scheduler_metrics_addr)
    logger.info(
        "metrics on http://%s:%d/metrics",
        settings.scheduler_metrics_addr,
        settings.scheduler_metrics_port,
    )
    return metrics


def _settings() -> SchedulerSettings:
    try:
        return SchedulerSettings()
    except ValidationError as e:
        raise SystemExit(
            f"lcm-scheduler: settings are not valid: {'; '.join(settings_problems(e))}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """``lcm-scheduler``: fire schedules (when holding the beat lock) and expand their runs."""
    parser = argparse.ArgumentParser(prog="lcm-scheduler", description=main.__doc__)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    settings = _settings()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    records = open_records(settings)
    store = ScheduleStore(records.redis, settings.record_ttl_s)
    runner = Runner(store, settings, lease_s=settings.scheduler_lease_s, worker=process_name())
    metrics = _serve_metrics(settings)
    app = make_app(settings, runner, metrics)
    started = time.monotonic()

    @beat_init.connect(weak=False)
    def _leader(sender: Any = None, **_: Any) -> None:
        # RedBeat's own beat_init handler (connected first) returns once the lock is held.
        if getattr(sender.scheduler, "lock", None) is not None:
            metrics.leader.set(1)
            logger.info(
                "lcm-scheduler %s holds the beat lock after %.2f s: it fires the schedules",
                runner.worker,
                time.monotonic() - started,
            )

    @worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        # Runs a previous process left half-done are taken over at once (not at the next sweep).
        threading.Thread(target=_sweep, args=(runner, metrics), name="sweep", daemon=True).start()
        logger.info("lcm-scheduler %s ready: consuming %s", runner.worker, QUEUE_SCHEDULES)

    if settings.scheduler_beat:
        lost = staticmethod(lambda: metrics.leader.set(0))
        app.steps["worker"].add(type("LcmBeat", (BeatThread,), {"on_lost": lost}))
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={settings.scheduler_concurrency}",
            f"--queues={QUEUE_SCHEDULES}",
            f"--hostname=lcm-scheduler-{runner.worker.replace(':', '-')}@{socket.gethostname()}",
            f"--loglevel={args.log_level.upper()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
