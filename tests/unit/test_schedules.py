"""Schedules: the model's checks and messages, slots in UTC and across DST, the missed-run
policies, schedule files, and the beat's schedule type (no Redis: tests/integration has it)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from lcm_fleet.schedules import (
    UTC,
    CronClock,
    InvalidSchedule,
    MissedPolicy,
    ZoneInfo,
    instant,
    parse_schedule,
    parse_slot,
    schedule_problems,
    slot_id,
)
from producer.schedules.files import read_schedule_file

BERLIN = ZoneInfo("Europe/Berlin")


def _schedule(**fields):
    base = {"name": "nightly", "cron": "0 2 * * *", "source": "/data/prompts.jsonl"}
    return parse_schedule({**base, **fields}, owner="local")


def _at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


# ---------------------------------------------------------------- the model and its messages


def test_a_schedule_takes_its_defaults_and_names_its_batch_and_prefix_per_slot():
    s = _schedule(timezone="Europe/Berlin", template="{prompt}, edition of {date} ({weekday})")
    assert s.missed is MissedPolicy.SKIP and s.enabled and s.run_limit == 1
    slot = _at(2026, 12, 3, 1, 0)
    assert s.batch_id(slot) == "nightly.20261203T010000Z"
    assert s.prefix_for(slot) == "schedules/nightly/20261203T010000Z"
    assert s.prompt_for("a fox", slot) == "a fox, edition of 2026-12-03 (Thursday)"
    assert s.variables(slot)["datetime"] == "2026-12-03T02:00:00+01:00"
    assert parse_slot(slot_id(slot)) == slot


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"name": "bad name"}, "field 'name' got 'bad name': is not a schedule name"),
        ({"cron": "61 2 * * *"}, "its minute field '61' is not valid (0-59)"),
        ({"cron": "0 25 * * *"}, "its hour field '25' is not valid (0-23)"),
        ({"cron": "0 2 * 13 *"}, "its month field '13' is not valid"),
        ({"cron": "0 2 * * 9"}, "its day-of-week field '9' is not valid"),
        ({"cron": "0 2 * *"}, "has 4 field(s); a cron expression has 5"),
        ({"cron": "0 0 2 * * *"}, "has 6 field(s)"),
        ({"cron": "@daily"}, "has 1 field(s)"),
        ({"cron": "0 0 30 2 *"}, "names no date that exists"),
        ({"timezone": "Mars/Olympus"}, "field 'timezone' got 'Mars/Olympus'"),
        ({"source": "prompts.txt"}, "does not end in .jsonl, .ndjson or .csv"),
        ({"source": "s3://bucket-only"}, "without a bucket or a key"),
        ({"template": "{prompt} {colour}"}, "unknown variable(s) {colour}"),
        ({"template": "{date:%Y}"}, "write variables as plain {name}"),
        ({"template": "{prompt"}, "is not a valid template"),
        ({"output_prefix": "out/{date}"}, "has no {slot}"),
        ({"output_prefix": "../{slot}"}, "no '..'"),
        ({"output_prefix": "out {slot}"}, "holds ' '"),
        ({"missed": "catch_up"}, "field 'catch_up_max' is required with missed: catch_up"),
        ({"catch_up_max": 3}, "field 'catch_up_max' applies to missed: catch_up only"),
        ({"missed": "catch_up", "catch_up_max": 0}, "field 'catch_up_max' got 0"),
        ({"missed": "later"}, "field 'missed' got 'later'"),
        ({"defaults": {"steps": 99}}, "field 'defaults' got {'steps': 99}: field 'steps' got 99"),
        ({"defaults": {"width": 512}}, "give both or neither"),
        ({"defaults": {"prompt": "x"}}, "field 'defaults.prompt'"),
        ({"colour": "red"}, "field 'colour' is not part of a schedule; known fields: name,"),
    ],
)
def test_every_bad_field_is_named_with_its_schedule_value_and_fix(fields, needle):
    with pytest.raises(InvalidSchedule) as caught:
        _schedule(**fields)
    assert str(caught.value).startswith("schedule ")
    assert needle in str(caught.value)


def test_every_problem_of_a_schedule_is_listed_at_once():
    problems = schedule_problems(
        {"name": "x", "cron": "99 * * * *", "timezone": "Nowhere", "source": "a.txt"}
    )
    assert len(problems) == 3
    assert all(p.startswith("schedule 'x': field ") for p in problems)
    assert schedule_problems("not a mapping")[0].endswith("got str")


# ---------------------------------------------------------------- slots in UTC


def test_utc_slots_next_and_due():
    clock = CronClock("0 2 * * *", ZoneInfo("UTC"))
    assert clock.next_after(_at(2026, 12, 3, 1, 59)) == _at(2026, 12, 3, 2, 0)
    assert clock.next_after(_at(2026, 12, 3, 2, 0)) == _at(2026, 12, 4, 2, 0)  # strictly after
    due = clock.due(_at(2026, 12, 3, 2, 0), _at(2026, 12, 3, 2, 0), limit=1)
    assert due.slots == () and due.skipped == 0  # the slot at `after` is done with
    due = clock.due(_at(2026, 12, 2, 2, 0), _at(2026, 12, 3, 2, 0, 1), limit=1)
    assert due.slots == (_at(2026, 12, 3, 2, 0),)


def test_skip_runs_only_the_latest_and_counts_the_rest():
    clock = CronClock("0 * * * *", ZoneInfo("UTC"))  # hourly, scheduler down 10 h
    due = clock.due(_at(2026, 12, 3, 0, 0), _at(2026, 12, 3, 10, 30), limit=1)
    assert due.slots == (_at(2026, 12, 3, 10, 0),)
    assert due.skipped == 9 and not due.skipped_capped


def test_catch_up_takes_the_latest_n_oldest_first_and_counts_the_rest():
    clock = CronClock("0 * * * *", ZoneInfo("UTC"))
    due = clock.due(_at(2026, 12, 3, 0, 0), _at(2026, 12, 3, 10, 30), limit=3)
    assert due.slots == (_at(2026, 12, 3, 8, 0), _at(2026, 12, 3, 9, 0), _at(2026, 12, 3, 10, 0))
    assert due.skipped == 7
    # Fewer missed than the bound: all of them.
    due = clock.due(_at(2026, 12, 3, 8, 30), _at(2026, 12, 3, 10, 30), limit=5)
    assert due.slots == (_at(2026, 12, 3, 9, 0), _at(2026, 12, 3, 10, 0)) and due.skipped == 0
    # Stopped for years: the count stops at its cap instead of scanning every minute.
    minutely = CronClock("* * * * *", ZoneInfo("UTC"))
    due = minutely.due(_at(2020, 1, 1), _at(2026, 12, 3), limit=2)
    assert len(due.slots) == 2 and due.skipped_capped


def test_a_schedule_limits_runs_by_its_policy():
    assert _schedule(missed="catch_up", catch_up_max=4).run_limit == 4
    assert _schedule(missed="skip").run_limit == 1


# ---------------------------------------------------------------- DST, both ways


def _wall(at: datetime, zone: ZoneInfo = BERLIN) -> str:
    return at.astimezone(zone).strftime("%m-%d %H:%M%z")


def test_spring_forward_a_slot_in_the_gap_runs_at_the_end_of_the_gap_once():
    # Europe/Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    clock = CronClock("30 2 * * *", BERLIN)
    slots = [clock.next_after(_at(2026, 3, 28, 12))]
    for _ in range(2):
        slots.append(clock.next_after(slots[-1]))
    assert [_wall(s) for s in slots] == ["03-29 03:00+0200", "03-30 02:30+0200", "03-31 02:30+0200"]
    assert instant(datetime(2026, 3, 29, 2, 30), BERLIN) == _at(2026, 3, 29, 1, 0)
    # Every half hour: 02:00 and 02:30 do not exist; they and 03:00 are one slot.
    half = CronClock("*/30 * * * *", BERLIN)
    due = half.due(_at(2026, 3, 29, 0, 0), _at(2026, 3, 29, 2, 0), limit=100)
    assert [_wall(s) for s in due.slots] == [
        "03-29 01:30+0100",
        "03-29 03:00+0200",
        "03-29 03:30+0200",
        "03-29 04:00+0200",
    ]


def test_fall_back_a_repeated_slot_runs_once_in_the_first_pass():
    # Europe/Berlin 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC).
    clock = CronClock("30 2 * * *", BERLIN)
    first = clock.next_after(_at(2026, 10, 24, 12))
    assert _wall(first) == "10-25 02:30+0200"
    assert _wall(clock.next_after(first)) == "10-26 02:30+0100"  # not 02:30 CET the same day
    quarter = CronClock("*/15 * * * *", BERLIN)
    due = quarter.due(_at(2026, 10, 25, 0, 20), _at(2026, 10, 25, 2, 10), limit=100)
    assert [_wall(s) for s in due.slots] == [
        "10-25 02:30+0200",
        "10-25 02:45+0200",
        "10-25 03:00+0100",  # the second pass of 02:xx has no slots
    ]
    # Asked during the second pass, the due slots are still the first pass's.
    during = quarter.due(_at(2026, 10, 25, 0, 20), _at(2026, 10, 25, 1, 40), limit=100)
    assert [_wall(s) for s in during.slots] == ["10-25 02:30+0200", "10-25 02:45+0200"]


@pytest.mark.parametrize(
    ("zone", "cron", "start", "days"),
    [
        ("Europe/Berlin", "*/20 * * * *", (2026, 3, 28), 2),
        ("Europe/Berlin", "*/20 * * * *", (2026, 10, 24), 2),
        ("America/New_York", "0,30 1-3 * * *", (2026, 3, 7), 2),
        ("America/New_York", "0,30 1-3 * * *", (2026, 10, 31), 2),
        ("Australia/Lord_Howe", "*/10 1-3 * * *", (2026, 4, 4), 2),  # a 30-minute DST shift
        ("Asia/Kolkata", "15 */2 * * *", (2026, 6, 1), 1),  # +05:30, no DST
    ],
)
def test_due_agrees_with_next_after_and_slots_strictly_increase(zone, cron, start, days):
    clock = CronClock(cron, ZoneInfo(zone))
    begin = datetime(*start, tzinfo=UTC)
    end = begin + timedelta(days=days)
    forward, at = [], begin
    while True:
        at = clock.next_after(at)
        if at > end:
            break
        forward.append(at)
    assert forward == sorted(set(forward))  # strictly increasing: a slot id is unique
    assert list(clock.due(begin, end, limit=10_000).slots) == forward
    # A slot's id is its UTC time, and names it back.
    assert all(parse_slot(slot_id(s)) == s for s in forward)


# ---------------------------------------------------------------- schedule files


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.yaml"
    path.write_text(text)
    return path


def test_a_schedule_file_is_read_whole_with_relative_sources_from_its_folder(tmp_path):
    path = _write(
        tmp_path,
        "schedules:\n"
        "  - {name: a, cron: '0 2 * * *', source: prompts/a.jsonl}\n"
        "  - name: b\n"
        "    cron: '*/5 * * * *'\n"
        "    timezone: Europe/Berlin\n"
        "    source: s3://inputs/b.csv\n"
        "    missed: catch_up\n"
        "    catch_up_max: 2\n",
    )
    a, b = read_schedule_file(path, owner="local")
    assert a.source == str(tmp_path / "prompts" / "a.jsonl") and a.owner == "local"
    assert b.source == "s3://inputs/b.csv" and b.run_limit == 2


def test_every_error_of_a_schedule_file_names_the_schedule_and_field(tmp_path):
    path = _write(
        tmp_path,
        "- {name: a, cron: '61 * * * *', source: a.jsonl}\n"
        "- {name: b, cron: '0 2 * * *', source: b.jsonl, timezone: Nowhere, owner: x}\n"
        "- {name: a, cron: '0 2 * * *', source: a.jsonl, colour: red}\n"
        "- {cron: '0 2 * * *', source: c.jsonl}\n",
    )
    with pytest.raises(InvalidSchedule) as caught:
        read_schedule_file(path, owner="local")
    text = str(caught.value)
    assert "nothing was applied" in text
    assert "schedule 'a': field 'cron' got '61 * * * *'" in text
    assert "schedule 'b': field 'owner' is set by whoever applies the file" in text
    assert "schedule 'a': field 'colour' is not part of a schedule" in text
    assert "schedule 'a': defined twice (entries 1 and 3)" in text
    assert "schedule '#4': field 'name' is required" in text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("schedules: [\n  {name: a,\n", "is not valid YAML at line"),
        ("jobs: []\n", "top-level key(s) 'jobs' are not known"),
        ("schedules: []\n", "expected a list of schedules"),
        ("", "got nothing"),
    ],
)
def test_a_schedule_file_that_is_not_a_list_of_schedules_is_refused(tmp_path, text, needle):
    with pytest.raises(InvalidSchedule, match=None) as caught:
        read_schedule_file(_write(tmp_path, text), owner="local")
    assert needle in str(caught.value)


# ---------------------------------------------------------------- the beat's schedule type


def test_the_cron_schedule_is_due_on_its_zones_slots_and_survives_redbeats_json():
    from celery import Celery

    from producer.schedules.beat import CronSchedule, _Decoder, _Encoder

    app = Celery("t", set_as_current=False)
    now = {"t": _at(2026, 3, 29, 0, 59, 59)}
    sched = CronSchedule("30 2 * * *", "Europe/Berlin", nowfun=lambda: now["t"], app=app)
    state = sched.is_due(_at(2026, 3, 28, 2, 0))
    assert not state.is_due and state.next == pytest.approx(1.0)
    now["t"] = _at(2026, 3, 29, 1, 0, 0)  # 03:00 CEST, the end of the gap
    state = sched.is_due(_at(2026, 3, 28, 2, 0))
    assert state.is_due
    assert state.next == pytest.approx((_at(2026, 3, 30, 0, 30) - now["t"]).total_seconds())
    text = json.dumps({"schedule": sched}, cls=_Encoder)
    assert json.loads(text)["schedule"] == {
        "__type__": "lcm-cron",
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
    }
    back = json.loads(text, cls=_Decoder)["schedule"]
    assert isinstance(back, CronSchedule) and back == sched


# ---------------------------------------------------------------- the role's deploy unit


def test_the_scheduler_deployment_runs_the_console_script_with_its_settings():
    import yaml

    from producer.schedules.service import SchedulerSettings

    root = Path(__file__).resolve().parents[2]
    scripts = (root / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    (deployment,) = [
        d for d in yaml.safe_load_all((root / "deploy/k8s/scheduler.yaml").read_text()) if d
    ]
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 1
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["lcm-scheduler"]
    assert '\nlcm-scheduler = "producer.schedules.service:main"' in scripts
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = SchedulerSettings(**{k.removeprefix("LCM_").lower(): v for k, v in env.items()})
    (port,) = container["ports"]
    assert settings.scheduler_metrics_port == port["containerPort"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert spec["terminationGracePeriodSeconds"] > settings.scheduler_lease_s
    refs = {r.get("secretRef", r.get("configMapRef"))["name"] for r in container["envFrom"]}
    assert refs == {"lcm-fleet", "lcm-fleet-s3"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels


def test_scheduler_metrics_count_runs_by_outcome_and_keep_the_latest_slot():
    from prometheus_client import CollectorRegistry

    from lcm_fleet.schedules import RunState, RunTrigger, ScheduleRun
    from producer.schedules.runner import RunReport
    from producer.schedules.service import SchedulerMetrics

    def run(slot_at: float, trigger: RunTrigger, state: RunState = RunState.SUBMITTED):
        return ScheduleRun(
            schedule="s",
            slot="x",
            slot_at=slot_at,
            trigger=trigger,
            state=state,
            batch_id="s.x",
            output_prefix="schedules/s/x",
            claimed_at=slot_at,
        )

    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry)
    report = RunReport(
        "s",
        [
            run(100.0, RunTrigger.CATCH_UP),
            run(200.0, RunTrigger.CRON),
            run(300.0, RunTrigger.CRON, RunState.FAILED),
        ],
        skipped=4,
    )
    metrics.observe(report)
    metrics.observe(RunReport("s", [run(50.0, RunTrigger.CATCH_UP)]))  # an older one resumed

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"schedule": "s", **labels})

    assert value("lcm_schedule_runs_started_total", trigger="cron") == 1
    assert value("lcm_schedule_runs_started_total", trigger="catch_up") == 2
    assert value("lcm_schedule_runs_caught_up_total") == 2
    assert value("lcm_schedule_runs_skipped_total") == 4
    assert value("lcm_schedule_runs_failed_total") == 1
    assert value("lcm_schedule_last_run_timestamp_seconds") == 200.0


def test_the_scheduler_app_sends_its_tasks_to_its_own_queue_and_sweeps_by_a_beat_entry():
    from lcm_fleet.schedules import (
        QUEUE_SCHEDULES,
        SWEEP_ENTRY,
        TASK_SCHEDULE_EXPAND,
        TASK_SCHEDULE_RUN,
        TASK_SCHEDULE_SWEEP,
        schedule_problems,
    )
    from producer.schedules.service import SchedulerSettings, make_app

    settings = SchedulerSettings(redis_url="redis://127.0.0.1:1/0", scheduler_sweep_s=7)
    app = make_app(settings, runner=None, metrics=None)  # type: ignore[arg-type]
    assert {TASK_SCHEDULE_RUN, TASK_SCHEDULE_EXPAND, TASK_SCHEDULE_SWEEP} <= set(app.tasks)
    assert app.conf.task_default_queue == QUEUE_SCHEDULES and app.conf.task_acks_late
    entry = app.conf.beat_schedule[SWEEP_ENTRY]
    assert entry["task"] == TASK_SCHEDULE_SWEEP and entry["schedule"] == 7
    assert entry["options"]["queue"] == QUEUE_SCHEDULES
    assert app.conf.redbeat_key_prefix == "lcm-fleet:redbeat:"
    assert app.conf.redbeat_lock_timeout == settings.scheduler_lock_timeout_s
    # The sweep's entry can never be confused with a schedule's: no schedule has its name.
    assert schedule_problems({"name": SWEEP_ENTRY, "cron": "* * * * *", "source": "a.csv"})
