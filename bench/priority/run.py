"""bench/priority: interactive jobs while a bulk batch is queued, against the same jobs idle.

A fleet of real ``lcm-worker`` processes serves the reference INT8 artifact (built here from
``model_build/reference/weights`` by the real ``lcm-build build``, or ``--artifact``) from
real Redis and SeaweedFS (deploy/local/services.py). Three phases, in this order:

1. **idle**: ``--interactive`` K single jobs (``producer.submit``: interactive) submitted one
   every ``--pace-s`` on an idle fleet;
2. **bulk**: a batch of ``--bulk`` B jobs (``producer.bulk``: bulk) alone, until every job
   has succeeded;
3. **mixed**: the same batch queued whole, then, once its first job runs, the same K
   interactive jobs paced the same way.

Each interactive job's latency is from just before its submit (``submitted_at``) to its
record's ``finished_at`` (written by the worker once its PNGs and ``result.json`` are stored
and verified); p50 and p99 per phase. Bulk throughput is the batch's images over the time
from its first job's start to its last job's end. The report puts both against the issue's
goals: interactive p99 under load within one bulk render time (the median render stage of
the bulk phase's jobs) of the idle p99, and bulk throughput with the interactive jobs
within 5% of bulk alone. The order in which a worker takes interactive and bulk work is
the worker's (the code measured is named in the report).

    python -m bench.priority.run                               # B=1000, K=10
    python -m bench.priority.run --bulk 60 --interactive 10    # a smoke run
    python -m bench.priority.run --workers 2 --pace-s 0.5 --artifact DIR
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
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.fleet.run import git_describe, machine_cpu, tree_cpu_s
from bench.services import local_services

ROOT = Path(__file__).resolve().parents[2]
GOAL_BULK_RATIO = 0.95


@dataclass(frozen=True)
class Interactive:
    """One interactive job of a phase."""

    job_id: str
    submitted_at: float
    finished_at: float
    latency_s: float
    #: Bulk jobs waiting (every list of the bulk queue) when it was submitted.
    bulk_waiting: int


@dataclass(frozen=True)
class Bulk:
    """A bulk batch's run."""

    jobs: int
    images: int
    first_started_at: float
    last_finished_at: float
    images_per_s: float
    #: Median of its jobs' render stage (the result's ``durations_s["render"]``): "one bulk
    #: render time" of the goal.
    render_s_median: float
    #: Median started -> finished of its jobs (the render, its uploads, and the wait for the
    #: render process while the other job in flight renders).
    job_s_median: float


@dataclass(frozen=True)
class Phase:
    name: str
    interactive: tuple[Interactive, ...] = ()
    bulk: Bulk | None = None
    #: Share of the machine's CPU that processes other than the workers took meanwhile (a
    #: shared machine weighs on a phase; compare phases only at similar shares).
    other_cpu_share: float = 0.0

    def latency(self) -> dict[str, float] | None:
        if not self.interactive:
            return None
        return summarize([i.latency_s for i in self.interactive])


