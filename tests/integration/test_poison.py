"""Nothing on a queue stops a worker: generated poison between good jobs, on a real worker
(and under lcm-fleet); exit codes that mean something; task events for monitors."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lcm_fleet.dead_letter import DeadLetters
from producer.api import submit
from producer.settings import ProducerSettings
from tests import poison
from tests.integration.conftest import (
    METRICS_PORT,
    ROOT,
    WorkerProcess,
    start_worker,
    stop_worker,
    wait_for_log,
    worker_env,
)

QUEUE = f"lcm.poison.{uuid.uuid4().hex[:8]}"
#: Examples x items per example: about 2,000 bad items between 30 good jobs.
EXAMPLES, ITEMS = 30, (40, 100)


def _settings(producer_settings: Any, queue: str) -> ProducerSettings:
    return ProducerSettings(**{**producer_settings.model_dump(), "queue": queue})


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@pytest.fixture(scope="module")
def poison_worker(
    service_env: dict[str, str], model_dirs: dict[str, Path], tmp_path_factory: Any
) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("poison-worker")
    env = worker_env(
        service_env,
        model_dirs["int8"],
        tmp,
        QUEUE,
        LCM_MAX_MESSAGE_BYTES=str(poison.MAX_MESSAGE_BYTES),
        LCM_DEAD_LETTER_MAX="100000",
    )
    worker = start_worker(env, tmp / "worker.log")
    yield worker
    stop_worker(worker)


def _throw_poison(worker: WorkerProcess, producer_settings: Any, examples: int) -> None:
    poison_worker = worker
    r = redis.Redis.from_url(producer_settings.redis_url)
    settings_q = _settings(producer_settings, QUEUE)
    pushed: collections.Counter[str] = collections.Counter()
    rss: list[int] = []
    process = psutil.Process(poison_worker.proc.pid)
    since = time.time()

    @settings(
        max_examples=examples,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(items=st.lists(poison.bad_items(QUEUE), min_size=ITEMS[0], max_size=ITEMS[1]))
    def throw(items: list[bytes]) -> None:
        r.lpush(QUEUE, *items)
        pushed.update(_sha(i) for i in items)
        # Queued after the items (FIFO): when it is done, the worker has taken every item.
        assert submit("between poison", settings=settings_q, seed=len(pushed)).wait(120).images
        assert poison_worker.proc.poll() is None
        rss.append(process.memory_info().rss)

    throw()
    assert r.llen(QUEUE) == 0
    counts = poison.dead_lettered_since(r, since)
    wrong = {s: (pushed[s], counts[s]) for s in pushed if counts[s] != pushed[s]}
    assert not wrong, f"{len(wrong)} of {len(pushed)} items not dead-lettered exactly once"
    assert sum(pushed.values()) >= examples * ITEMS[0]
    # Memory flat: no growth beyond noise from the first batch to the last.
    assert rss[-1] - rss[0] < 30 * 2**20, [x // 2**20 for x in rss]
    log = poison_worker.log_text()
    assert "Unrecoverable error" not in log
    assert "dead-lettered as" in log
    kinds = collections.Counter(
        e.kind.value for e in DeadLetters(r).entries() if e.sha256 in pushed
    )
    print(
        f"\npoison: {sum(pushed.values())} items ({len(pushed)} distinct) between {len(rss)} "
        f"good jobs; worker RSS {rss[0] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB; "
        f"kinds {dict(kinds)}"
    )


def test_generated_poison_is_dead_lettered_once_and_the_worker_keeps_serving(
    poison_worker: WorkerProcess, producer_settings: Any
) -> None:
    _throw_poison(poison_worker, producer_settings, EXAMPLES)


@pytest.mark.slow
def test_more_generated_poison(poison_worker: WorkerProcess, producer_settings: Any) -> None:
    _throw_poison(poison_worker, producer_settings, 10 * EXAMPLES)


def test_dead_letter_cli_lists_shows_and_purges(
    poison_worker: WorkerProcess, producer_settings: Any, service_env: dict[str, str]
) -> None:
    r = redis.Redis.from_url(producer_settings.redis_url)
    item = poison.encode(["a", "b", "c", uuid.uuid4().hex])
    r.lpush(QUEUE, item)
    assert submit("after", settings=_settings(producer_settings, QUEUE), seed=7).wait(120).images
    entry = next(e for e in DeadLetters(r).entries() if e.sha256 == _sha(item))
    env = {**service_env, "PYTHONPATH": str(ROOT)}

    def lcm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "producer.cli", "dead-letter", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = lcm("list", "--limit", "50")
    assert listed.returncode == 0, listed.stderr
    assert entry.id in listed.stdout and "bad_envelope" in listed.stdout
    shown = lcm("show", entry.id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["sha256"] == entry.sha256
    assert lcm("show", "no-such-id").returncode == 1
    purged = lcm("purge", "--yes")
    assert purged.returncode == 0 and "purged" in purged.stdout
    assert DeadLetters(r).count() == 0


def test_events_reach_a_monitor_without_remote_control(
    poison_worker: WorkerProcess, producer_settings: Any
) -> None:
    from celery import Celery

    app = Celery(broker=producer_settings.redis_url)
    seen: list[tuple[str, str]] = []
    ready = threading.Event()

    def listen() -> None:
        with app.connection() as conn:
            recv = app.events.Receiver(
                conn, handlers={"*": lambda e: seen.append((e["type"], e.get("uuid", "")))}
            )
            ready.set()
            with contextlib.suppress(TimeoutError, OSError):
                recv.capture(limit=None, timeout=60, wakeup=False)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(10)
    # Bound once it hears anything (the worker's heartbeat comes every 2 s); at most 10 s.
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.1)
    h = submit("watched", settings=_settings(producer_settings, QUEUE), seed=8)
    assert h.wait(120).images
    deadline = time.monotonic() + 20
    # No task-sent: producers push the message in the submission script, not send_task
    # (docs/operations.md, LCM_TASK_EVENTS); monitors see a task from task-received on.
    wanted = {"task-received", "task-started", "task-succeeded"}
    while time.monotonic() < deadline and not wanted <= {t for t, u in seen if u == h.job_id}:
        time.sleep(0.2)
    assert wanted <= {t for t, u in seen if u == h.job_id}, sorted(set(seen))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("check", [False, True], ids=["serve", "check"])
def test_unreachable_redis_fails_at_once_before_compiling(
    service_env: dict[str, str], model_dirs: dict[str, Path], tmp_path: Path, check: bool
) -> None:
    port = _closed_port()
    env = worker_env(
        service_env,
        model_dirs["int8"],
        tmp_path,
        "q.unreachable",
        LCM_REDIS_URL=f"redis://:hunter2@127.0.0.1:{port}/0",
        LCM_BROKER_CONNECT_TIMEOUT_S="3",
        LCM_METRICS_PORT=str(METRICS_PORT + 20),
    )
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", *(["--check"] if check else [])],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 4, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"lcm-worker: cannot reach the broker at redis://:***@127.0.0.1:{port}/0"
    )
    assert "within 3s (LCM_BROKER_CONNECT_TIMEOUT_S)" in last
    assert "hunter2" not in out.stderr + out.stdout
    assert "render process" not in out.stderr  # nothing compiled
    assert "Traceback" not in out.stderr


def test_fleet_unit_never_gives_up_because_of_a_message(
    service_env: dict[str, str], model_dirs: dict[str, Path], tmp_path: Path, producer_settings: Any
) -> None:
    queue = f"lcm.poison.fleet.{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(producer_settings.redis_url)
    env = worker_env(service_env, model_dirs["int8"], tmp_path, queue)
    log = tmp_path / "fleet.log"
    # Before the fleet starts: the message it meets first (it killed every restart before).
    env_ = poison.envelope([{"prompt": "p"}], queue, timelimit="x")
    item = poison.encode(env_)
    r.lpush(queue, item)
    with open(log, "wb") as out:
        fleet = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.fleet.launcher",
                "--devices",
                "CPU",
                "--max-restarts",
                "1",
                "--metrics-port",
                str(METRICS_PORT + 30),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        fake = WorkerProcess(proc=fleet, log=log, env=env)
        wait_for_log(fake, " ready.", timeout_s=240)
        settings_q = _settings(producer_settings, queue)
        for i in range(3):
            r.lpush(queue, item)
            assert submit("after poison", settings=settings_q, seed=20 + i).wait(120).images
        text = log.read_text(errors="replace")
        assert text.count("started worker pid") == 1, text[-3000:]
        assert "giving up" not in text and "restarting in" not in text
        assert poison.dead_lettered_since(r, 0)[_sha(item)] == 4
        assert r.llen(queue) == 0
    finally:
        fleet.send_signal(signal.SIGTERM)
        code = fleet.wait(timeout=120)
    assert code == 0
    # Nothing was put back at shutdown: the refused item never entered kombu's unacked set.
    assert r.llen(queue) == 0
