"""bench/fleet: what the queue and storage cost, in one run.

Bare: one process builds the worker's own pipeline (worker.render.pipeline.GenaiPipeline, the
same settings) and renders N jobs in a loop. Fleet: the same N jobs are submitted through
Redis to a real `lcm-worker` process that renders them and stores PNGs in the real S3
server (SeaweedFS, started here). Throughput is images per second; overhead =
1 - fleet / bare.

All sides are started first (each renders one unmeasured warm-up job), then measured in
``--rounds`` alternating rounds (bare, fleet, ...; the next round in reverse order), so
that a machine shared with other work loads every side alike; each round records the
share of the machine's CPU that other processes took, and the CPU seconds each side
used (the CPU overhead is 1 - bare / fleet CPU seconds per image). ``--compare-code-dir``
adds a second fleet worker running the code of another tree (e.g. an older commit
exported with ``git archive``), measured in the same rounds.

    python -m bench.fleet.run                          # the tiny INT8 model (overhead-dominated)
    python -m bench.fleet.run --artifact DIR --jobs 6  # e.g. the full-size INT8 artifact
    python -m bench.fleet.run --compare-code-dir /tmp/old --compare-label prefork
    python -m bench.fleet.run --s3-latency-ms 100     # as if S3 were 100 ms away
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.services import local_services, start_worker
from lcm_fleet.artifact.manifest import Shape, read_manifest

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a lighthouse at dusk", "a bowl of ramen", "a red fox in snow", "a city at night"]
STAGES = ("queue_wait", "slot_wait", "render", "encode", "upload", "store_wait", "total")


def machine_cpu() -> tuple[float, float]:
    """(busy CPU s, total CPU s) of the whole machine so far, from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - fields[3] - fields[4]) / tick, total / tick


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process and its descendants, now."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            seconds += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return seconds


def git_describe(code_dir: Path) -> str:
    """The commit of the worker code measured (``+changes`` when its tree has edits)."""
    marker = code_dir / "COMMIT"
    if marker.is_file():  # a tree exported with git archive
        return marker.read_text().strip()
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=code_dir, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "worker"],
            cwd=code_dir,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+changes" if dirty else "")


class DelayProxy:
    """A TCP proxy in front of the S3 server that holds each response chunk ``delay_s``:
    the round trip of a remote S3 (the local one answers in milliseconds)."""

    def __init__(self, target: str, delay_s: float) -> None:
        from urllib.parse import urlparse

        url = urlparse(target)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.delay_s = delay_s
        self._ready = threading.Event()
        self._loop: Any = None
        self.listen_port = 0

    async def _pipe(self, src: Any, dst: Any, delay_s: float) -> None:
        import asyncio

        try:
            while data := await src.read(65536):
                if delay_s:
                    await asyncio.sleep(delay_s)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio

        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(
            self._pipe(reader, up_writer, 0.0), self._pipe(up_reader, writer, self.delay_s)
        )

    def start(self) -> str:
        import asyncio

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.listen_port = server.sockets[0].getsockname()[1]
            self._ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, name="s3-delay-proxy", daemon=True).start()
        self._ready.wait(10)
        return f"http://127.0.0.1:{self.listen_port}"


BARE_SERVER = """
import json, sys, time
from worker.model.artifact import verify_artifact
from worker.render.pipeline import GenaiPipeline
model = verify_artifact(sys.argv[1])
pipe = GenaiPipeline(model, "CPU", sys.argv[2], "default")
prompts = json.loads(sys.argv[3])
pipe.generate(prompts[0], 0, 4, model.guidance_scale)
print("ready", flush=True)
for line in sys.stdin:
    for i in range(int(line)):
        pipe.generate(prompts[i % len(prompts)], i, 4, model.guidance_scale)
    print("done", flush=True)
"""


@dataclass
class Side:
    """One thing measured: the bare loop, or a fleet worker."""

    label: str
    code: str
    proc: subprocess.Popen[Any]
    settings: Any = None
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def run(self, jobs: int) -> dict[str, Any]:
        machine0, cpu0 = machine_cpu(), tree_cpu_s(self.proc.pid)
        t0 = time.perf_counter()
        results = self._jobs(jobs)
        seconds = time.perf_counter() - t0
        own = tree_cpu_s(self.proc.pid) - cpu0
        busy, total = (a - b for a, b in zip(machine_cpu(), machine0, strict=True))
        measured: dict[str, Any] = {
            "seconds": round(seconds, 4),
            "images_per_s": round(jobs / seconds, 4),
            "own_cpu_s": round(own, 2),
            "other_processes_cpu_share": round(max(busy - own, 0.0) / total, 3),
        }
        if results:
            measured["mean_stage_s"] = {
                s: round(sum(r.durations_s.get(s, 0.0) for r in results) / jobs, 4) for s in STAGES
            }
        self.rounds.append(measured)
        return measured

    def _jobs(self, jobs: int) -> list[Any]:
        if self.settings is None:  # the bare loop
            assert self.proc.stdin and self.proc.stdout
            self.proc.stdin.write(f"{jobs}\n")
            self.proc.stdin.flush()
            if self.proc.stdout.readline().strip() != "done":
                raise RuntimeError("the bare loop failed")
            return []
        from producer.api import submit

        handles = [
            submit(PROMPTS[i % len(PROMPTS)], settings=self.settings, seed=i, steps=4)
            for i in range(jobs)
        ]
        return [h.wait(3600) for h in handles]

    def summary(self) -> dict[str, Any]:
        seconds = sum(r["seconds"] for r in self.rounds)
        jobs = sum(r["seconds"] * r["images_per_s"] for r in self.rounds)
        return {
            "code": self.code,
            "images_per_s": round(jobs / seconds, 4),
            # CPU seconds per image of the side's processes: hardly moved by other load.
            "cpu_s_per_image": round(sum(r["own_cpu_s"] for r in self.rounds) / jobs, 4),
            "rounds": self.rounds,
        }


