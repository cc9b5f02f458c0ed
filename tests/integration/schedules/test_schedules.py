"""Schedule runs on real Redis with a driven clock (no scheduler process, no worker: the jobs
stay queued): one batch per (schedule, slot) under concurrency, catch-up and skip after a
downtime, a stalled run taken over once, pause and resume, and `lcm schedule` itself."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lcm_fleet.keys import schedule_state_key
from lcm_fleet.records import open_records
from lcm_fleet.schedules import UTC, RunState, RunTrigger, parse_schedule, slot_id
from producer.schedules.manage import Schedules
from producer.schedules.runner import Runner
from producer.schedules.store import ClaimOutcome, ScheduleStore
from producer.settings import ProducerSettings
from tests.integration.conftest import TEST_REDIS_URL, run_cli
from tests.integration.schedules.conftest import (
    batch_keys,
    queued,
    write_source,
)

#: The driven clock: just after an hour, so hourly slots are easy to count.
NOW = datetime(2026, 12, 3, 10, 2, tzinfo=UTC)


@pytest.fixture
def settings(queue: str) -> ProducerSettings:
    return ProducerSettings(redis_url=TEST_REDIS_URL, queue=queue, served_size_check="off")


@pytest.fixture
def store(redis: Any, settings: ProducerSettings) -> ScheduleStore:
    return ScheduleStore(open_records(settings).redis, settings.record_ttl_s)


def unique(name: str) -> str:
    """A name of this test run: its batch and job ids are new (records outlive a test)."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


def _hourly(tmp_path: Path, name: str, **fields: Any) -> Any:
    source = write_source(tmp_path / f"{name}.jsonl", ["a red fox", "a blue owl"])
    base = {"name": name, "cron": "0 * * * *", "source": str(source), "defaults": {"steps": 2}}
    return parse_schedule({**base, **fields}, owner="local")


def _down_since(store: ScheduleStore, schedule: Any, hours: float) -> None:
    """The schedule exists since long ago and last ran ``hours`` before NOW."""
    store.put(schedule, now=(NOW - timedelta(days=2)).timestamp())
    store.redis.hset(
        schedule_state_key(schedule.name),
        "last_slot",
        repr((NOW - timedelta(hours=hours)).timestamp()),
    )


def test_concurrent_claims_of_one_slot_make_one_run(store, tmp_path):
    name = unique("claims")
    schedule = _hourly(tmp_path, name)
    store.put(schedule, now=(NOW - timedelta(days=1)).timestamp())
    slot = NOW.replace(minute=0)
    outcomes: list[ClaimOutcome] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        outcomes.append(store.claim(schedule, slot, RunTrigger.CRON, worker=f"w{i}", lease_s=30))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(ClaimOutcome.CLAIMED) == 1
    assert set(outcomes) <= {ClaimOutcome.CLAIMED, ClaimOutcome.PAST, ClaimOutcome.TAKEN}
    assert len(store.runs(name)) == 1


