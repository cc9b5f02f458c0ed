"""Benchmark the whole text-to-image pipeline four ways, in one run, on one machine.

    python -m bench.pipeline.run [--work-dir var/bench] [--runs 3] [--size 512] [--steps 4]
                                 [--samples 16] [--vae-samples 8] [--skip-build] [--tiny]
                                 [--tag TAG] [--build-only]

Paths, each in a subprocess of its own (so the peak RSS reported is that path's):

(a) ``pytorch_fp32``: diffusers ``LatentConsistencyModelPipeline``, PyTorch fp32;
(b) ``ov_default``: openvino.genai on the fp32 IR at the device's default precision
    (bf16 where the CPU has bf16 support);
(c) ``ov_f32``: the same IR with ``INFERENCE_PRECISION_HINT=f32``;
(d) ``ov_int8_worker``: the INT8-UNet artifact made by model_build's INT8 step, served
    by ``worker.render.pipeline.GenaiPipeline`` as ``lcm-worker`` serves it (default precision);
(e)-(g) ``ov_int8_vae_int8w``, ``ov_int8_vae_int8``, ``ov_int8_vae_taesd``: the same INT8
    artifact with its VAE decoder made by ``--vae-decoder int8-weights|int8|taesd``
    (:mod:`bench.pipeline.vae`; TAESD with random weights), served the same way;
(h) ``ov_int8_tome``: the INT8 step on the UNet exported with token merging
    (:mod:`bench.pipeline.tome`, ratio 0.5), served the same way;
(i) ``ov_int8_tome_taesd``: every option the gate admits together: that token-merging
    artifact with the TAESD decoder of (g).

Each path made by build options records ``gate_passed``: the quality gate's verdict on the
reference model built with the same options (:mod:`bench.pipeline.gates`; ``--gates``
chooses which are run); None for PyTorch and the fp32 IR, which are no build option.

Each path renders one warm-up image and then ``--runs`` timed ones (same prompt, seeds
1..runs); the table shows medians. The model is the full-size LCM_Dreamshaper_v7
architecture with random weights, built offline (``model_build.tiny.build_full_size_random``;
``--tiny`` uses the tiny model instead, for a smoke run). The model, its fp32 IR and the
INT8 artifact are cached in the work dir with the figures of the steps that made them, so
a rerun only renders; ``--skip-build`` refuses to build anything that is missing.

Results: ``bench/results/pipeline-<date>.json`` and ``.md`` (``-tiny`` for ``--tiny``,
``-TAG`` for ``--tag TAG``).
No assertions on the figures: this measures, it does not judge.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.pipeline import gates, machine, tome, vae
from bench.pipeline.report import markdown

ROOT = Path(__file__).resolve().parents[2]
FULL_DESCRIPTION = (
    "Full-size LCM_Dreamshaper_v7 architecture with random weights (SD1.5 UNet with "
    "time_cond_proj_dim=256, CLIP ViT-L/14 text encoder, SD KL VAE)"
)
TINY_DESCRIPTION = "Tiny LCM (model_build.tiny.build_tiny, random weights; smoke mode)"
#: LCM_Dreamshaper_v7's default guidance (a UNet input: no CFG, batch 1).
GUIDANCE_SCALE = 8.0


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Options:
    work_dir: Path
    results_dir: Path
    runs: int
    size: int
    steps: int
    samples: int
    seed: int
    skip_build: bool
    tiny: bool
    vae_samples: int = 8
    tag: str = ""
    build_only: bool = False
    gates: tuple[str, ...] = tuple(gates.GATED)


class Runner:
    """Runs child steps with logs in ``work_dir/logs`` and prints one line per step."""

    def __init__(self, work_dir: Path) -> None:
        self.logs = work_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {text}", flush=True)

    def child(self, label: str, task: str, spec: dict[str, Any]) -> dict[str, Any]:
        spec_path = self.logs / f"{label}.spec.json"
        result_path = self.logs / f"{label}.result.json"
        log_path = self.logs / f"{label}.log"
        spec_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        result_path.unlink(missing_ok=True)
        self.say(f"{label}: started (log {log_path})")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        with open(log_path, "wb") as log:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.pipeline.child",
                    task,
                    str(spec_path),
                    str(result_path),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode != 0 or not result_path.is_file():
            tail = log_path.read_text(errors="replace")[-4000:]
            raise BenchError(f"{label} failed (exit {proc.returncode}); end of {log_path}:\n{tail}")
        result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        summary = (
            f"{label}: done in {result['wall_s']:.1f} s, peak RSS {result['peak_rss_gib']:.2f} GiB"
        )
        if "median" in result:
            summary += f", median total {result['median']['total_s']:.3f} s"
        self.say(summary)
        return result

    def cached(
        self, label: str, task: str, out: Path, spec: dict[str, Any], skip_build: bool
    ) -> dict[str, Any]:
        """Build ``out`` with a child step unless an earlier run left it (with its record)."""
        record = out.with_name(out.name + ".bench.json")
        if out.is_dir() and record.is_file():
            figures: dict[str, Any] = json.loads(record.read_text(encoding="utf-8"))
            self.say(f"{label}: cached ({out})")
            return {**figures, "cached": True}
        if skip_build:
            raise BenchError(
                f"--skip-build, but {out} (or its record {record.name}) is missing: "
                "run once without --skip-build to build it"
            )
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        figures = self.child(label, task, {**spec, "out": str(partial)})
        partial.rename(out)
        record.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        return {**figures, "cached": False}


def model_and_ir(
    runner: Runner, models: Path, size: int, seed: int, tiny: bool, skip_build: bool
) -> tuple[str, Path, Path, dict[str, Any]]:
    """The random model and its fp32 IR (cached): (name, model dir, IR dir, build figures)."""
    models.mkdir(parents=True, exist_ok=True)
    if tiny:
        name = f"tiny-{size}px-seed{seed}"
        kind = "tiny"
    else:
        name = f"lcm-dreamshaper-v7-random-seed{seed}"
        kind = "full"
    model_dir = models / name
    ir_dir = models / f"{name}.ir"
    figures = {
        "model": runner.cached(
            "build-model",
            "build_model",
            model_dir,
            {"kind": kind, "size": size, "seed": seed},
            skip_build,
        ),
        "export": runner.cached("export", "export", ir_dir, {"source": str(model_dir)}, skip_build),
    }
    return name, model_dir, ir_dir, figures


def build_all(opts: Options, runner: Runner) -> tuple[dict[str, Path], dict[str, Any]]:
    models = opts.work_dir / "models"
    name, model_dir, ir_dir, figures = model_and_ir(
        runner, models, opts.size, opts.seed, opts.tiny, opts.skip_build
    )
    int8_dir = models / f"{name}.int8-{opts.size}px-{opts.steps}steps-{opts.samples}samples"
    figures = {
        **figures,
        "quantize": runner.cached(
            "quantize-int8",
            "quantize",
            int8_dir,
            {"ir": str(ir_dir), "size": opts.size, "steps": opts.steps, "samples": opts.samples},
            opts.skip_build,
        ),
    }
    dirs = {"model": model_dir, "ir": ir_dir, "int8": int8_dir}
    variants, vae_figures = vae.build_variants(
        runner,
        models,
        name,
        dirs,
        size=opts.size,
        steps=opts.steps,
        guidance_scale=GUIDANCE_SCALE,
        vae_samples=opts.vae_samples,
        seed=opts.seed,
        tiny=opts.tiny,
        skip_build=opts.skip_build,
    )
    merged, tome_figures = tome.build_variant(
        runner,
        models,
        name,
        dirs,
        size=opts.size,
        steps=opts.steps,
        samples=opts.samples,
        skip_build=opts.skip_build,
        taesd=variants["taesd_weights"],
    )
    reference_gates = gates.build_gates(runner, models, opts.gates, opts.skip_build)
    return (
        {**dirs, **variants, **merged},
        {**figures, **vae_figures, **tome_figures, "reference_gates": reference_gates},
    )


def path_specs(
    dirs: dict[str, Path], common: dict[str, Any]
) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(key, label, task, spec) of the paths, in the order they run."""
    return [
        (
            "pytorch_fp32",
            "PyTorch fp32 (diffusers)",
            "render_diffusers",
            {**common, "model": str(dirs["model"])},
        ),
        (
            "ov_default",
            "OpenVINO default precision (fp32 IR)",
            "render_genai",
            {**common, "artifact": str(dirs["ir"]), "precision": "default"},
        ),
        (
            "ov_f32",
            "OpenVINO f32 (fp32 IR)",
            "render_genai",
            {**common, "artifact": str(dirs["ir"]), "precision": "f32"},
        ),
        (
            "ov_int8_worker",
            "INT8 UNet, worker path (default precision)",
            "render_genai",
            {**common, "artifact": str(dirs["int8"]), "precision": "default"},
        ),
        *[
            (
                key,
                label,
                "render_genai",
                {**common, "artifact": str(dirs[key]), "precision": "default"},
            )
            for _kind, key, label in vae.VAE_PATHS
            if key in dirs
        ],
        *[
            (
                key,
                label,
                "render_genai",
                {**common, "artifact": str(dirs[key]), "precision": "default"},
            )
            for key, label in (
                (tome.PATH_KEY, tome.PATH_LABEL),
                (tome.COMBINED_KEY, tome.COMBINED_LABEL),
            )
            if key in dirs
        ],
    ]


