"""lcm-fleet on this machine: one pinned worker per socket, restarted when it is killed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

from producer.api import submit
from producer.settings import ProducerSettings
from tests.integration.conftest import METRICS_PORT, ROOT, worker_env
from worker.fleet.layout import choose_layout, split_cpus


def _wait(log, pattern: str, count: int = 1, timeout_s: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.findall(pattern, log.read_text(errors="replace"))
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} x{count} not in fleet log:\n{log.read_text()[-3000:]}")


def test_fleet_pins_workers_and_restarts_a_killed_one(
    service_env, model_dirs, tmp_path, producer_settings
):
    queue = f"lcm.fleet.{uuid.uuid4().hex[:8]}"
    env = worker_env(service_env, model_dirs["int8"], tmp_path, queue)
    log = tmp_path / "fleet.log"
    with open(log, "wb") as out:
        fleet = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.fleet.launcher",
                "--metrics-port",
                str(METRICS_PORT + 10),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        first = int(_wait(log, r"started worker pid (\d+)")[0])
        _wait(log, r" ready\.")
        allowed = sorted(os.sched_getaffinity(0))
        with open(f"/proc/{first}/status") as status:
            pinned = re.search(r"Cpus_allowed_list:\s*(\S+)", status.read()).group(1)
        assert pinned == (f"{allowed[0]}-{allowed[-1]}" if len(allowed) > 1 else str(allowed[0]))
        # The unit's split (worker/fleet/layout.py) in its start lines, each render process
        # pinned to cores of its own.
        started = _wait(log, r"started worker pid \d+ on CPU cpus \S+, (.*?) \(metrics")[0]
        layout = choose_layout(len(allowed))
        assert started == layout.describe()
        ready = _wait(log, r"lcm-worker cpu0 ready: .*")[0]
        cores = split_cpus(allowed, layout.processes, layout.threads)
        assert f"x {layout.threads} thread(s)" in ready
        assert " | ".join(",".join(map(str, c)) for c in cores) in ready
        settings = ProducerSettings(**{**producer_settings.model_dump(), "queue": queue})
        assert submit("before", settings=settings, seed=1).wait(60).images

        os.kill(first, signal.SIGKILL)
        _wait(log, r"restarting in")
        pids = _wait(log, r"started worker pid (\d+)", count=2)
        assert int(pids[1]) != first
        _wait(log, r" ready\.", count=2)
        assert submit("after restart", settings=settings, seed=2).wait(60).images
    finally:
        fleet.send_signal(signal.SIGTERM)
        code = fleet.wait(timeout=90)
    assert code == 0