def summarize(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else []
    return {
        "n": len(ordered),
        "p50_s": round(statistics.median(ordered), 4),
        "p99_s": round(cuts[98] if cuts else ordered[0], 4),
        "max_s": round(ordered[-1], 4),
        "mean_s": round(statistics.fmean(ordered), 4),
    }


def isa() -> list[str]:
    """What ``lscpu | grep -o -E 'avx2|avx512_vnni|amx_tile' | sort -u`` prints."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx2", "avx512_vnni", "amx_tile")})


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return "unknown"


def reference_artifact(work: Path) -> Path:
    """The reference INT8 artifact, built once by the real CLI (quality gate included)."""
    artifact = work / "reference-int8"
    if not (artifact / "manifest.json").is_file():
        weights = ROOT / "model_build" / "reference" / "weights"
        cmd = [sys.executable, "-m", "model_build.cli", "build", str(weights), str(artifact)]
        subprocess.run([*cmd, "--samples", "80", "--overwrite", "--no-progress"], check=True)
    return artifact


class Load:
    """The machine's CPU that other processes than ``pids`` (and their children) take
    between :meth:`start` and :meth:`share`."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start()

    def _own(self) -> float:
        return sum(tree_cpu_s(pid) for pid in self.pids)

    def start(self) -> None:
        self.machine, self.own = machine_cpu(), self._own()

    def share(self) -> float:
        busy, total = (a - b for a, b in zip(machine_cpu(), self.machine, strict=True))
        return round(max(busy - (self._own() - self.own), 0.0) / total, 3) if total else 0.0


class Fleet:
    """Real lcm-worker processes on one queue of their own."""

    def __init__(
        self, artifact: Path, env: dict[str, str], work: Path, workers: int, metrics_port: int
    ) -> None:
        from pydantic import SecretStr

        from producer.settings import ProducerSettings

        self.queue = f"lcm.bench.priority.{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen[bytes]] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
        base.update(
            env,
            LCM_MODEL_DIR=str(artifact),
            LCM_QUEUE=self.queue,
            LCM_CACHE_DIR=str(work / "ov-cache"),
            PYTHONPATH=str(ROOT),
        )
        self.logs = [work / f"worker-{n}.log" for n in range(workers)]
        for n, log in enumerate(self.logs):
            port = str(metrics_port + n if metrics_port else 0)
            with open(log, "wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "worker.cli"],
                        cwd=ROOT,
                        env={**base, "LCM_METRICS_PORT": port},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        self.settings = ProducerSettings(
            redis_url=env["LCM_REDIS_URL"],
            queue=self.queue,
            s3_endpoint_url=env["LCM_S3_ENDPOINT_URL"],
            s3_bucket=env["LCM_S3_BUCKET"],
            s3_access_key_id=SecretStr(env["LCM_S3_ACCESS_KEY_ID"]),
            s3_secret_access_key=SecretStr(env["LCM_S3_SECRET_ACCESS_KEY"]),
        )

    def wait_ready(self, timeout_s: float = 900) -> None:
        deadline = time.monotonic() + timeout_s
        for proc, log in zip(self.procs, self.logs, strict=True):
            while " ready." not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a worker did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()


def prompts() -> list[str]:
    from model_build.reference.domain import all_scenes

    return [scene.caption for scene in all_scenes()]


def bulk_waiting(fleet: Fleet, fields: dict[str, int]) -> int:
    """Bulk jobs waiting in the queue family the phase's jobs go to (a size class's with
    ``--size``)."""
    from lcm_fleet.consuming.depth import family_depths
    from lcm_fleet.contract import size_queue
    from producer.queue import cached_broker

    queue = fleet.queue
    if "width" in fields and "height" in fields:
        queue = size_queue(queue, fields["width"], fields["height"])
    (depth,) = family_depths(cached_broker(fleet.settings), [queue])
    return depth.bulk_waiting


def run_interactive(
    fleet: Fleet, count: int, pace_s: float, fields: dict[str, int], timeout_s: float
) -> tuple[Interactive, ...]:
    """``count`` interactive jobs, one every ``pace_s``, each timed to its stored PNG."""
    from producer.api import submit

    texts = prompts()
    submitted: list[tuple[Any, float, int]] = []
    start = time.monotonic()
    for n in range(count):
        time.sleep(max(0.0, start + n * pace_s - time.monotonic()))
        waiting = bulk_waiting(fleet, fields)
        at = time.time()
        handle = submit(texts[(7 * n) % len(texts)], settings=fleet.settings, seed=n, **fields)
        submitted.append((handle, at, waiting))
    done: list[Interactive] = []
    for handle, at, waiting in submitted:
        handle.wait(timeout_s=timeout_s, poll_s=0.02)
        record = handle.record()
        assert record is not None and record.finished_at is not None
        done.append(
            Interactive(
                record.job_id, at, record.finished_at, round(record.finished_at - at, 4), waiting
            )
        )
    return tuple(done)


def submit_bulk(
    fleet: Fleet, count: int, fields: dict[str, int], work: Path
) -> tuple[str, list[str]]:
    """A batch of ``count`` bulk jobs, queued whole (``producer.bulk``); its id and job ids."""
    from producer.bulk import read_jobs_file, submit_rows

    texts = prompts()
    path = work / f"bulk-{count}.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": texts[n % len(texts)], "seed": n, **fields}) + "\n"
            for n in range(count)
        )
    )
    batch_id = f"bench-priority-{uuid.uuid4().hex[:8]}"
    bulk = read_jobs_file(path, batch_id=batch_id)
    handles = submit_rows(bulk.rows, fleet.settings, batch_id=batch_id, source=str(path))
    return batch_id, [h.job_id for h in handles]


def wait_first_start(fleet: Fleet, job_ids: list[str], timeout_s: float) -> None:
    """Until the batch's first job runs (the fleet is busy with bulk work)."""
    from producer.queue import cached_records

    records = cached_records(fleet.settings)
    deadline = time.monotonic() + timeout_s
    while (record := records.get_job(job_ids[0])) is None or record.started_at is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the bulk batch's first job did not start")
        time.sleep(0.02)