def _ratio(base: float | None, value: float | None) -> float | None:
    if not base or not value:
        return None
    return round(base / value, 3)


def images_per_core_hour(render_s: float | None, cores: int | None) -> float | None:
    """Images one render process makes per hour per core it runs on, rendering back to back
    (one render at a time on every usable core, as the benchmark times it)."""
    if not render_s or not cores:
        return None
    return round(3600.0 / (render_s * cores), 1)


def notes_for(paths: dict[str, Any]) -> list[str]:
    notes = []
    for path in paths.values():
        images = [path["warmup_image"], *path["images"]]
        bad = max(img["nonfinite_fraction"] for img in images)
        flat = min(img["std"] for img in images)
        share = (path.get("cpu") or {}).get("other_processes_cpu_share")
        if share is not None and share > 0.05:
            notes.append(
                f"{path['label']}: other processes used {share:.0%} of the machine's CPU "
                "during its timed renders; its times are inflated by that contention."
            )
        if bad > 0:
            notes.append(f"{path['label']}: {bad:.1%} of the output values are NaN/inf.")
        if flat < 1.0:
            notes.append(
                f"{path['label']}: flat output (pixel std {flat:.2f}); NaN/inf in the "
                "latents would give this."
            )
    return notes


def run(opts: Options, command: str) -> dict[str, Any]:
    from model_build.prompts import load_prompts

    started = dt.datetime.now()
    runner = Runner(opts.work_dir)
    runner.say(f"work dir {opts.work_dir}; results in {opts.results_dir}")
    dirs, build = build_all(opts, runner)
    common = {
        "size": opts.size,
        "steps": opts.steps,
        "runs": opts.runs,
        "guidance_scale": GUIDANCE_SCALE,
        "prompt": load_prompts("eval")[0],
    }
    paths: dict[str, Any] = {}
    for key, label, task, spec in path_specs(dirs, common):
        paths[key] = {"label": label, **runner.child(f"path-{key}", task, spec)}
    gates.verdicts(paths, build["reference_gates"])
    base = paths["pytorch_fp32"]["median"]
    cores = machine.describe()["usable_cores"]
    for path in paths.values():
        path["speedup_total"] = _ratio(base["total_s"], path["median"]["total_s"])
        path["speedup_unet"] = _ratio(base["unet_s"], path["median"]["unet_s"])
        path["images_per_core_hour"] = images_per_core_hour(path["median"]["total_s"], cores)
    result = {
        "benchmark": "pipeline",
        "date": started.date().isoformat(),
        "started": started.isoformat(timespec="seconds"),
        "command": command,
        "wall_s": round(time.perf_counter() - runner.t0, 1),
        "config": {
            "model": "tiny" if opts.tiny else "full-size-random",
            "model_description": TINY_DESCRIPTION if opts.tiny else FULL_DESCRIPTION,
            "seed": opts.seed,
            "samples": opts.samples,
            "vae_samples": opts.vae_samples,
            **common,
        },
        "machine": machine.describe(),
        "build": build,
        "paths": paths,
        "notes": notes_for(paths),
    }
    return result


