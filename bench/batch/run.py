"""bench/batch: images/s of the INT8 worker path at batch 1, 2 and 4, and whether the
batched images are right.

openvino-genai 2026.4.1 cannot batch an LCM after ``reshape(num_images_per_prompt > 1)``:
its reshape gives the UNet input ``timestep_cond`` the batch, but genai feeds it with
batch 1, and the first infer fails. Two ways that work are measured against the worker's
own path (``reshape(1, ...)``, batch 1):

- ``static``: a copy of the artifact's IR reshaped here to static shapes (UNet ``sample``
  and ``encoder_hidden_states`` at the batch, ``timestep`` and ``timestep_cond`` at 1,
  VAE decoder at the batch, text encoder at 1), loaded without ``reshape``;
- ``dynamic``: the artifact as exported (dynamic shapes), loaded without ``reshape``.

Each configuration runs in a process of its own (one warm-up, then ``--runs`` timed
calls of ``num_images_per_prompt = batch``), and the whole plan runs ``--passes`` times,
every other pass in reverse order; per configuration the report gives the median and
the best seconds per image and the median CPU seconds per image (this process's, all
threads: the figure least moved by other work on a shared machine).

The worker path renders through the worker's own class (``worker.render.pipeline.
GenaiPipeline``: ``reshape(1, ...)``, ``CppStdGenerator(seed)``). The batched paths cannot
(it compiles for batch 1), so they load genai's pipeline themselves, compiled with the
worker's devices and properties (``CompileOptions``), and render with a generator that draws
image ``i``'s noise from its own ``CppStdGenerator(seed_i)``, so image ``i`` of a batch
gets exactly the latents and step noise of the worker's render with seed ``i``. The report
gives the PSNR of each batched image against that render ("identical" when every pixel is
equal), next to the PSNR of two unrelated seeds (what a broken batch would look like).

    python -m bench.batch.run                # full-size INT8 artifact, 512x512, 4 steps
    python -m bench.batch.run --artifact DIR --size 128 --runs 3   # e.g. the tiny model
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lcm_fleet.artifact.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARTIFACT = (
    ROOT / "var/bench/models/lcm-dreamshaper-v7-random-seed0.int8-512px-4steps-16samples"
)
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
PARTS = ("text_encoder", "unet", "vae_decoder")


# ------------------------------------------------------------------ the static IR copy


def static_shapes(model: Any, part: str, batch: int, latent_hw: tuple[int, int]) -> dict[str, Any]:
    """Static input shapes of one sub-model for ``batch`` images per call."""
    import openvino as ov

    h, w = latent_hw
    shapes = {}
    for port in model.inputs:
        name = port.get_any_name()
        dims = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
        if part == "text_encoder":
            dims = [1, 77]  # one prompt; genai repeats its embedding per image
        elif name in ("sample", "latent_sample"):
            dims = [batch, dims[1], h, w]
        elif name == "encoder_hidden_states":
            dims = [batch, 77, dims[2]]
        elif name in ("timestep", "timestep_cond"):
            dims[0] = 1  # genai feeds these with batch 1
        if any(d < 0 for d in dims):
            raise ValueError(f"{part}: no static shape for input {name} {dims}")
        shapes[name] = ov.PartialShape(dims)
    return shapes


def static_copy(artifact: Path, dst: Path, batch: int, width: int, height: int) -> Path:
    """The artifact with text encoder, UNet and VAE decoder reshaped to static shapes."""
    import openvino as ov

    marker = dst / "static.json"
    source = (artifact / "manifest.json").read_bytes()
    wanted = {"batch": batch, "width": width, "height": height, "manifest_bytes": len(source)}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(
        artifact,
        dst,
        ignore=lambda folder, names: [
            n for n in names if Path(folder).name in PARTS and n.startswith("openvino_model.")
        ],
    )
    core = ov.Core()
    for part in PARTS:
        model = core.read_model(artifact / part / "openvino_model.xml")
        model.reshape(static_shapes(model, part, batch, (height // 8, width // 8)))
        ov.save_model(model, dst / part / "openvino_model.xml", compress_to_fp16=False)
    marker.write_text(json.dumps(wanted))
    return dst


# ------------------------------------------------------------------ one configuration


def seeded_generator(seeds: list[int]) -> Any:
    """A genai Generator whose image i draws from its own ``CppStdGenerator(seeds[i])``.

    For one image this is exactly the worker's generator; in a batch, image i gets the
    noise a batch-1 render with seed ``seeds[i]`` gets.
    """
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    class PerImage(ov_genai.Generator):
        def __init__(self) -> None:
            ov_genai.Generator.__init__(self)
            self.streams = [ov_genai.CppStdGenerator(s) for s in seeds]

        def next(self) -> float:
            return float(self.streams[0].next())

        def randn_tensor(self, shape: Any) -> Any:
            dims = list(shape)
            if dims[0] != len(self.streams):
                raise ValueError(f"noise of shape {dims} for {len(self.streams)} image(s)")
            one = ov.Shape([1, *dims[1:]])
            draws = [np.array(s.randn_tensor(one).data) for s in self.streams]
            return ov.Tensor(np.concatenate(draws))

    return PerImage()


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration; save the first timed batch's images; return its figures."""
    import numpy as np
    import openvino_genai as ov_genai

    from worker.render.pipeline import CompileOptions, GenaiPipeline, stage_times

    mode, batch, runs = spec["mode"], spec["batch"], spec["runs"]
    width, height, steps = spec["size"], spec["size"], spec["steps"]
    guidance = spec["guidance_scale"]
    options = CompileOptions(cache_dir=spec["cache_dir"])
    t0 = time.perf_counter()
    if mode == "worker":
        # The worker's own class: reshape(1, ...), batch 1.
        worker = GenaiPipeline.for_folder(
            Path(spec["model_dir"]), width, height, guidance, options=options
        )
    else:
        # The batched paths are what the worker's class cannot do (it reshapes for batch 1,
        # see the module docstring): genai's pipeline without reshape, compiled as the
        # worker compiles (same devices and properties).
        pipe = ov_genai.Text2ImagePipeline(spec["model_dir"])
        pipe.compile(*options.devices(), config=options.config())
    load_s = time.perf_counter() - t0

    def call(seeds: list[int]) -> tuple[Any, dict[str, float]]:
        cpu = time.process_time()
        if mode == "worker":
            pixels, times = worker.generate(PROMPT, seeds[0], steps, guidance)
            images = pixels[np.newaxis]
        else:
            t = time.perf_counter()
            out = pipe.generate(
                PROMPT,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                num_images_per_prompt=len(seeds),
                generator=seeded_generator(seeds),
            )
            times = stage_times(pipe, time.perf_counter() - t)
            images = np.array(out.data, copy=True)
        return images, {
            "total_s": times.total_s,
            "cpu_s": time.process_time() - cpu,
            "text_encoder_s": times.text_encoder_s,
            "unet_s": times.unet_s,
            "vae_s": times.vae_s,
        }

    call([1000 + i for i in range(batch)])  # warm-up
    timed, saved = [], {}
    for run in range(runs):
        seeds = list(range(run * batch, (run + 1) * batch))
        pixels, times = call(seeds)
        timed.append(times)
        if run == 0 or mode == "worker":
            for seed, image in zip(seeds, pixels, strict=True):
                saved[seed] = image
    if spec["images"]:
        np.savez(spec["images"], **{str(k): v for k, v in saved.items()})
    return {
        "mode": mode,
        "batch": batch,
        "load_s": round(load_s, 2),
        "runs": [{k: round(v, 4) for k, v in t.items()} for t in timed],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    }