def finish_bulk(fleet: Fleet, batch_id: str, job_ids: list[str], timeout_s: float) -> Bulk:
    """Wait for the batch to finish; its throughput from its records."""
    from producer.queue import cached_records

    records = cached_records(fleet.settings)
    deadline = time.monotonic() + timeout_s
    while True:
        batch = records.get_batch(batch_id)
        if batch is not None and batch.finished:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} not finished after {timeout_s:.0f}s: {batch}")
        time.sleep(0.25)
    if batch.counts.succeeded != len(job_ids):
        raise RuntimeError(f"batch {batch_id}: not every job succeeded: {batch.counts}")
    jobs = [records.get_job(job_id) for job_id in job_ids]
    started = [j.started_at for j in jobs if j is not None and j.started_at is not None]
    finished = [j.finished_at for j in jobs if j is not None and j.finished_at is not None]
    images = sum(len(j.result.images) for j in jobs if j is not None and j.result is not None)
    span = max(finished) - min(started)
    return Bulk(
        jobs=len(job_ids),
        images=images,
        first_started_at=min(started),
        last_finished_at=max(finished),
        images_per_s=round(images / span, 4),
        render_s_median=round(
            statistics.median(
                j.result.durations_s["render"]
                for j in jobs
                if j is not None and j.result is not None
            ),
            4,
        ),
        job_s_median=round(
            statistics.median(
                j.finished_at - j.started_at
                for j in jobs
                if j is not None and j.finished_at is not None and j.started_at is not None
            ),
            4,
        ),
    )


def goals(idle: Phase, bulk: Phase, mixed: Phase) -> dict[str, Any]:
    idle_lat, mixed_lat = idle.latency(), mixed.latency()
    assert idle_lat and mixed_lat and bulk.bulk and mixed.bulk
    excess = mixed_lat["p99_s"] - idle_lat["p99_s"]
    ratio = mixed.bulk.images_per_s / bulk.bulk.images_per_s
    return {
        "interactive_p99_excess_s": round(excess, 4),
        "one_bulk_render_s": bulk.bulk.render_s_median,
        "interactive_p99_excess_in_bulk_renders": round(excess / bulk.bulk.render_s_median, 3),
        "interactive_goal_met": excess <= bulk.bulk.render_s_median,
        "interactive_p50_ratio": round(mixed_lat["p50_s"] / idle_lat["p50_s"], 3),
        "bulk_throughput_ratio": round(ratio, 4),
        "bulk_goal_met": ratio >= GOAL_BULK_RATIO,
        # The interactive jobs met a queued batch only if it had not drained before the last.
        "bulk_still_queued_at_last_interactive": mixed.interactive[-1].bulk_waiting > 0,
    }


