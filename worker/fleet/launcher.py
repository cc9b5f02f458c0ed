"""``lcm-fleet``: one worker process per CPU socket and per GPU, restarted when one dies.

It discovers the NUMA nodes (from /sys) and OpenVINO's devices, starts one
``lcm-worker`` per unit with its device, its CPU affinity set to its socket's cores, its
render processes x OpenVINO threads chosen from the socket's core count
(worker/fleet/layout.py: the rule bench/streams measured; LCM_CONCURRENCY and
LCM_CPU_THREADS override it), each render process pinned to cores of its own, and a
metrics port of its own;
then it supervises: a worker that dies is started again after a capped, jittered
backoff. A worker that exits with code 2 (bad settings or artifact) is not restarted;
one that exits with code 4 (Redis unreachable at start) is restarted after the backoff
without counting towards giving up (Redis may come back); one that keeps dying otherwise
within ``stable_s`` is given up after ``max_restarts`` (worker/exit_codes.py). Nothing on a
queue makes a worker exit (lcm_fleet/consuming/broker_guard.py), so no message makes a unit
give up.
SIGTERM or SIGINT is passed on to every worker (each finishes its running job).

All other settings are the worker's own ``LCM_*`` variables, passed through.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lcm_fleet.backoff import Backoff
from lcm_fleet.settings import settings_problems
from worker.exit_codes import ExitCode
from worker.fleet.layout import LayoutSettings
from worker.fleet.topology import Unit, numa_nodes, openvino_devices, plan_units

logger = logging.getLogger("worker.fleet.launcher")

EXIT_CONFIG = int(ExitCode.CONFIG)
EXIT_BROKER = int(ExitCode.BROKER)


@dataclass
class Member:
    unit: Unit
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    given_up: str | None = None
    starts: int = field(default=0)


class Fleet:
    def __init__(
        self,
        units: list[Unit],
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        *,
        max_restarts: int = 10,
        stable_s: float = 60.0,
        backoff: Backoff | None = None,
        stop_timeout_s: float = 700.0,
    ) -> None:
        self.members = [Member(unit) for unit in units]
        self.command = command or [sys.executable, "-m", "worker.cli"]
        self.env = dict(os.environ if env is None else env)
        self.max_restarts = max_restarts
        self.stable_s = stable_s
        self.backoff = backoff or Backoff(base_s=1.0, cap_s=60.0, attempts=max_restarts + 1)
        self.stop_timeout_s = stop_timeout_s
        self.stopping = False

    def _start(self, member: Member) -> None:
        unit = member.unit
        cpus = unit.cpus

        def pin() -> None:  # runs in the child before exec
            if cpus:
                os.sched_setaffinity(0, cpus)

        member.proc = subprocess.Popen(self.command, env={**self.env, **unit.env()}, preexec_fn=pin)
        member.started_at = time.monotonic()
        member.restart_at = None
        member.starts += 1
        logger.info(
            "unit %s: started worker pid %d on %s%s%s (metrics :%d)",
            unit.name,
            member.proc.pid,
            unit.device,
            f" cpus {','.join(map(str, cpus))}" if cpus else "",
            f", {unit.layout.describe()}" if unit.layout else "",
            unit.metrics_port,
        )

    def start(self) -> None:
        for member in self.members:
            self._start(member)

    def poll(self) -> None:
        """Notice dead workers; restart those whose backoff has passed."""
        now = time.monotonic()
        for m in self.members:
            if m.given_up:
                continue
            if m.proc is not None and (code := m.proc.poll()) is not None:
                ran = now - m.started_at
                m.proc = None
                if self.stopping:
                    continue
                if code == EXIT_CONFIG:
                    m.given_up = f"worker exited with code {code} (settings or artifact refused)"
                    logger.error("unit %s: %s; not restarting", m.unit.name, m.given_up)
                    continue
                if code == EXIT_BROKER:
                    # The worker waited LCM_BROKER_CONNECT_TIMEOUT_S for Redis already.
                    delay = self.backoff.ceiling(self.max_restarts)
                    m.restart_at = now + delay
                    logger.warning(
                        "unit %s: worker could not reach Redis (exit code %d); starting it "
                        "again in %.1fs",
                        m.unit.name,
                        code,
                        delay,
                    )
                    continue
                m.failures = 1 if ran >= self.stable_s else m.failures + 1
                if m.failures > self.max_restarts:
                    m.given_up = f"died {m.failures} times within {self.stable_s:.0f}s of starting"
                    logger.error("unit %s: %s; giving up", m.unit.name, m.given_up)
                    continue
                delay = self.backoff.delay(m.failures - 1)
                m.restart_at = now + delay
                logger.warning(
                    "unit %s: worker exited with code %s after %.1fs; restarting in %.1fs",
                    m.unit.name,
                    code,
                    ran,
                    delay,
                )
            if (
                m.proc is None
                and m.restart_at is not None
                and now >= m.restart_at
                and not self.stopping
            ):
                self._start(m)

    def alive(self) -> bool:
        return any(m.given_up is None for m in self.members)

    def stop(self) -> None:
        self.stopping = True
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("unit %s: worker did not stop in time; killing it", m.unit.name)
                m.proc.kill()
                m.proc.wait()

    def run(self, poll_s: float = 0.5) -> int:
        received: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            received.append(signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not received and self.alive():
            time.sleep(poll_s)
            self.poll()
        if received:
            logger.info("signal %d: stopping %d worker(s)", received[0], len(self.members))
        self.stop()
        if not received:
            logger.error(
                "every unit has given up: %s",
                "; ".join(f"{m.unit.name}: {m.given_up}" for m in self.members),
            )
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lcm-fleet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--devices", help="comma list overriding discovery, e.g. CPU or GPU.0,GPU.1"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("LCM_METRICS_PORT", "9464")),
        help="first unit's metrics port; the next units count up (0: off)",
    )
    parser.add_argument("--max-restarts", type=int, default=10)
    parser.add_argument("--plan", action="store_true", help="print the units and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    wanted = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    try:
        layout = LayoutSettings()
    except ValidationError as e:
        problems = "\n".join(f"  {line}" for line in settings_problems(e))
        print(f"lcm-fleet: invalid settings:\n{problems}", file=sys.stderr)
        return 2
    try:
        units = plan_units(
            numa_nodes(),
            openvino_devices(),
            wanted=wanted,
            metrics_port=args.metrics_port,
            concurrency=layout.concurrency,
            cpu_threads=layout.cpu_threads,
        )
    except ValueError as e:
        print(f"lcm-fleet: {e}", file=sys.stderr)
        return 2
    for unit in units:
        cpus = ",".join(map(str, unit.cpus)) if unit.cpus else "-"
        split = f"\trender={unit.layout.describe()}" if unit.layout else ""
        print(
            f"{unit.name}\tdevice={unit.device}\tcpus={cpus}\tmetrics_port={unit.metrics_port}"
            f"{split}"
        )
    if args.plan:
        return 0
    return Fleet(units, max_restarts=args.max_restarts).run()


if __name__ == "__main__":
    sys.exit(main())