def summarize(mode: str, batch: int, passes: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over every pass: medians (and the best call) per image."""
    runs = [r for p in passes for r in p["runs"]]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {
        "mode": mode,
        "batch": batch,
        "passes": passes,
        "median": {k: round(v, 4) for k, v in median.items()},
        "images_per_s": round(batch / median["total_s"], 4),
        "s_per_image": round(median["total_s"] / batch, 4),
        "best_s_per_image": round(min(r["total_s"] for r in runs) / batch, 4),
        "cpu_s_per_image": round(median["cpu_s"] / batch, 4),
        "peak_rss_gib": max(p["peak_rss_gib"] for p in passes),
    }


# ------------------------------------------------------------------ the whole run


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def image_stats(image: Any) -> dict[str, float]:
    import numpy as np

    arr = np.asarray(image, dtype=np.float64)
    return {"mean": round(float(arr.mean()), 2), "std": round(float(arr.std()), 2)}


def run_child(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    spec_path = log.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.batch.run", "--child", str(spec_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
        )
    if proc.returncode:
        return {"mode": spec["mode"], "batch": spec["batch"], "error": log.read_text()[-1500:]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def fmt_psnr(value: float | None) -> str:
    if value is None:
        return "-"
    return "identical" if math.isinf(value) else f"{value:.1f} dB"


def markdown(report: dict[str, Any]) -> str:
    base = report["configs"][0]
    lines = [
        f"# Batching curve, {report['size']}x{report['size']}, {report['steps']} steps "
        f"({report['machine'].get('cpu_model')}, {report['machine'].get('usable_cores')} "
        f"cores, {report['date']})",
        "",
        "| path | batch | s per image (median) | best s per image | CPU s per image "
        "| images/s vs worker batch 1 | UNet s per call | VAE s per call | peak RSS GiB "
        "| min PSNR vs batch-1 render |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["configs"]:
        if "error" in c:
            lines.append(f"| {c['mode']} | {c['batch']} | failed | | | | | | | |")
            continue
        m = c["median"]
        lines.append(
            f"| {c['mode']} | {c['batch']} | {c['s_per_image']:.2f} | "
            f"{c['best_s_per_image']:.2f} | {c['cpu_s_per_image']:.2f} | "
            f"{c['images_per_s'] / base['images_per_s']:.2f}x | {m['unet_s']:.2f} | "
            f"{m['vae_s']:.2f} | {c['peak_rss_gib']:.2f} | {fmt_psnr(c.get('min_psnr_db'))} |"
        )
    lines += [
        "",
        f"Two unrelated seeds (what a broken batch looks like): "
        f"{fmt_psnr(report['unrelated_psnr_db'])}. Other processes took "
        f"{report['other_processes_cpu_share']:.0%} of the machine's CPU during the run.",
        "",
    ]
    return "\n".join(lines)


def machine_cpu() -> tuple[float, float]:
    import os

    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    total = sum(fields[:8])
    return (total - fields[3] - fields[4]) / tick, total / tick


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.batch.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--modes", default="static,dynamic")
    parser.add_argument("--runs", type=int, default=3, help="timed calls per configuration")
    parser.add_argument(
        "--passes",
        type=int,
        default=2,
        help="times the whole plan runs, every other pass in reverse order (a busy machine "
        "then weighs on every configuration alike)",
    )
    parser.add_argument("--work-dir", type=Path, default=ROOT / "var" / "bench-batch")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child.read_text()))))
        return 0

    import numpy as np

    from bench.pipeline.machine import describe

    artifact = args.artifact.resolve()
    shape = read_manifest(artifact).shape
    guidance = float((shape.guidance_scale if shape else None) or 8.0)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    plan = [("worker", 1), *((m, b) for m in args.modes.split(",") for b in batches)]
    plan = [(m, b) for m, b in plan if not (m == "static" and b == 1)]  # static b1 = worker's
    busy0, total0 = machine_cpu()
    own_cpu = 0.0
    passes: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in plan}
    errors: dict[tuple[str, int], dict[str, Any]] = {}
    schedule = [
        (index, config)
        for index in range(args.passes)
        for config in (plan if index % 2 == 0 else list(reversed(plan)))
    ]
    for index, (mode, batch) in schedule:
        if (mode, batch) in errors:
            continue
        model_dir = artifact
        if mode == "static":
            model_dir = static_copy(
                artifact, work / f"static-b{batch}-{args.size}", batch, args.size, args.size
            )
        name = f"{mode}-b{batch}"
        spec = {
            "mode": mode,
            "batch": batch,
            # The worker path also renders every seed a batch uses, as the reference.
            "runs": max(args.runs, *batches) if mode == "worker" else args.runs,
            "size": args.size,
            "steps": args.steps,
            "guidance_scale": guidance,
            "model_dir": str(model_dir),
            "cache_dir": str(work / "ov-cache"),
            "images": str(work / f"{name}.npz") if index == 0 else "",
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run_child(spec, work / f"{name}-pass{index + 1}.log")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        own_cpu += (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(f"pass {index + 1} {name}: {json.dumps(result)[:300]}", flush=True)
        if "error" in result:
            errors[(mode, batch)] = result
        else:
            passes[(mode, batch)].append(result)
    busy1, total1 = machine_cpu()
    configs = [errors.get(c) or summarize(c[0], c[1], passes[c]) for c in plan]

    reference = dict(np.load(work / "worker-b1.npz"))
    for c in configs:
        if "error" in c:
            continue
        images = dict(np.load(work / f"{c['mode']}-b{c['batch']}.npz"))
        first = [str(s) for s in range(c["batch"])]
        c["psnr_vs_batch1_db"] = [
            None if s not in reference else round(psnr(images[s], reference[s]), 2) for s in first
        ]
        known = [p for p in c["psnr_vs_batch1_db"] if p is not None]
        c["min_psnr_db"] = min(known) if known else None
        c["image_stats"] = [image_stats(images[s]) for s in first]
    unrelated = psnr(reference["0"], reference["1"]) if "1" in reference else None
    report = {
        "benchmark": "batch",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "artifact": str(artifact),
        "precision": "default (the CPU's: bf16 where it has bf16)",
        "size": args.size,
        "steps": args.steps,
        "runs": args.runs,
        "passes": args.passes,
        "configs": configs,
        "unrelated_psnr_db": None if unrelated is None else round(unrelated, 2),
        "other_processes_cpu_share": round(max(busy1 - busy0 - own_cpu, 0) / (total1 - total0), 3),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"batch-{args.size}x{args.size}-{datetime.now():%Y%m%d-%H%M}"
    (args.results_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
