"""lcm-scheduler as real processes on real Redis: a real beat fires, two schedulers make one
batch per slot, a killed leader's standby takes over (timed), a restart duplicates nothing;
/v1/schedules through a real lcm-api; and (slow) a minute boundary and a real render.

A schedule made to fire "now" is a ``* * * * *`` schedule whose beat entry and last slot are
set just after the minute before the latest one, as if it had been created then: its next
slot (the latest minute) has passed, so the real beat fires it at its next tick, without
waiting for a minute boundary (the slow test does wait).
"""

from __future__ import annotations

import hashlib
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lcm_fleet.keys import schedule_state_key
from lcm_fleet.records import open_records
from lcm_fleet.schedules import (
    QUEUE_SCHEDULES,
    TASK_SCHEDULE_EXPAND,
    TASK_SCHEDULE_RUN,
    UTC,
    RunState,
    RunTrigger,
    parse_schedule,
)
from producer.schedules.manage import Schedules
from producer.settings import ProducerSettings
from tests import poison
from tests.integration.conftest import (
    TEST_REDIS_URL,
    TEST_S3_PORT,
    ApiProcess,
    api_env,
    run_cli,
    start_api,
    stop_api,
)
from tests.integration.schedules.conftest import (
    LOCK_TIMEOUT_S,
    SCHEDULER_METRICS_PORTS,
    TICK_S,
    SchedulerProcess,
    queued,
    scheduler_env,
    start_scheduler,
    stop_scheduler,
    wait_until,
    write_source,
)


@pytest.fixture
def ops(redis: Any, queue: str) -> Schedules:
    return Schedules(ProducerSettings(redis_url=TEST_REDIS_URL, queue=queue))


@pytest.fixture
def schedulers() -> Iterator[list[SchedulerProcess]]:
    started: list[SchedulerProcess] = []
    yield started
    for process in started:
        stop_scheduler(process)


def fire_soon(ops: Schedules, name: str, source: Path) -> None:
    schedule = parse_schedule(
        {"name": name, "cron": "* * * * *", "source": str(source), "defaults": {"steps": 2}},
        owner="local",
    )
    ops.put(schedule)
    # As if made just after the minute before the latest one: exactly one slot (the latest
    # minute) is due, whatever the missed-run policy.
    latest = datetime.now(UTC).replace(second=0, microsecond=0)
    past = latest - timedelta(seconds=59)
    ops.store.redis.hset(schedule_state_key(name), "last_slot", repr(past.timestamp()))
    entry = ops.entries.get(name)
    assert entry is not None
    entry.reschedule(past)


def leader_and_standby(
    queue: str, schedulers: list[SchedulerProcess], tmp_path: Path
) -> tuple[SchedulerProcess, SchedulerProcess, list[dict[str, str]]]:
    """Two lcm-schedulers: the first holds the beat lock, the second waits on it."""
    env = [scheduler_env(queue, port) for port in SCHEDULER_METRICS_PORTS[:2]]
    leader = start_scheduler(env[0], tmp_path / "a.log")
    schedulers.append(leader)
    wait_until(leader.leads, 15, leader)
    standby = start_scheduler(env[1], tmp_path / "b.log")
    schedulers.append(standby)
    time.sleep(2 * TICK_S)
    assert not standby.leads()
    return leader, standby, env


def submitted_runs(ops: Schedules, name: str) -> list[Any]:
    return [r for r in ops.store.runs(name, 100) if r.state is RunState.SUBMITTED]