def test_catch_up_after_a_downtime_runs_the_latest_n_once_even_with_two_runners(
    store, settings, redis, queue, tmp_path
):
    name = unique("catchup")
    schedule = _hourly(tmp_path, name, missed="catch_up", catch_up_max=3)
    _down_since(store, schedule, hours=5)  # slots 06:00 .. 10:00 missed: 5, bound 3
    runners = [Runner(store, settings, worker=f"scheduler-{i}") for i in range(2)]
    reports: list[Any] = []
    barrier = threading.Barrier(2)

    def fire(runner: Runner) -> None:
        barrier.wait()
        reports.append(runner.run_due(name, now=NOW))

    threads = [threading.Thread(target=fire, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expanded = [run for report in reports for run in report.expanded]
    assert sorted(r.slot for r in expanded) == [
        "20261203T080000Z",
        "20261203T090000Z",
        "20261203T100000Z",
    ]
    assert sum(report.skipped for report in reports) == 2  # 06:00 and 07:00, counted once
    assert batch_keys(redis, name) == [
        f"lcm-fleet:batch:{name}.{r.slot}" for r in sorted(expanded, key=lambda r: r.slot)
    ]
    assert queued(redis, queue) == 3 * 2  # every run's two jobs, queued once
    runs = {r.slot: r for r in store.runs(name)}
    assert runs["20261203T080000Z"].trigger is RunTrigger.CATCH_UP
    assert runs["20261203T080000Z"].skipped_before == 2
    assert runs["20261203T100000Z"].trigger is RunTrigger.CRON  # 2 min late: on time
    assert all(r.state is RunState.SUBMITTED and r.jobs == 2 for r in runs.values())
    records = open_records(settings)
    batch = records.get_batch(f"{name}.20261203T090000Z")
    assert batch is not None and batch.sealed and batch.total == 2 and batch.counts.queued == 2
    assert records.batch_job_ids(f"{name}.20261203T090000Z") == [
        f"{name}.20261203T090000Z-000001",
        f"{name}.20261203T090000Z-000002",
    ]
    # Fired again (a restart, a redelivered task): nothing new.
    again = runners[0].run_due(name, now=NOW + timedelta(minutes=1))
    assert again.expanded == [] and queued(redis, queue) == 6


def test_skip_after_a_downtime_runs_only_the_latest_slot(store, settings, redis, tmp_path):
    name = unique("skipper")
    schedule = _hourly(tmp_path, name, template="{prompt} at {time} on {date}")
    _down_since(store, schedule, hours=5)
    report = Runner(store, settings).run_due(name, now=NOW)
    assert [r.slot for r in report.expanded] == ["20261203T100000Z"] and report.skipped == 4
    job = open_records(settings).get_job(f"{name}.20261203T100000Z-000001")
    assert job is not None and job.job is not None
    assert job.job.prompt == "a red fox at 10:00 on 2026-12-03" and job.job.steps == 2
    assert batch_keys(redis, name) == [f"lcm-fleet:batch:{name}.20261203T100000Z"]


def test_a_run_whose_scheduler_died_is_taken_over_once_into_the_same_batch(
    store, settings, redis, queue, tmp_path
):
    name = unique("stalled")
    schedule = _hourly(tmp_path, name)
    store.put(schedule, now=(NOW - timedelta(hours=1, minutes=30)).timestamp())
    slot = NOW.replace(minute=0)
    # A scheduler claimed 10:00 with a short lease, then died before queueing anything.
    assert (
        store.claim(schedule, slot, RunTrigger.CRON, worker="dead", lease_s=1, now=NOW.timestamp())
        is ClaimOutcome.CLAIMED
    )
    early = Runner(store, settings, worker="alive").run_due(name, now=NOW)
    assert early.expanded == []  # the lease holds: nobody takes it yet
    later = NOW + timedelta(seconds=5)
    reports = [
        Runner(store, settings, worker=f"alive-{i}").run_due(name, now=later) for i in range(2)
    ]
    assert [len(r.expanded) for r in reports] == [1, 0]
    (run,) = store.runs(name)
    assert run.state is RunState.SUBMITTED and run.worker == "alive-0" and run.jobs == 2
    assert batch_keys(redis, name) == [f"lcm-fleet:batch:{name}.{slot_id(slot)}"]
    assert queued(redis, queue) == 2


def test_a_failed_run_records_why_and_is_not_retried_as_a_new_batch(
    store, settings, redis, tmp_path
):
    name = unique("broken")
    schedule = _hourly(tmp_path, name)
    Path(schedule.source).unlink()
    _down_since(store, schedule, hours=1)
    report = Runner(store, settings).run_due(name, now=NOW)
    (run,) = report.failed
    assert run.state is RunState.FAILED and "cannot read the jobs file" in (run.reason or "")
    assert Runner(store, settings).run_due(name, now=NOW).expanded == []
    assert batch_keys(redis, name) == []


def test_pause_stops_runs_and_resume_starts_from_the_next_slot(settings, redis, tmp_path):
    ops = Schedules(settings)
    name = unique("pausing")
    schedule = _hourly(tmp_path, name)
    ops.put(schedule)
    runner = Runner(ops.store, settings)
    ops.store.redis.hset(
        schedule_state_key(name), "last_slot", repr((NOW - timedelta(hours=3)).timestamp())
    )
    assert ops.set_enabled(name, "local", enabled=False) is not None
    assert runner.run_due(name, now=NOW).paused
    assert ops.entries.get(name).enabled is False  # the beat does not fire it either
    ops.set_enabled(name, "local", enabled=True)
    assert ops.entries.get(name).enabled is True
    # Slots that passed while paused are neither run nor caught up: last slot is "now".
    state = ops.store.state(name)
    assert state is not None and state.last_slot > NOW.timestamp()
    assert runner.run_due(name, now=NOW).expanded == []
    assert ops.get(name, "someone-else") is None and ops.get(name, "local") is not None


def _lcm(*args: str, queue: str) -> Any:
    env = {"LCM_REDIS_URL": TEST_REDIS_URL, "LCM_QUEUE": queue, "LCM_SERVED_SIZE_CHECK": "off"}
    return run_cli("producer.cli", "schedule", *args, env=env, check=False)


def test_lcm_schedule_apply_checks_the_whole_file_then_applies_shows_runs_and_prunes(
    redis, queue, tmp_path
):
    write_source(tmp_path / "p.jsonl", ["a red fox", "a blue owl"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "schedules:\n"
        "  - {name: good, cron: '0 2 * * *', source: p.jsonl}\n"
        "  - {name: other, cron: '0 2 * * * *', source: p.jsonl, timezone: Nowhere}\n"
    )
    done = _lcm("apply", str(bad), queue=queue)
    assert done.returncode == 2, done.stderr
    assert "schedule 'other': field 'cron' got '0 2 * * * *'" in done.stderr
    assert "schedule 'other': field 'timezone' got 'Nowhere'" in done.stderr
    assert "nothing was applied" in done.stderr
    assert redis.exists("lcm-fleet:schedule:good") == 0  # the good one neither

    good = tmp_path / "good.yaml"
    good.write_text(
        "schedules:\n"
        "  - {name: good, cron: '0 2 * * *', timezone: Europe/Berlin, source: p.jsonl,\n"
        "     template: '{prompt}, {date}', defaults: {steps: 2}}\n"
        "  - {name: second, cron: '*/5 * * * *', source: p.jsonl, missed: catch_up,\n"
        "     catch_up_max: 2}\n"
    )
    assert _lcm("validate", str(good), "--sources", queue=queue).returncode == 0
    done = _lcm("apply", str(good), queue=queue)
    assert done.stdout.splitlines() == ["schedule good: created", "schedule second: created"]
    assert (
        _lcm("apply", str(good), queue=queue).stdout.splitlines()[0] == "schedule good: unchanged"
    )
    listed = _lcm("list", queue=queue).stdout
    assert "good" in listed and "Europe/Berlin" in listed and "second" in listed

    done = _lcm("run-now", "good", queue=queue)
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.strip()
    assert batch_id.startswith("good.") and queued(redis, queue) == 2
    shown = _lcm("show", "good", queue=queue).stdout
    assert batch_id in shown and "manual" in shown and "submitted" in shown
    assert "next slot" in shown and "+01:00" in shown  # 02:00 in Berlin, in December

    assert _lcm("pause", "good", queue=queue).returncode == 0
    assert "paused" in _lcm("list", queue=queue).stdout
    only_second = tmp_path / "second.yaml"
    only_second.write_text(
        "- {name: second, cron: '*/5 * * * *', source: p.jsonl, missed: catch_up,\n"
        "   catch_up_max: 2}\n"
    )
    done = _lcm("apply", str(only_second), "--prune", queue=queue)
    assert "schedule good: removed" in done.stdout
    assert redis.exists("lcm-fleet:schedule:good") == 0
    assert redis.exists("lcm-fleet:redbeat:good") == 0  # its beat entry with it
    assert _lcm("show", "good", queue=queue).returncode == 1
    assert _lcm("remove", "second", queue=queue).returncode == 0
    assert _lcm("list", queue=queue).stdout.strip() == ""


def test_lcm_schedule_add_takes_job_defaults_and_names_a_bad_field(redis, queue, tmp_path):
    source = write_source(tmp_path / "p.jsonl", ["a red fox"])
    name = unique("added")
    done = _lcm("add", name, "--cron", "0 25 * * *", "--source", str(source), queue=queue)
    assert done.returncode == 2
    assert f"schedule '{name}': field 'cron' got '0 25 * * *': its hour field '25'" in done.stderr
    done = _lcm(
        "add", name, "--cron", "0 2 * * *", "--source", str(source), "--steps", "9", queue=queue
    )
    assert done.returncode == 2 and "argument --steps: '9' is not an integer in 1..8" in done.stderr
    args = ["--cron", "0 2 * * 1-5", "--source", str(source), "--timezone", "America/New_York"]
    args += ["--missed", "catch_up", "--catch-up-max", "2", "--steps", "2", "--paused"]
    done = _lcm("add", name, *args, queue=queue)
    assert done.returncode == 0 and f"schedule {name}: created" in done.stderr
    shown = json.loads(_lcm("show", name, "--json", queue=queue).stdout)
    assert shown["schedule"]["defaults"] == {
        "seed": None,
        "steps": 2,
        "guidance_scale": None,
        "width": None,
        "height": None,
        "num_images": None,
    }
    assert shown["schedule"]["catch_up_max"] == 2 and shown["schedule"]["enabled"] is False
    assert shown["next_slot"] is None and shown["runs"] == []
    assert _lcm("remove", name, queue=queue).returncode == 0
