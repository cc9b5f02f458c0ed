"""What the schedule tests share: a clean Redis database (fixture ``redis``), a render queue
of their own (``queue``), prompt files, and lcm-scheduler processes (started and stopped by
the tests that use them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from lcm_fleet.contract import JobClass, class_queue
from tests.integration.conftest import METRICS_PORT, ROOT, TEST_REDIS_URL, stop_worker

#: lcm-scheduler's lock timeout and tick in these tests (the defaults are 10 s and 1 s).
LOCK_TIMEOUT_S = 5  # the defaults are 10 s; 3 s lost the lock under a full run's load
TICK_S = 0.5
#: Metrics ports of the scheduler processes: inside this run's metrics range.
SCHEDULER_METRICS_PORTS = (METRICS_PORT + 20, METRICS_PORT + 21, METRICS_PORT + 22)


def clean_schedules(client: Any) -> None:
    """Delete the keys schedules and RedBeat write (this test database only)."""
    for pattern in ("lcm-fleet:schedule*", "lcm-fleet:redbeat*"):
        for key in client.scan_iter(pattern, count=1000):
            client.delete(key)


def redis_client() -> Any:
    return redis_py.Redis.from_url(TEST_REDIS_URL)


@pytest.fixture
def redis() -> Iterator[Any]:
    """The test database, without schedules or RedBeat keys before and after the test."""
    client = redis_client()
    clean_schedules(client)
    yield client
    clean_schedules(client)


@pytest.fixture
def queue() -> str:
    """A render queue of the test's own (nothing consumes it: its jobs stay queued)."""
    return f"lcm.test.sched.{uuid.uuid4().hex[:8]}"


def queued(client: Any, queue: str) -> int:
    """Jobs waiting from the runs of schedules on ``queue``: runs are bulk work, so their jobs
    wait on the bulk queue beside it (lcm_fleet.contract.class_queue)."""
    return int(client.llen(class_queue(queue, JobClass.BULK)))


def write_source(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(f'{{"prompt": "{p}"}}\n' for p in prompts))
    return path


def batch_keys(client: Any, name: str) -> list[str]:
    """The batch records of a schedule's runs (``lcm-fleet:batch:<name>.<slot>``)."""
    found = client.scan_iter(f"lcm-fleet:batch:{name}.*", count=1000)
    return sorted(k.decode() for k in found if not k.decode().endswith((":jobs", ":webhooks")))


@dataclass
class SchedulerProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def leads(self) -> bool:
        return "holds the beat lock" in self.log_text()

    def expanded(self) -> list[str]:
        """Batch ids this process queued (its log's "queued N job(s) in batch X" lines)."""
        return re.findall(r"queued \d+ job\(s\) in batch (\S+)", self.log_text())


def scheduler_env(queue: str, metrics_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    env.update(
        LCM_REDIS_URL=TEST_REDIS_URL,
        LCM_QUEUE=queue,
        LCM_SCHEDULER_LOCK_TIMEOUT_S=str(LOCK_TIMEOUT_S),
        LCM_SCHEDULER_TICK_S=str(TICK_S),
        LCM_SCHEDULER_LEASE_S="5",
        LCM_SCHEDULER_METRICS_PORT=str(metrics_port),
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def start_scheduler(env: dict[str, str], log: Path) -> SchedulerProcess:
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer.schedules.service"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    process = SchedulerProcess(proc, log)
    wait_until(lambda: " ready: consuming" in process.log_text(), 30, process)
    return process


def stop_scheduler(process: SchedulerProcess) -> None:
    """SIGTERM (its beat releases the lock), then SIGKILL if it has not stopped in time."""
    stop_worker(process)  # type: ignore[arg-type]  # the same stop as a worker's, on .proc


def wait_until(
    check: Any, timeout_s: float, *processes: SchedulerProcess, poll_s: float = 0.1
) -> float:
    """Seconds until ``check()`` held; AssertionError with the processes' logs after the timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        for p in processes:
            if p.proc.poll() is not None:
                raise AssertionError(
                    f"lcm-scheduler exited ({p.proc.returncode}):\n{p.log_text()[-3000:]}"
                )
        time.sleep(poll_s)
    logs = "\n----\n".join(p.log_text()[-3000:] for p in processes)
    raise AssertionError(f"not done after {timeout_s} s:\n{logs}")