def test_two_schedulers_fire_once_per_slot_and_the_standby_takes_over_a_killed_leader(
    ops, redis, queue, schedulers, tmp_path
):
    source = write_source(tmp_path / "p.jsonl", ["a red fox", "a blue owl"])
    leader, standby, env = leader_and_standby(queue, schedulers, tmp_path)

    names = [f"two-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    fire_soon(ops, names[0], source)
    wait_until(lambda: submitted_runs(ops, names[0]), 20, leader, standby)

    # The leader dies without releasing the lock: the standby takes it once it expires.
    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait()
    takeover_s = wait_until(standby.leads, LOCK_TIMEOUT_S + 10, standby, poll_s=0.05)
    print(f"standby took the beat lock {takeover_s:.2f} s after the leader was killed")
    assert takeover_s <= LOCK_TIMEOUT_S + TICK_S + 2.0
    fire_soon(ops, names[1], source)
    wait_until(lambda: submitted_runs(ops, names[1]), 20, standby)

    # The killed one restarts: it waits on the lock now held by the other, and consumes.
    restarted = start_scheduler(env[0], tmp_path / "a2.log")
    schedulers.append(restarted)
    time.sleep(2 * TICK_S)
    assert not restarted.leads()
    fire_soon(ops, names[2], source)
    wait_until(lambda: submitted_runs(ops, names[2]), 20, standby, restarted)
    time.sleep(2 * TICK_S)  # any duplicate firing would have been expanded by now

    # One batch per (schedule, slot): each run's batch was queued by exactly one process,
    # and the render queue holds each run's two jobs once.
    runs = [r for name in names for r in ops.store.runs(name, 100)]
    assert runs and all(r.state is RunState.SUBMITTED for r in runs)
    assert all(r.trigger is RunTrigger.CRON for r in runs)
    expansions = Counter(leader.expanded() + standby.expanded() + restarted.expanded())
    assert expansions == Counter({r.batch_id: 1 for r in runs})
    assert queued(redis, queue) == 2 * len(runs)
    records = open_records(ProducerSettings(redis_url=TEST_REDIS_URL))
    for run in runs:
        batch = records.get_batch(run.batch_id)
        assert batch is not None and batch.total == 2 and batch.sealed
    # Metrics: the standby counted the run it made; it reports itself as the beat leader.
    text = httpx.get(f"http://127.0.0.1:{SCHEDULER_METRICS_PORTS[1]}/metrics").text
    assert "lcm_scheduler_beat_leader 1.0" in text
    assert f'lcm_schedule_runs_started_total{{schedule="{names[1]}",trigger="cron"}} 1.0' in text
    assert f'lcm_schedule_last_run_timestamp_seconds{{schedule="{names[1]}"}}' in text


def test_a_cleanly_stopped_leader_hands_over_within_a_tick(ops, queue, schedulers, tmp_path):
    leader, standby, _ = leader_and_standby(queue, schedulers, tmp_path)
    started = time.monotonic()
    stop_scheduler(leader)  # SIGTERM: RedBeat releases the lock
    handover_s = wait_until(standby.leads, 10, standby, poll_s=0.05)
    print(
        f"standby took the beat lock {handover_s:.2f} s after the leader stopped "
        f"({time.monotonic() - started:.2f} s after SIGTERM)"
    )
    assert handover_s <= TICK_S + 2.0
    assert "beat: Releasing lock" in leader.log_text()


def test_a_scheduler_killed_mid_run_has_its_run_finished_by_another_into_the_same_batch(
    ops, redis, queue, schedulers, tmp_path, service_env
):
    rows = 8000  # about 4 s of publishing here: long enough to be killed part-way
    source = write_source(tmp_path / "big.jsonl", [f"row {i}" for i in range(rows)])
    # S3 too: the run taken over is a resume, which looks up what its rows stored.
    s3 = {k: v for k, v in service_env.items() if k.startswith("LCM_S3_")}
    env = [
        scheduler_env(queue, port, LCM_SCHEDULER_SWEEP_S="1", **s3)
        for port in SCHEDULER_METRICS_PORTS[:2]
    ]
    first = start_scheduler(env[0], tmp_path / "a.log")
    schedulers.append(first)
    wait_until(first.leads, 15, first)
    name = f"big-{uuid.uuid4().hex[:6]}"
    fire_soon(ops, name, source)
    records = open_records(ProducerSettings(redis_url=TEST_REDIS_URL))

    def batch_total() -> int:
        runs = ops.store.runs(name)
        batch = records.get_batch(runs[0].batch_id) if runs else None
        return batch.total if batch is not None else 0

    wait_until(lambda: batch_total() > 200, 30, first, poll_s=0.02)
    # Paused at once: no next minute's run however slow this run is, but a run begun is
    # finished (pause stops firing only).
    ops.set_enabled(name, "local", enabled=False)
    first.proc.send_signal(signal.SIGKILL)  # mid-run: its lease lapses, nobody extends it
    first.proc.wait()
    queued_before = queued(redis, queue)
    assert 0 < queued_before < rows
    (slot,) = [r.slot for r in ops.store.runs(name)]
    second = start_scheduler(env[1], tmp_path / "b.log")
    schedulers.append(second)

    def finished() -> bool:
        run = ops.store.run(name, slot)
        return run is not None and run.state is RunState.SUBMITTED

    wait_until(finished, 60, second, poll_s=0.2)
    assert [r.slot for r in ops.store.runs(name)] == [slot]
    run = ops.store.run(name, slot)
    assert run is not None and run.worker is not None and run.worker.endswith(str(second.proc.pid))
    assert run.jobs == rows
    batch = records.get_batch(run.batch_id)
    assert batch is not None and batch.total == rows and batch.sealed  # exact, not doubled
    assert batch.counts.queued == rows
    assert len(records.batch_job_ids(run.batch_id, 0, 2 * rows)) >= rows
    # The resume leaves the jobs queued before the kill alone (their records say queued) and
    # queues the rest: every row once, none lost.
    assert queued(redis, queue) == rows


#: A redis-server of the Redis restart test's own: inside this run's S3 port range
#: (SeaweedFS takes the S3 port and the next 9).
OWN_REDIS_PORT = TEST_S3_PORT + 15


@pytest.mark.faults
def test_the_beat_outlives_a_redis_restart_and_fires_again(queue, schedulers, tmp_path):
    from tests.faultkit import OwnRedis

    server = OwnRedis(tmp_path / "own-redis", port=OWN_REDIS_PORT)
    if not server.port_is_free():
        pytest.skip(f"port {OWN_REDIS_PORT} is in use")
    with server:
        own = Schedules(ProducerSettings(redis_url=server.url, queue=queue))
        source = write_source(tmp_path / "p.jsonl", ["a red fox", "a blue owl"])
        env = scheduler_env(queue, SCHEDULER_METRICS_PORTS[0], LCM_REDIS_URL=server.url)
        process = start_scheduler(env, tmp_path / "s.log")
        schedulers.append(process)
        wait_until(process.leads, 15, process)
        before = f"before-{uuid.uuid4().hex[:6]}"
        fire_soon(own, before, source)
        wait_until(lambda: submitted_runs(own, before), 20, process)
        server.kill()  # SIGKILL: AOF keeps what was fsynced
        time.sleep(LOCK_TIMEOUT_S + 2)  # the beat's ticks fail meanwhile
        server.start()
        after = f"after-{uuid.uuid4().hex[:6]}"
        fire_soon(own, after, source)
        wait_until(lambda: submitted_runs(own, after), 60, process, poll_s=0.5)
        assert "beat stopped (" in process.log_text()
        assert process.log_text().count("holds the beat lock") >= 2  # it took the lock again
        assert [len(submitted_runs(own, n)) >= 1 for n in (before, after)] == [True, True]


# ---------------------------------------------------------------- /v1/schedules


@pytest.fixture
def api(service_env: dict[str, str], queue: str, tmp_path: Path) -> Iterator[ApiProcess]:
    proc = start_api(api_env(service_env, queue), tmp_path / "api.log")
    yield proc
    stop_api(proc)


def test_v1_schedules_per_key_with_run_now_expanded_by_a_scheduler(
    api, service_env, s3, redis, queue, schedulers, tmp_path
):
    bucket = service_env["LCM_S3_BUCKET"]
    key = f"inputs/{uuid.uuid4().hex[:8]}.jsonl"
    s3.put_object(
        Bucket=bucket, Key=key, Body=b'{"prompt": "a red fox"}\n{"prompt": "a blue owl"}\n'
    )
    env = {**scheduler_env(queue, SCHEDULER_METRICS_PORTS[2]), **service_env}
    env["LCM_REDIS_URL"] = TEST_REDIS_URL
    schedulers.append(start_scheduler(env, tmp_path / "scheduler.log"))
    alice = httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {api.create_key('alice')}"}, timeout=30
    )
    bob = httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {api.create_key('bob')}"}, timeout=30
    )
    name = f"web-{uuid.uuid4().hex[:6]}"
    body = {
        "name": name,
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "source": f"s3://{bucket}/{key}",
        "template": "{prompt}, {date}",
        "defaults": {"steps": 2},
    }
    answer = alice.post("/v1/schedules", json={**body, "source": "/etc/hosts.csv"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "source_not_allowed"
    answer = alice.post("/v1/schedules", json={**body, "cron": "0 2 * *"})
    error = answer.json()["error"]
    assert (
        answer.status_code == 400
        and error["param"] == "cron"
        and "has 4 field(s)" in error["message"]
    )
    answer = alice.post("/v1/schedules", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["schedule"]["owner"] != "local" and answer.json()["next_slot"].endswith(
        "+01:00"
    )
    assert alice.post("/v1/schedules", json=body).status_code == 409
    assert bob.get(f"/v1/schedules/{name}").status_code == 404
    assert name not in [s["name"] for s in bob.get("/v1/schedules").json()["schedules"]]
    assert bob.put(f"/v1/schedules/{name}", json=body).status_code == 409  # alice's name

    answer = alice.post(f"/v1/schedules/{name}/run")
    assert answer.status_code == 202, answer.text
    run = answer.json()
    assert run["state"] == "pending" and run["trigger"] == "manual"

    def expanded() -> bool:
        runs = alice.get(f"/v1/schedules/{name}").json()["runs"]
        return bool(runs) and runs[0]["state"] == "submitted"

    wait_until(expanded, 20, *schedulers)
    (shown,) = alice.get(f"/v1/schedules/{name}").json()["runs"]
    assert shown["batch_id"] == run["batch_id"] and shown["jobs"] == 2
    assert shown["batch_counts"]["queued"] == 2
    batch = alice.get(f"/v1/batches/{run['batch_id']}").json()  # a normal batch of alice's
    assert batch["total"] == 2 and batch["job_ids"][0] == f"{run['batch_id']}-000001"
    job = alice.get(f"/v1/jobs/{batch['job_ids'][0]}").json()
    assert job["job"]["prompt"].startswith("a red fox, 20")

    paused = alice.post(f"/v1/schedules/{name}/pause").json()
    assert paused["schedule"]["enabled"] is False and paused["next_slot"] is None
    assert alice.post(f"/v1/schedules/{name}/resume").json()["schedule"]["enabled"] is True
    answer = alice.put(f"/v1/schedules/{name}", json={**body, "cron": "30 3 * * *"})
    assert answer.status_code == 200 and answer.json()["schedule"]["cron"] == "30 3 * * *"
    assert alice.delete(f"/v1/schedules/{name}").status_code == 204
    assert alice.get(f"/v1/schedules/{name}").status_code == 404
    assert redis.exists(f"lcm-fleet:redbeat:{name}") == 0


# ---------------------------------------------------------------- slow: real time, real render


@pytest.mark.slow
def test_an_applied_every_minute_schedule_fires_at_the_next_minute_boundary(
    redis, queue, schedulers, tmp_path
):
    write_source(tmp_path / "p.jsonl", ["a red fox", "a blue owl"])
    name = f"minute-{uuid.uuid4().hex[:6]}"
    file = tmp_path / "s.yaml"
    file.write_text(f"schedules:\n  - {{name: {name}, cron: '* * * * *', source: p.jsonl}}\n")
    env = {"LCM_REDIS_URL": TEST_REDIS_URL, "LCM_QUEUE": queue}
    applied_at = datetime.now(UTC)
    assert run_cli("producer.cli", "schedule", "apply", str(file), env=env).returncode == 0
    schedulers.append(
        start_scheduler(scheduler_env(queue, SCHEDULER_METRICS_PORTS[0]), tmp_path / "s.log")
    )
    ops = Schedules(ProducerSettings(redis_url=TEST_REDIS_URL, queue=queue))
    wait_until(lambda: submitted_runs(ops, name), 75, *schedulers, poll_s=0.5)
    (run,) = submitted_runs(ops, name)
    boundary = (applied_at + timedelta(minutes=1)).replace(second=0, microsecond=0)
    assert run.slot_at == boundary.timestamp() and run.trigger is RunTrigger.CRON
    assert run.claimed_at - run.slot_at < 3.0  # fired within a few ticks of its slot
    assert queued(redis, queue) == 2


@pytest.mark.slow
def test_a_scheduled_run_renders_end_to_end_on_a_real_worker(
    worker, producer_settings, s3, redis, tmp_path
):
    from lcm_fleet.contract import Job

    write_source(tmp_path / "p.jsonl", ["a red cube", "a blue ball"])
    name = f"render-{uuid.uuid4().hex[:6]}"
    file = tmp_path / "s.yaml"
    file.write_text(
        f"- {{name: {name}, cron: '0 2 * * *', source: p.jsonl, defaults: {{steps: 2}},\n"
        "   template: '{prompt} for {date}'}\n"
    )
    env = {**worker.env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    assert run_cli("producer.cli", "schedule", "apply", str(file), env=env).returncode == 0
    done = run_cli("producer.cli", "schedule", "run-now", name, env=env, check=False)
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.strip()
    records = open_records(producer_settings)
    wait_until(lambda: (b := records.get_batch(batch_id)) is not None and b.finished, 180)
    batch = records.get_batch(batch_id)
    assert batch is not None and batch.counts.succeeded == 2
    for job_id in records.batch_job_ids(batch_id):
        record = records.get_job(job_id)
        assert record is not None and record.result is not None
        (image,) = record.result.images
        assert s3.head_object(Bucket=producer_settings.s3_bucket, Key=image.key)
        if "output_prefix" in Job.model_fields:  # the batches change: the run's own prefix
            assert f"schedules/{name}/" in image.key


def test_malformed_items_on_the_schedules_queue_are_dead_lettered_and_runs_go_on(
    ops, queue, schedulers, redis, tmp_path
):
    """The render worker's guard (lcm_fleet/consuming) screens lcm.schedules too."""
    env = scheduler_env(
        queue, SCHEDULER_METRICS_PORTS[0], LCM_MAX_MESSAGE_BYTES=str(poison.MAX_MESSAGE_BYTES)
    )
    process = start_scheduler(env, tmp_path / "s.log")
    schedulers.append(process)
    name = f"poison-{uuid.uuid4().hex[:6]}"
    source = write_source(tmp_path / "prompts.jsonl", ["a red circle"])
    ops.put(parse_schedule({"name": name, "cron": "0 2 * * *", "source": str(source)}, "local"))
    app = Celery(broker=TEST_REDIS_URL)
    since = time.time()
    pushed: Counter[str] = Counter()

    @settings(
        max_examples=4,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(items=st.lists(poison.bad_items(QUEUE_SCHEDULES, TASK_SCHEDULE_RUN), min_size=5))
    def throw(items: list[bytes]) -> None:
        redis.lpush(QUEUE_SCHEDULES, *items)
        pushed.update(hashlib.sha256(i).hexdigest() for i in items)
        time.sleep(1.05)  # one manual run per second
        run = ops.run_now(name, "local", expand=False)
        assert run is not None and run.state is RunState.PENDING
        # Queued behind the items (FIFO): once it is expanded, every item before it was taken.
        app.send_task(TASK_SCHEDULE_EXPAND, args=[name, run.slot], queue=QUEUE_SCHEDULES)
        wait_until(lambda: ops.store.run(name, run.slot).state is RunState.SUBMITTED, 30, process)

    throw()
    counts = poison.dead_lettered_since(redis, since)
    wrong = {h: (pushed[h], counts[h]) for h in pushed if counts[h] != pushed[h]}
    assert not wrong, f"{len(wrong)} of {len(pushed)} items not dead-lettered exactly once"
    assert "Unrecoverable error" not in process.log_text()
    assert process.proc.poll() is None
