"""One step of the benchmark, run in a process of its own so its peak RSS is its own.

``python -m bench.pipeline.child TASK SPEC_JSON RESULT_JSON``: reads the task's
parameters from SPEC_JSON, does it, and writes RESULT_JSON with the task's figures plus
``wall_s`` and ``peak_rss_gib`` (``ru_maxrss`` of this process). The orchestrator
(:mod:`bench.pipeline.run`) starts one per step. Heavy imports happen inside the tasks,
so a path's process loads only what that path needs (the OpenVINO paths import no
torch).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.pipeline.gates import TASKS as GATE_TASKS
from bench.pipeline.tome import TASKS as TOME_TASKS
from bench.pipeline.vae import TASKS as VAE_TASKS

STAGES = ("total_s", "text_encoder_s", "unet_s", "vae_s")


def peak_rss_gib() -> float:
    """ru_maxrss of this process (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)


def current_rss_gib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    return 0.0


class RssSampler:
    """Samples this process's RSS in the background, to split a step's peak by phase."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.samples: list[tuple[float, float]] = []
        self._interval = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.perf_counter(), current_rss_gib()))
            self._done.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def peak_between(self, start: float, end: float) -> float | None:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return round(max(inside), 3) if inside else None


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in STAGES}


def image_stats(pixels: Any) -> dict[str, float]:
    """Mean and spread of an image on the 0..255 scale, and its share of non-finite values."""
    import numpy as np

    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        nonfinite = 0.0
        values = arr.astype(np.float64)
    else:  # diffusers' float output in [0, 1]
        finite = np.isfinite(arr)
        nonfinite = float(1.0 - finite.mean())
        values = np.where(finite, arr, 0.0).astype(np.float64) * 255.0
    return {
        "mean": round(float(values.mean()), 3),
        "std": round(float(values.std()), 3),
        "nonfinite_fraction": round(nonfinite, 6),
    }


def cpu_snapshot() -> tuple[float, float, float]:
    """(machine busy CPU s, machine total CPU s, this process's CPU s), cumulative."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    idle = fields[3] + fields[4]
    own = os.times()
    return (total - idle) / tick, total / tick, own.user + own.system


def contention(
    before: tuple[float, float, float], after: tuple[float, float, float]
) -> dict[str, Any]:
    """How much CPU other processes took while this one rendered (0: the machine was ours)."""
    busy, total, own = (a - b for a, b in zip(after, before, strict=True))
    return {
        "own_cpu_s": round(own, 2),
        "machine_cpu_s": round(total, 2),
        "other_processes_cpu_share": round(max(busy - own, 0.0) / total, 3) if total else None,
    }


def timed_runs(render: Callable[[int], tuple[dict[str, float], Any]], runs: int) -> dict[str, Any]:
    """One warm-up render (seed 0), then ``runs`` timed renders (seeds 1..runs)."""
    warm_times, warm_pixels = render(0)
    timed, stats = [], []
    before = cpu_snapshot()
    for seed in range(1, runs + 1):
        times, pixels = render(seed)
        timed.append({k: round(v, 4) for k, v in times.items()})
        stats.append(image_stats(pixels))
    return {
        "cpu": contention(before, cpu_snapshot()),
        "warmup": {k: round(v, 4) for k, v in warm_times.items()},
        "runs": timed,
        "median": medians(timed),
        "images": stats,
        "warmup_image": image_stats(warm_pixels),
    }


# --- build steps ---------------------------------------------------------------------------


def task_build_model(spec: dict[str, Any]) -> dict[str, Any]:
    from model_build.tiny import TinySpec, build_full_size_random, build_tiny

    out = Path(spec["out"])
    t0 = time.perf_counter()
    if spec["kind"] == "tiny":
        build_tiny(out, TinySpec(image_size=spec["size"], seed=spec["seed"]))
    else:
        build_full_size_random(out, seed=spec["seed"])
    seconds = time.perf_counter() - t0
    params = {}
    for part in ("text_encoder", "unet", "vae"):
        weights = out / part / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            weights = out / part / "model.safetensors"
        params[part] = weights.stat().st_size
    return {"seconds": round(seconds, 3), "weights_bytes": params}


def task_export(spec: dict[str, Any]) -> dict[str, Any]:
    from model_build.build import export_artifact

    result = export_artifact(spec["source"], Path(spec["out"]), progress=False)
    return {"seconds": result.durations_s["export"], "manifest_sha256": result.manifest_sha256}


def task_quantize(spec: dict[str, Any]) -> dict[str, Any]:
    """The INT8 candidate exactly as ``quantize_artifact`` makes it, without the quality gate.

    ``int8_candidate`` is the step of :func:`model_build.build.quantize_artifact` that
    captures the calibration inputs and runs NNCF; the gate (80 check renders with the
    shipped evaluation set) is left out: the weights are random, so its figures mean
    nothing. The manifest is written as ``quantize_artifact`` writes it, with no quality
    record, so ``verify_artifact`` serves it as a worker would.

    ``unet_xml`` and ``tome`` (bench.pipeline.tome): quantize that token-merging UNet IR
    instead of the IR's own, and record ``tome`` in the manifest.
    """
    from lcm_fleet.artifact.manifest import read_manifest, write_manifest
    from model_build import build
    from model_build.calibration import CalibrationSpec
    from model_build.prompts import load_prompts

    ir, out = Path(spec["ir"]), Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    guidance = build.default_guidance(ir)
    calibration = CalibrationSpec(
        width=spec["size"],
        height=spec["size"],
        samples=spec["samples"],
        steps=spec["steps"],
        guidance_scale=guidance,
    )
    calibration.check()
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        candidate = build.int8_candidate(
            ir,
            out,
            calibration,
            load_prompts("calibration"),
            "calibration",
            False,
            Path(spec["unet_xml"]) if spec.get("unet_xml") else None,
        )
        t1 = time.perf_counter()
    durations = candidate.durations_s
    capture_end = t0 + durations["calibration_capture"]
    parent = read_manifest(ir)
    shape = {"width": spec["size"], "height": spec["size"], "batch": 1, "guidance_scale": guidance}
    write_manifest(
        out,
        {
            "source": parent.derived_source(),
            "precision": "int8-unet",
            **candidate.manifest_fields(),
            "quality": None,
            "bench": "benchmark artifact: random weights, quality gate not run",
            "build": {"durations_s": durations, "peak_rss_gib": peak_rss_gib()},
            "shape": shape,
            "model": build.model_info(ir),
            **({"tome": spec["tome"]} if spec.get("tome") else {}),
        },
    )
    return {
        "seconds": round(t1 - t0, 3),
        "capture_s": durations["calibration_capture"],
        "nncf_s": durations["quantize"],
        "capture_peak_rss_gib": sampler.peak_between(t0, capture_end),
        "nncf_peak_rss_gib": sampler.peak_between(capture_end, t1),
        "samples": spec["samples"],
        "fake_quantize_count": candidate.fake_quantize_count,
    }


# --- render paths --------------------------------------------------------------------------


class StageTimer:
    """Adds up the seconds spent in wrapped methods, per stage, between resets."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj: Any, method: str, stage: str) -> None:
        original = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

        setattr(obj, method, timed)

    def reset(self) -> None:
        self.seconds = {}


def task_render_diffusers(spec: dict[str, Any]) -> dict[str, Any]:
    """(a) diffusers LatentConsistencyModelPipeline in PyTorch fp32 on the CPU."""
    import torch
    from diffusers import LatentConsistencyModelPipeline

    t0 = time.perf_counter()
    pipe: Any = LatentConsistencyModelPipeline.from_pretrained(
        spec["model"], torch_dtype=torch.float32, safety_checker=None
    )
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    timer = StageTimer()
    timer.wrap(pipe.text_encoder, "forward", "text_encoder_s")
    timer.wrap(pipe.unet, "forward", "unet_s")
    timer.wrap(pipe.vae, "decode", "vae_s")

    def render(seed: int) -> tuple[dict[str, float], Any]:
        timer.reset()
        t = time.perf_counter()
        out = pipe(
            spec["prompt"],
            num_inference_steps=spec["steps"],
            guidance_scale=spec["guidance_scale"],
            width=spec["size"],
            height=spec["size"],
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        )
        total = time.perf_counter() - t
        times = {"total_s": total, **{k: timer.seconds.get(k, 0.0) for k in STAGES[1:]}}
        return times, out.images[0]

    result = timed_runs(render, spec["runs"])
    return {"load_s": round(load_s, 3), "torch_threads": torch.get_num_threads(), **result}


def task_render_genai(spec: dict[str, Any]) -> dict[str, Any]:
    """(b)-(d): the worker's own pipeline class on an artifact, as ``lcm-worker`` loads it.

    ``verify_artifact`` then ``GenaiPipeline(model, device, cache_dir, precision)`` with the
    worker's defaults except the compile cache, which is off so that load time is a cold
    compile for every path.
    """
    from worker.model.artifact import verify_artifact
    from worker.render.pipeline import GenaiPipeline

    t0 = time.perf_counter()
    model = verify_artifact(Path(spec["artifact"]), spec["size"], spec["size"])
    verify_s = time.perf_counter() - t0
    pipe = GenaiPipeline(model, "CPU", "", spec["precision"])

    def render(seed: int) -> tuple[dict[str, float], Any]:
        pixels, times = pipe.generate(spec["prompt"], seed, spec["steps"], spec["guidance_scale"])
        return {
            "total_s": times.total_s,
            "text_encoder_s": times.text_encoder_s,
            "unet_s": times.unet_s,
            "vae_s": times.vae_s,
        }, pixels

    result = timed_runs(render, spec["runs"])
    return {
        "load_s": round(pipe.compile_s, 3),
        "verify_s": round(verify_s, 3),
        "precision": spec["precision"],
        **result,
    }


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "build_model": task_build_model,
    "export": task_export,
    "quantize": task_quantize,
    "render_diffusers": task_render_diffusers,
    "render_genai": task_render_genai,
    **VAE_TASKS,
    **TOME_TASKS,
    **GATE_TASKS,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in TASKS:
        print(
            f"usage: python -m bench.pipeline.child {{{','.join(TASKS)}}} SPEC_JSON RESULT_JSON",
            file=sys.stderr,
        )
        return 2
    task, spec_path, result_path = args
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    result = TASKS[task](spec)
    result["wall_s"] = round(time.perf_counter() - t0, 3)
    result["peak_rss_gib"] = peak_rss_gib()
    for key, value in result.items():
        if isinstance(value, float) and not math.isfinite(value):
            result[key] = None
    Path(result_path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