def start_bare(artifact: Path, cache_dir: str, code_dir: Path) -> Side:
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_SERVER, str(artifact), cache_dir, json.dumps(PROMPTS)],
        cwd=code_dir,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError("the bare loop did not start")
    return Side("bare", git_describe(code_dir), proc)


def start_fleet(
    label: str, artifact: Path, env: dict[str, str], work: Path, code_dir: Path
) -> Side:
    from pydantic import SecretStr

    from producer.api import submit
    from producer.settings import ProducerSettings

    queue = f"lcm.bench.{uuid.uuid4().hex[:8]}"
    proc = start_worker(artifact, env, queue, work / f"fleet-worker-{label}.log", code_dir)
    settings = ProducerSettings(
        redis_url=env["LCM_REDIS_URL"],
        queue=queue,
        s3_endpoint_url=env["LCM_S3_ENDPOINT_URL"],
        s3_bucket=env["LCM_S3_BUCKET"],
        s3_access_key_id=SecretStr(env["LCM_S3_ACCESS_KEY_ID"]),
        s3_secret_access_key=SecretStr(env["LCM_S3_SECRET_ACCESS_KEY"]),
    )
    submit(PROMPTS[0], settings=settings, seed=0, steps=4).wait(900)  # warm-up
    return Side(label, git_describe(code_dir), proc, settings)


def stop(side: Side) -> None:
    if side.proc.poll() is None:
        if side.settings is None and side.proc.stdin:
            side.proc.stdin.close()
        else:
            side.proc.send_signal(signal.SIGTERM)
        try:
            side.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            side.proc.kill()


def build_tiny(work: Path) -> Path:
    artifact = work / "tiny-int8"
    if not (artifact / "manifest.json").is_file():
        lcm_build = [sys.executable, "-m", "model_build.cli"]
        subprocess.run([*lcm_build, "tiny", str(work / "tiny")], check=True, cwd=ROOT)
        subprocess.run(
            [
                *lcm_build,
                "build",
                str(work / "tiny"),
                str(artifact),
                "--overwrite",
                "--samples",
                "40",
                "--eval-seeds",
                "1",
                "--no-progress",
            ],
            check=True,
            cwd=ROOT,
        )
    return artifact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--artifact", type=Path, help="artifact folder (default: build the tiny INT8)"
    )
    parser.add_argument("--jobs", type=int, default=40, help="jobs per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "var" / "bench-fleet")
    parser.add_argument("--s3-port", type=int, default=18933)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--label", default="fleet", help="name of this tree's fleet worker")
    parser.add_argument(
        "--compare-code-dir",
        type=Path,
        help="also measure a worker running the code of this tree (e.g. an older commit)",
    )
    parser.add_argument("--compare-label", default="compare")
    parser.add_argument(
        "--s3-latency-ms",
        type=float,
        default=0.0,
        help="hold each S3 response this long (a remote S3's round trip), through a local proxy",
    )
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    artifact = (args.artifact or build_tiny(work)).resolve()
    services = local_services()
    env = services.start(work / "services", s3_port=args.s3_port, bucket="lcm-bench")
    if args.s3_latency_ms:
        proxy = DelayProxy(env["LCM_S3_ENDPOINT_URL"], args.s3_latency_ms / 1000)
        env = {**env, "LCM_S3_ENDPOINT_URL": proxy.start()}
    sides: list[Side] = []
    try:
        sides.append(start_bare(artifact, str(work / "ov-cache"), ROOT))
        sides.append(start_fleet(args.label, artifact, env, work, ROOT))
        if args.compare_code_dir:
            code = args.compare_code_dir.resolve()
            sides.append(start_fleet(args.compare_label, artifact, env, work, code))
        for round_ in range(args.rounds):
            for side in sides if round_ % 2 == 0 else list(reversed(sides)):
                print(f"round {round_ + 1}: {side.label} {side.run(args.jobs)}", flush=True)
    finally:
        for side in sides:
            stop(side)
        services.stop(work / "services")
    bare, fleets = sides[0], sides[1:]
    overhead = {}
    for side in fleets:
        per_round = [
            round(1 - f["images_per_s"] / b["images_per_s"], 4)
            for f, b in zip(side.rounds, bare.rounds, strict=True)
        ]
        fleet_sum, bare_sum = side.summary(), bare.summary()
        overhead[side.label] = {
            "median": round(statistics.median(per_round), 4),
            "rounds": per_round,
            "total": round(1 - fleet_sum["images_per_s"] / bare_sum["images_per_s"], 4),
            # Extra CPU per image the queue, storage and worker cost (1 - bare/fleet CPU).
            "cpu": round(1 - bare_sum["cpu_s_per_image"] / fleet_sum["cpu_s_per_image"], 4),
        }
    manifest = read_manifest(artifact)
    shape = manifest.shape or Shape()
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    report = {
        "benchmark": "fleet",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu, "cores": os.cpu_count()},
        "artifact": str(artifact),
        "shape": manifest.shape.as_dict() if manifest.shape else None,
        "precision": manifest.precision,
        "jobs_per_round": args.jobs,
        "s3_latency_ms": args.s3_latency_ms,
        "rounds": args.rounds,
        "sides": {side.label: side.summary() for side in sides},
        "overhead": overhead,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    latency = f"-s3lat{args.s3_latency_ms:g}ms" if args.s3_latency_ms else ""
    name = f"fleet-{shape.width}x{shape.height}{latency}-{datetime.now():%Y%m%d-%H%M}"
    (args.results_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("machine", "shape", "overhead")}, indent=2))
    print(f"written: {args.results_dir / name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
