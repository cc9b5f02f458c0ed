"""bench/coldstart: worker start to first image, with and without the compile cache, in one run.

Two measurements, each with an empty compile cache per sample ("cold") and with one cache
directory that a first, unmeasured sample filled ("warm"):

- ``pipeline``: a new process verifies the artifact, builds the worker's pipeline
  (worker.render.pipeline.GenaiPipeline) and renders one image: the floor of what a worker can do.
- ``worker``: the real ``lcm-worker`` process (Celery, Redis, the render process, uploads to
  the real S3 server, started here), with one job already waiting on its queue. Times, from
  the process start: the artifact's files verified, the pipelines compiled and warmed up,
  Celery consuming, and the job's result stored (its PNG uploaded and verified): the first
  image. Warm samples run with the warm-up render (``LCM_WARMUP=true``; the default only
  when a memory budget is set) and without.

Reported: medians of --runs samples, and the cache's size on disk.

    python -m bench.coldstart.run --artifact var/bench/int8 [--runs 3] [--mode both]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.services import local_services
from lcm_fleet.artifact.manifest import Shape, read_manifest

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a lighthouse at dusk"

CHILD = """
import json, sys, time
t_import = time.perf_counter()
from worker.model.artifact import verify_artifact
from worker.render.pipeline import GenaiPipeline
model = verify_artifact(sys.argv[1])
pipe = GenaiPipeline(model, "CPU", sys.argv[2], "default")
ready = time.perf_counter()
pipe.generate("a lighthouse at dusk", 0, 4, model.guidance_scale)
print(json.dumps({"ready_after_import_s": ready - t_import,
                  "image_after_import_s": time.perf_counter() - t_import,
                  "compile_s": pipe.compile_s}))
"""

#: Log lines of lcm-worker that mark its start-up stages (logging's asctime, or Celery's).
MARKS = {
    "verified_s": re.compile(r"artifact .* verified"),
    "pipelines_ready_s": re.compile(r"render process \d+ \(pid \d+\) ready in"),
    "consuming_s": re.compile(r" ready\.$"),
}
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def sample(artifact: Path, cache_dir: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(artifact), str(cache_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    child = json.loads(out.stdout.strip().splitlines()[-1])
    startup = wall - child["image_after_import_s"]  # interpreter start and imports
    return {
        "ready_s": round(startup + child["ready_after_import_s"], 3),
        "first_image_s": round(wall, 3),
        "compile_s": round(child["compile_s"], 3),
    }


def log_marks(log: str, started_at: float) -> dict[str, float]:
    """Seconds after ``started_at`` (time.time()) of the first line matching each mark."""
    marks: dict[str, float] = {}
    for line in log.splitlines():
        stamp = STAMP.search(line)
        if not stamp:
            continue
        for name, pattern in MARKS.items():
            if name not in marks and pattern.search(line):
                when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                marks[name] = round(when + int(stamp.group(2)) / 1000 - started_at, 3)
    return marks


def worker_sample(
    artifact: Path, cache_dir: Path, env: dict[str, str], work: Path, warmup: bool
) -> dict[str, Any]:
    """Queue one job, start lcm-worker, and time it until the job's result is stored."""
    from pydantic import SecretStr

    from producer.api import submit
    from producer.settings import ProducerSettings

    queue = f"lcm.coldstart.{uuid.uuid4().hex[:8]}"
    settings = ProducerSettings(
        redis_url=env["LCM_REDIS_URL"],
        queue=queue,
        s3_endpoint_url=env["LCM_S3_ENDPOINT_URL"],
        s3_bucket=env["LCM_S3_BUCKET"],
        s3_access_key_id=SecretStr(env["LCM_S3_ACCESS_KEY_ID"]),
        s3_secret_access_key=SecretStr(env["LCM_S3_SECRET_ACCESS_KEY"]),
    )
    handle = submit(PROMPT, settings=settings, seed=0, steps=4)
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    worker_env.update(
        env,
        LCM_MODEL_DIR=str(artifact),
        LCM_QUEUE=queue,
        LCM_METRICS_PORT="0",
        LCM_CACHE_DIR=str(cache_dir),
        LCM_WARMUP="true" if warmup else "false",
    )
    log_path = work / f"worker-{queue}.log"
    with open(log_path, "wb") as out:
        started_at, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli"],
            cwd=ROOT,
            env=worker_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        result = handle.wait(900)
        first_image = time.perf_counter() - t0
    except Exception as e:
        raise RuntimeError(f"{e}; worker log:\n{log_path.read_text()[-3000:]}") from e
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    marks = log_marks(log_path.read_text(errors="replace"), started_at)
    durations = result.durations_s
    return {
        **marks,
        "first_image_s": round(first_image, 3),
        "job_render_s": round(durations.get("render", 0.0), 3),
        "job_total_s": round(durations.get("total", 0.0), 3),
    }


