"""The VAE decoder options (issue #4) in the pipeline benchmark, and the INT8 recipe comparison.

Two uses:

1. :mod:`bench.pipeline.run` builds, next to the INT8-UNet artifact, one artifact per VAE
   decoder option: a copy of it whose ``vae_decoder/`` is made by
   :func:`model_build.vae_decoder.make_vae_decoder` (``int8-weights``; ``int8`` calibrated on
   final latents captured from the fp32 IR rendering calibration prompts; ``taesd`` from a
   randomly initialised full-size TAESD, diffusers' default ``AutoencoderTiny``), and times
   each through the worker's pipeline like the INT8 path.

2. ``python -m bench.pipeline.vae`` compares the decoder alone under several NNCF recipes
   (speed at the default precision, and PSNR/SSIM against the fp32 decoder on latents of
   the evaluation prompts, f32 inference) to choose ``--vae-decoder int8``'s recipe::

       python -m bench.pipeline.vae [--tiny] [--work-dir var/bench] [--size 512]
                                    [--calibration 8] [--eval 4] [--runs 3] [--skip-build]

   On random weights the quality figures say how much a recipe perturbs this decoder's
   outputs, not how real images look.

Tasks run in :mod:`bench.pipeline.child` processes; heavy imports stay inside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

#: (kind, path key, label) of the VAE paths of the pipeline benchmark, in the order they run.
VAE_PATHS = (
    ("int8-weights", "ov_int8_vae_int8w", "INT8 UNet + INT8-weights VAE decoder, worker path"),
    ("int8", "ov_int8_vae_int8", "INT8 UNet + INT8 VAE decoder, worker path"),
    ("taesd", "ov_int8_vae_taesd", "INT8 UNet + TAESD decoder (random), worker path"),
)
#: Recipes the comparison tries for ``--vae-decoder int8`` (model_type None: NNCF's default,
#: every convolution and eltwise input quantized; TRANSFORMER: matmul/conv inputs only).
#: The last one is ``model_build.vae_decoder.INT8_RECIPE``.
RECIPES: dict[str, dict[str, Any]] = {
    "int8 default/performance": {
        "model_type": None,
        "preset": "PERFORMANCE",
        "disable_bias_correction": True,
    },
    "int8 default/mixed": {"model_type": None, "preset": "MIXED", "disable_bias_correction": True},
    "int8 transformer/mixed": {
        "model_type": "TRANSFORMER",
        "preset": "MIXED",
        "disable_bias_correction": True,
    },
    # NNCF's default activation ranges clip outliers; MINMAX keeps the whole range.
    "int8 default/performance/minmax": {
        "model_type": None,
        "preset": "PERFORMANCE",
        "activations_range_estimator": "MINMAX",
        "disable_bias_correction": True,
    },
    "int8 transformer/mixed/minmax": {
        "model_type": "TRANSFORMER",
        "preset": "MIXED",
        "activations_range_estimator": "MINMAX",
        "disable_bias_correction": True,
    },
}


# --- child tasks ----------------------------------------------------------------------------


def task_vae_latents(spec: dict[str, Any]) -> dict[str, Any]:
    """Final denoised latents of ``count`` prompts rendered by the fp32 IR (f32), saved as .npy.

    The same capture as ``lcm-build``'s calibration (model_build.calibration.capture_inputs),
    without the UNet's inputs.
    """
    import hashlib

    import numpy as np

    from model_build.calibration import CalibrationSpec, capture_inputs
    from model_build.prompts import load_prompts

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(spec["prompts"])
    calibration = CalibrationSpec(
        width=spec["size"],
        height=spec["size"],
        steps=spec["steps"],
        guidance_scale=spec["guidance_scale"],
        vae_samples=spec["count"],
        seed=spec.get("seed", 0),
    )
    t0 = time.perf_counter()
    latents = capture_inputs(Path(spec["ir"]), prompts, calibration, False, unet=False).latents
    seconds = time.perf_counter() - t0
    np.save(out / "latents.npy", np.stack(latents))
    return {
        "seconds": round(seconds, 3),
        "count": len(latents),
        "prompts": spec["prompts"],
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "shape": list(latents[0].shape),
    }


def load_latents(folder: str | Path) -> list[Any]:
    import numpy as np

    return list(np.load(Path(folder) / "latents.npy"))


def task_build_taesd(spec: dict[str, Any]) -> dict[str, Any]:
    from model_build.tiny import build_taesd_random, build_tiny_taesd

    out = Path(spec["out"])
    t0 = time.perf_counter()
    if spec["kind"] == "tiny":
        build_tiny_taesd(out, seed=spec["seed"])
    else:
        build_taesd_random(out, seed=spec["seed"])
    weights = out / "diffusion_pytorch_model.safetensors"
    return {"seconds": round(time.perf_counter() - t0, 3), "weights_bytes": weights.stat().st_size}


def task_vae_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """The INT8-UNet artifact with its VAE decoder made by ``--vae-decoder KIND``'s stage.

    Everything but ``vae_decoder/`` is copied from the INT8 artifact; the decoder is made
    from the fp32 IR's (or the TAESD weights) by model_build.vae_decoder, and the manifest
    is written as model_build writes it, without a quality record (random weights: the
    gate's figures would mean nothing), so ``verify_artifact`` serves it as a worker would.
    """
    from lcm_fleet.artifact.manifest import MANIFEST_NAME, read_manifest, write_manifest
    from model_build.vae_decoder import (
        PART,
        VaeDecoderOptions,
        make_vae_decoder,
        precision_label,
    )

    int8, ir, out = Path(spec["int8"]), Path(spec["ir"]), Path(spec["out"])
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(
        int8, out, ignore=lambda d, names: [n for n in names if n in (PART, MANIFEST_NAME)]
    )
    options = VaeDecoderOptions(kind=spec["kind"], taesd=spec.get("taesd"))
    latents = load_latents(spec["latents"]) if spec.get("latents") else None
    calibration = spec.get("calibration")
    t0 = time.perf_counter()
    made = make_vae_decoder(ir, out, options, latents, calibration)
    seconds = time.perf_counter() - t0
    parent = read_manifest(int8)
    data = parent.info().as_dict()
    if parent.quantization is not None and parent.quantization.unchanged_parts is not None:
        data["quantization"]["unchanged_parts"] = [
            p for p in parent.quantization.unchanged_parts if p != "vae_decoder"
        ]
    write_manifest(
        out,
        {
            **data,
            "source": parent.derived_source("int8_manifest_sha256"),
            "precision": precision_label(str(parent.precision), options.kind),
            "vae_decoder": made.record,
            "quality": None,
            "bench": "benchmark artifact: random weights, quality gate not run",
        },
    )
    record = made.record
    return {
        "seconds": round(seconds, 3),
        "kind": options.kind,
        "fake_quantize_count": record.get("fake_quantize_count"),
        "weights_bytes": record.get("weights_bytes"),
        "samples": record.get("samples"),
    }


def _decode_images(compiled: Any, inputs: list[Any]) -> list[Any]:
    """Decoder outputs as genai post-processes them: clamp(x / 2 + 0.5, 0, 1) * 255, u8 HWC."""
    import numpy as np

    images = []
    for x in inputs:
        out = np.asarray(compiled([x])[0])[0]
        images.append((np.clip(out / 2 + 0.5, 0, 1) * 255).transpose(1, 2, 0).astype(np.uint8))
    return images


def task_vae_recipes(spec: dict[str, Any]) -> dict[str, Any]:
    """The decoder alone under each option/recipe: time at the default precision, and quality
    against the fp32 SD decoder (f32 inference) on the evaluation latents."""
    import numpy as np
    import openvino as ov

    from bench.pipeline.child import contention, cpu_snapshot
    from model_build.compare import score
    from model_build.vae_decoder import (
        PART,
        XML,
        VaeDecoderOptions,
        compress_weights,
        decoder_inputs,
        make_vae_decoder,
        quantize,
        read_config,
    )

    ir = Path(spec["ir"])
    work = Path(spec["out"])
    work.mkdir(parents=True, exist_ok=True)
    config = read_config(ir / PART)
    calib = [decoder_inputs(x, config) for x in load_latents(spec["calibration"])]
    evals = [decoder_inputs(x, config) for x in load_latents(spec["eval"])]
    core = ov.Core()

    def compiled(part: Path, hint: dict[str, Any]) -> Any:
        model = core.read_model(str(part / XML))
        model.reshape({0: list(evals[0].shape)})
        return core.compile_model(model, "CPU", hint)

    reference = _decode_images(compiled(ir / PART, {"INFERENCE_PRECISION_HINT": "f32"}), evals)
    rows: dict[str, Any] = {}
    fast: dict[str, Any] = {}
    candidates: list[tuple[str, dict[str, Any] | None]] = [
        ("sd (fp32 IR)", None),
        ("int8-weights", None),
        *[(name, recipe) for name, recipe in RECIPES.items()],
    ]
    if spec.get("taesd"):
        candidates.append(("taesd (random weights)", None))
    for name, recipe in candidates:
        slug = "".join(ch if ch.isalnum() else "-" for ch in name)
        part = work / slug / PART
        t0 = time.perf_counter()
        details: dict[str, Any] = {}
        made_before = work / slug / "details.json"
        if name.startswith("sd"):
            part = ir / PART
        elif spec.get("reuse") and made_before.is_file():
            details = json.loads(made_before.read_text(encoding="utf-8"))
        elif name == "int8-weights":
            details = compress_weights(ir / PART, part)
        elif recipe is not None:
            details = quantize(ir / PART, calib, part, recipe)
        else:
            made = make_vae_decoder(
                ir, part.parent, VaeDecoderOptions(kind="taesd", taesd=spec["taesd"])
            )
            details = {"conversion_max_abs_diff": made.record["conversion_max_abs_diff"]}
        make_s = details.get("make_s", time.perf_counter() - t0)
        if not name.startswith("sd"):
            made_before.write_text(json.dumps({**details, "make_s": make_s}), encoding="utf-8")
        images = _decode_images(compiled(part, {"INFERENCE_PRECISION_HINT": "f32"}), evals)
        pairs = enumerate(zip(reference, images, strict=True))
        scores = [score(r, c, "eval latent", i) for i, (r, c) in pairs]
        fast[name] = compiled(part, {})
        finite = [s.psnr_db for s in scores if np.isfinite(s.psnr_db)]
        rows[name] = {
            "recipe": recipe,
            "make_s": round(make_s, 3),
            "psnr_db_mean": round(float(np.mean(finite)), 3) if finite else None,
            "psnr_db_min": round(float(np.min(finite)), 3) if finite else None,
            "ssim_mean": round(float(np.mean([s.ssim for s in scores])), 5),
            "mean_abs_diff_mean": round(float(np.mean([s.mean_abs_diff for s in scores])), 4),
            "fake_quantize_count": details.get("fake_quantize_count"),
            "weights_bytes": details.get("weights_bytes"),
        }
        print(name, rows[name], flush=True)
    # Timing, interleaved: one decode of every decoder per round, so that other processes'
    # load falls on all of them alike; own CPU seconds per decode too (less sensitive to it).
    times: dict[str, list[float]] = {name: [] for name in fast}
    own: dict[str, list[float]] = {name: [] for name in fast}
    for compiled_model in fast.values():
        compiled_model([evals[0]])  # warm-up
    before = cpu_snapshot()
    for i in range(spec["runs"]):
        for name, compiled_model in fast.items():
            t, c = time.perf_counter(), cpu_snapshot()[2]
            compiled_model([evals[i % len(evals)]])
            times[name].append(time.perf_counter() - t)
            own[name].append(cpu_snapshot()[2] - c)
    cpu = contention(before, cpu_snapshot())
    for name, row in rows.items():
        row["decode_s"] = round(statistics.median(times[name]), 4)
        row["decode_runs_s"] = [round(t, 4) for t in times[name]]
        row["decode_own_cpu_s"] = round(statistics.median(own[name]), 3)
    base = rows["sd (fp32 IR)"]["decode_s"]
    for row in rows.values():
        row["speedup_vs_sd"] = round(base / row["decode_s"], 3) if row["decode_s"] else None
    return {
        "rows": rows,
        "cpu": cpu,
        "calibration_latents": len(calib),
        "eval_latents": len(evals),
    }


TASKS = {
    "vae_latents": task_vae_latents,
    "build_taesd": task_build_taesd,
    "vae_variant": task_vae_variant,
    "vae_recipes": task_vae_recipes,
}


# --- orchestration (used by bench.pipeline.run, and the recipe comparison below) -------------


def build_variants(
    runner: Any,
    models: Path,
    name: str,
    dirs: dict[str, Path],
    *,
    size: int,
    steps: int,
    guidance_scale: float,
    vae_samples: int,
    seed: int,
    tiny: bool,
    skip_build: bool,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Calibration latents, the random TAESD and one artifact per VAE option (cached)."""
    latents = models / f"{name}.vae-latents-calibration-{size}px-{steps}steps-{vae_samples}"
    taesd = models / (f"taesd-tiny-seed{seed}" if tiny else f"taesd-random-seed{seed}")
    figures: dict[str, Any] = {
        "vae_latents": runner.cached(
            "vae-latents-calibration",
            "vae_latents",
            latents,
            {
                "ir": str(dirs["ir"]),
                "size": size,
                "steps": steps,
                "guidance_scale": guidance_scale,
                "prompts": "calibration",
                "count": vae_samples,
            },
            skip_build,
        ),
        "taesd": runner.cached(
            "build-taesd",
            "build_taesd",
            taesd,
            {"kind": "tiny" if tiny else "full", "seed": seed},
            skip_build,
        ),
    }
    from model_build.vae_decoder import INT8_RECIPE

    # The INT8 decoder's folder names its recipe: a changed recipe is built anew.
    recipe = "-".join(
        str(INT8_RECIPE.get(k) or "default")
        for k in ("model_type", "preset", "activations_range_estimator")
    ).lower()
    out: dict[str, Path] = {}
    for kind, key, _label in VAE_PATHS:
        suffix = f"vae-{kind}" + (f"-{recipe}-{vae_samples}latents" if kind == "int8" else "")
        target = models / f"{dirs['int8'].name}.{suffix}"
        spec: dict[str, Any] = {"int8": str(dirs["int8"]), "ir": str(dirs["ir"]), "kind": kind}
        if kind == "int8":
            spec["latents"] = str(latents)
            spec["calibration"] = {
                "prompts": "calibration",
                "prompts_used": vae_samples,
                "width": size,
                "height": size,
                "steps": steps,
                "guidance_scale": guidance_scale,
                "captured_with": "a capture pass of its own (benchmark)",
            }
        if kind == "taesd":
            spec["taesd"] = str(taesd)
        figures[key] = runner.cached(f"build-{key}", "vae_variant", target, spec, skip_build)
        out[key] = target
    out["taesd_weights"] = taesd
    return out, figures


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"# VAE decoder recipes {result['date']}",
        "",
        f"{cfg['model_description']}: the VAE decoder alone at {cfg['size']}x{cfg['size']} "
        f"(latents {cfg['size'] // 8}x{cfg['size'] // 8}). Quality: against the fp32 decoder, "
        f"f32 inference, on the final latents of {result['eval_latents']} evaluation prompts; "
        f"INT8 calibrated on {result['calibration_latents']} calibration prompts' latents. "
        f"Speed: median of {cfg['runs']} decodes at the default precision after a warm-up. "
        f"One run: `{result['command']}`.",
        "",
        "| decoder | decode s | vs SD decoder | own CPU s | PSNR dB (min) | SSIM | "
        "mean abs diff | FakeQuantize | make s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        psnr = "-" if row["psnr_db_mean"] is None else f"{row['psnr_db_mean']:.2f}"
        if row["psnr_db_min"] is not None:
            psnr += f" ({row['psnr_db_min']:.2f})"
        lines.append(
            f"| {name} | {row['decode_s']:.3f} | {row['speedup_vs_sd']:.2f}x | "
            f"{row.get('decode_own_cpu_s', '-')} | {psnr} | "
            f"{row['ssim_mean']:.4f} | {row['mean_abs_diff_mean']:.2f} | "
            f"{row['fake_quantize_count'] or '-'} | {row['make_s']:.1f} |"
        )
    share = (result.get("cpu") or {}).get("other_processes_cpu_share")
    lines += [
        "",
        "Decoders timed interleaved (one decode of each per round), so other processes' load "
        "falls on all alike; own CPU s is this process's CPU time per decode (median). "
        + (
            f"Other processes used {share:.0%} of the machine's CPU during the timing."
            if share is not None
            else ""
        ),
    ]
    if cfg["model"] in ("tiny", "full-size-random"):
        lines += [
            "",
            "Random weights: the quality columns say how far each decoder's output moves from "
            "the fp32 SD decoder's on these latents; they do not grade real images (a random "
            "TAESD is expected to be far off). The speed columns stand for the real model.",
        ]
    else:
        lines += [
            "",
            "Trained decoder: the quality columns grade each option against it; the TAESD row "
            "has random weights (no TAESD is trained for this model) and only shows speed.",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.pipeline import machine
    from bench.pipeline.run import (
        FULL_DESCRIPTION,
        GUIDANCE_SCALE,
        ROOT,
        TINY_DESCRIPTION,
        BenchError,
        Runner,
        model_and_ir,
    )

    args_list = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.pipeline.vae", description=__doc__)
    p.add_argument("--work-dir", type=Path, default=Path("var/bench"))
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--calibration", type=int, default=8, help="calibration latents (prompts)")
    p.add_argument("--eval", type=int, default=4, help="evaluation latents (prompts)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--skip-build", action="store_true")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the decoders an earlier run made (re-measure only; make_s is that run's)",
    )
    p.add_argument(
        "--ir",
        type=Path,
        help="compare the decoder of this exported IR (e.g. a trained model) instead of the "
        "random model's; --size must be its size",
    )
    p.add_argument("--calibration-prompts", default="calibration", help="shipped set or file")
    p.add_argument("--eval-prompts", default="eval", help="shipped set or file")
    p.add_argument("--tag", default="", help="suffix of the result files")
    a = p.parse_args(args_list)
    if a.runs < 3 or a.calibration < 1 or a.eval < 1:
        p.error("--runs must be at least 3, --calibration and --eval at least 1")
    work = a.work_dir.resolve()
    runner = Runner(work)
    started = dt.datetime.now()
    try:
        build: dict[str, Any] = {}
        if a.ir:
            ir_dir, name = a.ir.resolve(), a.ir.resolve().name
            description = f"The decoder of {ir_dir}"
        else:
            name, _model_dir, ir_dir, build = model_and_ir(
                runner, work / "models", a.size, a.seed, a.tiny, a.skip_build
            )
            description = TINY_DESCRIPTION if a.tiny else FULL_DESCRIPTION
        latents = {}
        sets = {"calibration": a.calibration_prompts, "eval": a.eval_prompts}
        for role, count in (("calibration", a.calibration), ("eval", a.eval)):
            prompts = sets[role]
            label = Path(prompts).stem if Path(prompts).is_file() else prompts
            folder = (
                work / "models" / f"{name}.vae-latents-{label}-{a.size}px-{a.steps}steps-{count}"
            )
            build[f"vae_latents_{role}"] = runner.cached(
                f"vae-latents-{label}",
                "vae_latents",
                folder,
                {
                    "ir": str(ir_dir),
                    "size": a.size,
                    "steps": a.steps,
                    "guidance_scale": GUIDANCE_SCALE,
                    "prompts": str(Path(prompts).resolve()) if Path(prompts).is_file() else prompts,
                    "count": count,
                },
                a.skip_build,
            )
            latents[role] = folder
        taesd = (
            work
            / "models"
            / (f"taesd-tiny-seed{a.seed}" if a.tiny else f"taesd-random-seed{a.seed}")
        )
        build["taesd"] = runner.cached(
            "build-taesd",
            "build_taesd",
            taesd,
            {"kind": "tiny" if a.tiny else "full", "seed": a.seed},
            a.skip_build,
        )
        scratch = work / ("vae-recipes" + (f"-{a.tag}" if a.tag else ""))
        if not a.reuse:
            shutil.rmtree(scratch, ignore_errors=True)
        figures = runner.child(
            "vae-recipes",
            "vae_recipes",
            {
                "ir": str(ir_dir),
                "calibration": str(latents["calibration"]),
                "eval": str(latents["eval"]),
                "taesd": str(taesd),
                "runs": a.runs,
                "out": str(scratch),
                "reuse": a.reuse,
            },
        )
    except BenchError as e:
        print(f"bench.pipeline.vae: {e}", file=sys.stderr)
        return 1
    result = {
        "benchmark": "vae-recipes",
        "date": started.date().isoformat(),
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "bench.pipeline.vae", *args_list]),
        "config": {
            "model": str(a.ir) if a.ir else ("tiny" if a.tiny else "full-size-random"),
            "model_description": description,
            "size": a.size,
            "steps": a.steps,
            "runs": a.runs,
            "guidance_scale": GUIDANCE_SCALE,
            "recipes": RECIPES,
        },
        "machine": machine.describe(),
        "build": build,
        "peak_rss_gib": figures["peak_rss_gib"],
        "wall_s": figures["wall_s"],
        "rows": figures["rows"],
        "cpu": figures.get("cpu"),
        "calibration_latents": figures["calibration_latents"],
        "eval_latents": figures["eval_latents"],
    }
    results = a.results_dir.resolve()
    results.mkdir(parents=True, exist_ok=True)
    stem = (
        f"vae-recipes-{result['date']}"
        + ("-tiny" if a.tiny else "")
        + (f"-{a.tag}" if a.tag else "")
    )
    (results / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (results / f"{stem}.md").write_text(markdown(result), encoding="utf-8")
    print()
    print(markdown(result))
    print(f"written: {results / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