def markdown(report: dict[str, Any]) -> str:
    m, g = report["machine"], report["goals"]
    lines = [
        f"# bench/priority, {report['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['isa']) or 'none listed'}. "
        f"Code {report['code']}; {report['workers']} worker(s); artifact {report['artifact']} "
        f"({report['shape']}), {report['steps']} steps. B={report['bulk_jobs']} bulk jobs, "
        f"K={report['interactive_jobs']} interactive jobs, one every {report['pace_s']} s.",
        "",
        "| phase | interactive p50 s | p99 s | max s | bulk images/s | bulk render s "
        "| bulk job s | other processes' CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, phase in report["phases"].items():
        lat, bulk = phase["latency"] or {}, phase["bulk"] or {}
        lines.append(
            f"| {name} | {lat.get('p50_s', '')} | {lat.get('p99_s', '')} | {lat.get('max_s', '')} "
            f"| {bulk.get('images_per_s', '')} | {bulk.get('render_s_median', '')} "
            f"| {bulk.get('job_s_median', '')} | {phase['other_cpu_share']:.0%} |"
        )
    lines += [
        "",
        f"Interactive p99 under load minus idle: {g['interactive_p99_excess_s']} s, "
        f"{g['interactive_p99_excess_in_bulk_renders']} bulk render times (goal: at most 1; "
        f"met: {g['interactive_goal_met']}).",
        f"Bulk throughput with the interactive jobs / alone: {g['bulk_throughput_ratio']} "
        f"(goal: at least {GOAL_BULK_RATIO}; met: {g['bulk_goal_met']}).",
        f"Bulk jobs still queued when the last interactive job was submitted: "
        f"{g['bulk_still_queued_at_last_interactive']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.priority.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bulk", type=int, default=1000, help="B: jobs in the bulk batch")
    parser.add_argument("--interactive", type=int, default=10, help="K: interactive jobs")
    parser.add_argument("--pace-s", type=float, default=1.0, help="between interactive submits")
    parser.add_argument("--workers", type=int, default=1, help="lcm-worker processes")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--size",
        default="",
        help="WxH to serve and render (default: the artifact's shape); a larger size makes "
        "the render, not the per-job bookkeeping, the bulk of a job's time",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="LCM_NAME=VALUE",
        help="a setting of every worker (repeatable), e.g. LCM_BULK_YIELD_MAX_S=0 for an A/B",
    )
    parser.add_argument("--artifact", type=Path, help="default: build the reference INT8")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "var" / "bench-priority")
    parser.add_argument("--s3-port", type=int, default=18936)
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="first worker's (0: any free port)"
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per phase")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args(argv)
    # 1. Inputs.
    if args.bulk < 1 or args.interactive < 2 or args.pace_s < 0 or args.workers < 1:
        parser.error(
            "need --bulk >= 1, --interactive >= 2 (for a p99), --pace-s >= 0, --workers >= 1"
        )
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # 2. The artifact, the services, the fleet (each worker's first job is a warm-up).
    artifact = (args.artifact or reference_artifact(work)).resolve()
    services = local_services()
    env = services.start(work / "services", s3_port=args.s3_port, bucket="lcm-bench")
    fields: dict[str, int] = {"steps": args.steps}
    if args.size:
        width, height = (int(v) for v in args.size.lower().split("x"))
        fields.update(width=width, height=height)
        env = {**env, "LCM_SIZES": f"{width}x{height}"}
    for item in args.worker_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("LCM_"):
            parser.error(f"--worker-env {item!r}: expected LCM_NAME=VALUE")
        env = {**env, name: value}
    fleet = Fleet(artifact, env, work, args.workers, args.metrics_port)
    try:
        fleet.wait_ready()
        from producer.api import submit

        for n in range(2 * args.workers):
            submit(prompts()[n], settings=fleet.settings, seed=n, **fields).wait(900)
        # 3. Idle, 4. bulk alone, 5. the batch queued whole, then the interactive jobs.
        load = Load([p.pid for p in fleet.procs])
        idle = Phase(
            "idle",
            run_interactive(fleet, args.interactive, args.pace_s, fields, args.timeout_s),
            other_cpu_share=load.share(),
        )
        print(f"idle: {idle.latency()}", flush=True)
        batch_id, ids = submit_bulk(fleet, args.bulk, fields, work)
        load.start()
        bulk_alone = finish_bulk(fleet, batch_id, ids, args.timeout_s)
        bulk = Phase("bulk", bulk=bulk_alone, other_cpu_share=load.share())
        print(f"bulk: {bulk.bulk}", flush=True)
        batch_id, ids = submit_bulk(fleet, args.bulk, fields, work)
        load.start()
        wait_first_start(fleet, ids, args.timeout_s)
        found: list[tuple[Interactive, ...]] = []
        paced = threading.Thread(
            target=lambda: found.append(
                run_interactive(fleet, args.interactive, args.pace_s, fields, args.timeout_s)
            )
        )
        paced.start()
        mixed_bulk = finish_bulk(fleet, batch_id, ids, args.timeout_s)
        paced.join()
        if not found:
            raise RuntimeError("the interactive jobs of the mixed phase failed (see above)")
        mixed = Phase("mixed", found[0], mixed_bulk, load.share())
        print(f"mixed: {mixed.latency()} {mixed.bulk}", flush=True)
    finally:
        fleet.stop()
        services.stop(work / "services")
    # 6. The report.
    from lcm_fleet.artifact.manifest import read_manifest

    manifest = read_manifest(artifact)
    shape = args.size or (
        f"{manifest.shape.width}x{manifest.shape.height}" if manifest.shape else "unknown"
    )
    phases = (idle, bulk, mixed)
    report = {
        "benchmark": "priority",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": isa()},
        "code": git_describe(ROOT),
        "artifact": str(artifact),
        "shape": shape,
        "precision": manifest.precision,
        "steps": args.steps,
        "worker_env": args.worker_env,
        "workers": args.workers,
        "bulk_jobs": args.bulk,
        "interactive_jobs": args.interactive,
        "pace_s": args.pace_s,
        "phases": {
            p.name: {
                "latency": p.latency(),
                "bulk": asdict(p.bulk) if p.bulk else None,
                "other_cpu_share": p.other_cpu_share,
                "interactive": [asdict(i) for i in p.interactive],
            }
            for p in phases
        },
        "goals": goals(idle, bulk, mixed),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    name = f"priority-{shape}-b{args.bulk}-k{args.interactive}-{datetime.now():%Y%m%d-%H%M}{tag}"
    (args.results_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results_dir / f"{name}.md").write_text(markdown(report))
    print(json.dumps(report["goals"], indent=2))
    print(f"written: {args.results_dir / name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
