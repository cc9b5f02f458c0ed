"""bench/coldstart: worker start to first image, with and without the compile cache, in one run.

Each sample is a new process that verifies the artifact, builds the worker's pipeline
(worker.pipeline.GenaiPipeline) and renders one image. "cold" gives every sample an empty
cache directory; "warm" reuses one directory that a first, unmeasured process filled.
Reported: medians of --runs samples of ready (pipeline compiled) and first image, seconds
after the process was started, and the cache's size on disk.

    python -m bench.coldstart.run --artifact var/bench/int8 [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys, time
t_import = time.perf_counter()
from worker.artifact import verify_artifact
from worker.pipeline import GenaiPipeline
model = verify_artifact(sys.argv[1])
pipe = GenaiPipeline(model, "CPU", sys.argv[2], "default")
ready = time.perf_counter()
pipe.generate("a lighthouse at dusk", 0, 4, model.guidance_scale)
print(json.dumps({"ready_after_import_s": ready - t_import,
                  "image_after_import_s": time.perf_counter() - t_import,
                  "compile_s": pipe.compile_s}))
"""


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


def summarize(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(s[k] for s in samples), 3) for k in samples[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.coldstart.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    artifact = args.artifact.resolve()
    with tempfile.TemporaryDirectory(prefix="lcm-coldstart-") as tmp:
        cold = []
        for i in range(args.runs):
            cache = Path(tmp) / f"cold{i}"
            cold.append(sample(artifact, cache))
            shutil.rmtree(cache, ignore_errors=True)
        warm_dir = Path(tmp) / "warm"
        sample(artifact, warm_dir)  # fills the cache, not measured
        warm = [sample(artifact, warm_dir) for _ in range(args.runs)]
        cache_bytes = sum(f.stat().st_size for f in warm_dir.rglob("*") if f.is_file())
    manifest = json.loads((artifact / "manifest.json").read_text())
    report = {
        "benchmark": "coldstart",
        "date": datetime.now().isoformat(timespec="seconds"),
        "artifact": str(artifact),
        "shape": manifest.get("shape"),
        "precision": manifest.get("precision"),
        "runs": args.runs,
        "no_cache": summarize(cold),
        "warm_cache": summarize(warm),
        "cache_gib": round(cache_bytes / 1024**3, 3),
        "samples": {"no_cache": cold, "warm_cache": warm},
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    shape = manifest.get("shape") or {}
    name = f"coldstart-{shape.get('width')}x{shape.get('height')}-{datetime.now():%Y%m%d-%H%M}"
    (args.results_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
