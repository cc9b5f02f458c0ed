"""bench/fleet: what the queue and storage cost, in one run.

Bare: one process builds the worker's own pipeline (worker.pipeline.GenaiPipeline, the
same settings) and renders N jobs in a loop. Fleet: the same N jobs are submitted through
Redis to a real `lcm-worker` process that renders them and stores PNGs in the real S3
server (SeaweedFS, started here). Throughput is images per second after one warm-up job
on each side; overhead = 1 - fleet / bare.

    python -m bench.fleet.run                          # the tiny INT8 model (overhead-dominated)
    python -m bench.fleet.run --artifact DIR --jobs 8  # e.g. the full-size INT8 artifact
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a lighthouse at dusk", "a bowl of ramen", "a red fox in snow", "a city at night"]


def _services() -> Any:
    spec = importlib.util.spec_from_file_location("lcm_services", ROOT / "deploy/local/services.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bare_loop(artifact: Path, jobs: int, cache_dir: str) -> dict[str, float]:
    """Run in a child process: the worker's pipeline, rendering in a plain loop."""
    code = f"""
import json, time
from worker.artifact import verify_artifact
from worker.pipeline import GenaiPipeline
model = verify_artifact({str(artifact)!r})
pipe = GenaiPipeline(model, "CPU", {cache_dir!r}, "default")
prompts = {PROMPTS!r}
pipe.generate(prompts[0], 0, 4, model.guidance_scale)
t0 = time.perf_counter()
for i in range({jobs}):
    pipe.generate(prompts[i % len(prompts)], i, 4, model.guidance_scale)
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    return {"seconds": round(seconds, 4), "images_per_s": round(jobs / seconds, 4)}


def fleet_run(artifact: Path, jobs: int, env: dict[str, str], work: Path) -> dict[str, Any]:
    from pydantic import SecretStr

    from producer.api import submit
    from producer.settings import ProducerSettings

    queue = f"lcm.bench.{uuid.uuid4().hex[:8]}"
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    worker_env.update(
        env,
        LCM_MODEL_DIR=str(artifact),
        LCM_QUEUE=queue,
        LCM_METRICS_PORT="0",
        LCM_CACHE_DIR=str(work / "ov-cache"),
    )
    log = work / "fleet-worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli"],
            cwd=ROOT,
            env=worker_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 600
        while " ready." not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        settings = ProducerSettings(
            redis_url=env["LCM_REDIS_URL"],
            queue=queue,
            s3_endpoint_url=env["LCM_S3_ENDPOINT_URL"],
            s3_bucket=env["LCM_S3_BUCKET"],
            s3_access_key_id=SecretStr(env["LCM_S3_ACCESS_KEY_ID"]),
            s3_secret_access_key=SecretStr(env["LCM_S3_SECRET_ACCESS_KEY"]),
        )
        submit(PROMPTS[0], settings=settings, seed=0, steps=4).wait(600)  # warm-up
        t0 = time.perf_counter()
        handles = [
            submit(PROMPTS[i % len(PROMPTS)], settings=settings, seed=i, steps=4)
            for i in range(jobs)
        ]
        results = [h.wait(3600) for h in handles]
        seconds = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    stages = {
        stage: round(sum(r.durations_s.get(stage, 0.0) for r in results) / jobs, 4)
        for stage in ("queue_wait", "render", "encode", "upload", "store_wait", "total")
    }
    return {
        "seconds": round(seconds, 4),
        "images_per_s": round(jobs / seconds, 4),
        "mean_stage_s": stages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--artifact", type=Path, help="artifact folder (default: build the tiny INT8)"
    )
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "var" / "bench-fleet")
    parser.add_argument("--s3-port", type=int, default=18933)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    artifact = args.artifact
    if artifact is None:
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
    artifact = artifact.resolve()
    services = _services()
    env = services.start(work / "services", s3_port=args.s3_port, bucket="lcm-bench")
    try:
        bare = bare_loop(artifact, args.jobs, str(work / "ov-cache"))
        fleet = fleet_run(artifact, args.jobs, env, work)
    finally:
        services.stop(work / "services")
    manifest = json.loads((artifact / "manifest.json").read_text())
    report = {
        "benchmark": "fleet",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "artifact": str(artifact),
        "shape": manifest.get("shape"),
        "precision": manifest.get("precision"),
        "jobs": args.jobs,
        "bare": bare,
        "fleet": fleet,
        "overhead": round(1 - fleet["images_per_s"] / bare["images_per_s"], 4),
    }
    try:
        with open("/proc/cpuinfo") as f:
            report["machine"]["cpu"] = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    args.results_dir.mkdir(parents=True, exist_ok=True)
    shape = manifest.get("shape") or {}
    name = f"fleet-{shape.get('width')}x{shape.get('height')}-{datetime.now():%Y%m%d-%H%M}"
    (args.results_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