def write_results(
    result: dict[str, Any], results_dir: Path, tiny: bool, tag: str = ""
) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"pipeline-{result['date']}" + ("-tiny" if tiny else "") + (f"-{tag}" if tag else "")
    json_path, md_path = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(result), encoding="utf-8")
    return json_path, md_path


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline.run",
        description="PyTorch fp32 vs OpenVINO default / f32 vs the INT8 worker path, one run.",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("var/bench"),
        help="models, IR, INT8 artifact and logs (kept for reruns)",
    )
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--runs", type=int, default=3, help="timed renders per path (>= 3)")
    p.add_argument("--size", type=int, default=512, help="width = height (multiple of 8)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument(
        "--samples",
        type=int,
        default=16,
        help="NNCF calibration samples (UNet calls); 16 keeps NNCF's time and "
        "memory bounded at full size",
    )
    p.add_argument("--seed", type=int, default=0, help="weight seed of the random model")
    p.add_argument(
        "--vae-samples",
        type=int,
        default=8,
        help="final latents (calibration prompts) the INT8 VAE decoder calibrates on",
    )
    p.add_argument("--tag", default="", help="suffix of the results' file names")
    p.add_argument(
        "--skip-build",
        action="store_true",
        help="use the cached model, IR and INT8 artifact; fail if one is missing",
    )
    p.add_argument(
        "--build-only",
        action="store_true",
        help="build (or find cached) the model, IR and artifacts, then stop: the timed "
        "paths can then run later on a quiet machine with --skip-build",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="smoke mode: the tiny model of model_build.tiny.build_tiny",
    )
    p.add_argument(
        "--gates",
        default="all",
        help="the paths whose build options are gated on the reference model (one "
        "lcm-build build each, cached): all (default), none, or path keys separated by "
        f"commas ({', '.join(gates.GATED)})",
    )
    a = p.parse_args(argv)
    try:
        gate_keys = gates.parse_keys(a.gates)
    except ValueError as e:
        p.error(str(e))
    if a.runs < 3:
        p.error("--runs must be at least 3 (the table shows medians)")
    if a.size % 8 or a.size < 64:
        p.error("--size must be a multiple of 8 and at least 64")
    if not 1 <= a.steps <= 8:
        p.error("--steps must be from 1 to 8")
    if a.samples < 1:
        p.error("--samples must be at least 1")
    if a.vae_samples < 1:
        p.error("--vae-samples must be at least 1")
    if a.build_only and a.skip_build:
        p.error("--build-only and --skip-build exclude each other")
    if a.tag and not all(ch.isalnum() or ch in "-_" for ch in a.tag):
        p.error("--tag may only hold letters, digits, - and _")
    return Options(
        work_dir=a.work_dir.resolve(),
        results_dir=a.results_dir.resolve(),
        runs=a.runs,
        size=a.size,
        steps=a.steps,
        samples=a.samples,
        seed=a.seed,
        skip_build=a.skip_build,
        tiny=a.tiny,
        vae_samples=a.vae_samples,
        tag=a.tag,
        build_only=a.build_only,
        gates=gate_keys,
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    opts = parse_args(args)
    command = shlex.join(["python", "-m", "bench.pipeline.run", *args])
    try:
        if opts.build_only:
            runner = Runner(opts.work_dir)
            dirs, _ = build_all(opts, runner)
            runner.say("built: " + ", ".join(f"{k} {v}" for k, v in dirs.items()))
            return 0
        result = run(opts, command)
    except BenchError as e:
        print(f"bench.pipeline: {e}", file=sys.stderr)
        return 1
    json_path, md_path = write_results(result, opts.results_dir, opts.tiny, opts.tag)
    print()
    print(markdown(result))
    print(f"written: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