def summarize(samples: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in samples[0] if all(k in s for s in samples)]
    return {k: round(statistics.median(s[k] for s in samples), 3) for k in keys}


def cache_gib(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1024**3, 3)


def measure_pipeline(artifact: Path, runs: int, tmp: Path) -> dict[str, Any]:
    cold = []
    for i in range(runs):
        cache = tmp / f"cold{i}"
        cold.append(sample(artifact, cache))
        shutil.rmtree(cache, ignore_errors=True)
    warm_dir = tmp / "warm"
    sample(artifact, warm_dir)  # fills the cache, not measured
    warm = [sample(artifact, warm_dir) for _ in range(runs)]
    return {
        "no_cache": summarize(cold),
        "warm_cache": summarize(warm),
        "cache_gib": cache_gib(warm_dir),
        "samples": {"no_cache": cold, "warm_cache": warm},
    }


def measure_worker(artifact: Path, runs: int, tmp: Path, s3_port: int) -> dict[str, Any]:
    services = local_services()
    state = tmp / "services"
    env = services.start(state, s3_port=s3_port, bucket="lcm-coldstart")
    try:
        cold = []
        for i in range(runs):
            cache = tmp / f"worker-cold{i}"
            cold.append(worker_sample(artifact, cache, env, tmp, warmup=True))
            shutil.rmtree(cache, ignore_errors=True)
            print(f"worker, no cache: {cold[-1]}", flush=True)
        warm_dir = tmp / "worker-warm"
        worker_sample(artifact, warm_dir, env, tmp, warmup=True)  # fills the cache
        warm, warm_no_warmup = [], []
        for _ in range(runs):  # alternated, so a change in machine load hits both alike
            warm.append(worker_sample(artifact, warm_dir, env, tmp, warmup=True))
            print(f"worker, warm cache: {warm[-1]}", flush=True)
            warm_no_warmup.append(worker_sample(artifact, warm_dir, env, tmp, warmup=False))
            print(f"worker, warm cache, LCM_WARMUP=false: {warm_no_warmup[-1]}", flush=True)
    finally:
        services.stop(state)
    return {
        "no_cache": summarize(cold),
        "warm_cache": summarize(warm),
        "warm_cache_no_warmup": summarize(warm_no_warmup),
        "cache_gib": cache_gib(warm_dir),
        "samples": {
            "no_cache": cold,
            "warm_cache": warm,
            "warm_cache_no_warmup": warm_no_warmup,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.coldstart.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mode", choices=("pipeline", "worker", "both"), default="both")
    parser.add_argument("--s3-port", type=int, default=18934)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    artifact = args.artifact.resolve()
    manifest = read_manifest(artifact)
    shape = manifest.shape or Shape()
    report: dict[str, Any] = {
        "benchmark": "coldstart",
        "date": datetime.now().isoformat(timespec="seconds"),
        "artifact": str(artifact),
        "shape": manifest.shape.as_dict() if manifest.shape else None,
        "precision": manifest.precision,
        "vae_decoder": manifest.vae_decoder_kind,
        "runs": args.runs,
    }
    with tempfile.TemporaryDirectory(prefix="lcm-coldstart-") as tmp:
        if args.mode in ("pipeline", "both"):
            report["pipeline"] = measure_pipeline(artifact, args.runs, Path(tmp))
        if args.mode in ("worker", "both"):
            report["worker"] = measure_worker(artifact, args.runs, Path(tmp), args.s3_port)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = f"coldstart-{shape.width}x{shape.height}-{datetime.now():%Y%m%d-%H%M}"
    (args.results_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    brief = {
        k: ({kk: vv for kk, vv in v.items() if kk != "samples"} if isinstance(v, dict) else v)
        for k, v in report.items()
    }
    print(json.dumps(brief, indent=2))
    print(f"written: {args.results_dir / name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
