"""Token merging (``--tome``, issue #15) in the pipeline benchmark, and UNet calls with and without.

Two uses:

1. :mod:`bench.pipeline.run` builds, next to the INT8-UNet artifact, ``ov_int8_tome``: the
   same INT8 step on the full-size model's UNet exported with token merging (ratio
   :data:`RATIO`, model_build.tome) at the benchmark's size, and times it through the
   worker's pipeline like the INT8 path. Its ``gate_passed`` is the quality gate's verdict
   on the reference model built with the same ratio (``lcm-build build --tome``), since
   random weights have no quality to judge.

2. ``python -m bench.pipeline.tome`` times UNet calls alone, with and without token
   merging, in one process with the calls interleaved: the fp32 IR at the default
   precision (bf16 on AMX) and the INT8 UNets, plus the reference-model gate::

       python -m bench.pipeline.tome [--work-dir var/bench] [--size 512] [--ratio 0.5]
                                     [--calls 6] [--samples 16] [--skip-int8] [--tag TAG]

Tasks run in :mod:`bench.pipeline.child` processes; heavy imports stay inside them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.pipeline.gates import TOME_RATIO, reference_gate

RATIO = TOME_RATIO
PATH_KEY = "ov_int8_tome"
PATH_LABEL = f"INT8 UNet + token merging {RATIO}, worker path"
#: Every option the gate admits on the reference model, together (bench.pipeline.run).
COMBINED_KEY = "ov_int8_tome_taesd"
COMBINED_LABEL = f"INT8 UNet + token merging {RATIO} + TAESD decoder (random), worker path"
#: Ops the merge must not use (tomesd's own patch converts to them; OpenVINO runs them slowly).
SLOW_OPS = ("ScatterElementsUpdate", "GatherElements", "ScatterNDUpdate", "GatherND")


# --- child tasks ----------------------------------------------------------------------------


def task_tome_unet(spec: dict[str, Any]) -> dict[str, Any]:
    """The fp32 UNet IR of ``model`` with token merging at ``size`` (``out/unet``)."""
    from model_build.build import TomeOptions, tome_unet
    from model_build.tome import count_ops

    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    made = tome_unet(
        TomeOptions(spec["ratio"], spec["model"]), Path(spec["ir"]), spec["size"], spec["size"], out
    )
    (out / "tome.json").write_text(json.dumps(made.record, indent=2) + "\n", encoding="utf-8")
    return {
        "seconds": made.seconds,
        "record": made.record,
        "ops": count_ops(made.xml, (*SLOW_OPS, "Gather", "TopK", "MatMul")),
    }


def task_unet_calls(spec: dict[str, Any]) -> dict[str, Any]:
    """Median seconds per UNet call of each IR in ``unets`` (label -> xml) at ``precision``,
    compiled side by side and called in turn on the same inputs."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    config = {} if spec["precision"] == "default" else {"INFERENCE_PRECISION_HINT": "f32"}
    side = spec["size"] // 8
    compiled, compile_s = {}, {}
    for label, xml in spec["unets"].items():
        model = core.read_model(xml)
        model.reshape(
            {
                "sample": [1, 4, side, side],
                "timestep": [1],
                "encoder_hidden_states": [1, 77, 768],
                "timestep_cond": [1, 256],
            }
        )
        t0 = time.perf_counter()
        compiled[label] = core.compile_model(model, "CPU", config)
        compile_s[label] = round(time.perf_counter() - t0, 2)
    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((1, 4, side, side), dtype=np.float32),
        "timestep": np.array([499], dtype=np.int64),
        "encoder_hidden_states": rng.standard_normal((1, 77, 768), dtype=np.float32),
        "timestep_cond": rng.standard_normal((1, 256), dtype=np.float32),
    }
    requests = {label: c.create_infer_request() for label, c in compiled.items()}
    times: dict[str, list[float]] = {label: [] for label in compiled}
    outputs = {}
    for label, request in requests.items():  # warm-up
        outputs[label] = np.array(request.infer(inputs)[0])
    for _ in range(spec["calls"]):
        for label, request in requests.items():
            t0 = time.perf_counter()
            request.infer(inputs)
            times[label].append(time.perf_counter() - t0)
    first = next(iter(outputs.values()))
    return {
        "precision": spec["precision"],
        "inference_precision": core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name(),
        "compile_s": compile_s,
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "calls_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "max_abs_diff_to_first": {
            k: float(np.max(np.abs(v - first))) for k, v in list(outputs.items())[1:]
        },
    }


TASKS = {
    "tome_unet": task_tome_unet,
    "unet_calls": task_unet_calls,
}


# --- orchestration --------------------------------------------------------------------------


def build_variant(
    runner: Any,
    models: Path,
    name: str,
    dirs: dict[str, Path],
    *,
    size: int,
    steps: int,
    samples: int,
    skip_build: bool,
    taesd: Path | None = None,
    ratio: float = RATIO,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """The token-merging fp32 UNet and its INT8 artifact (cached); with ``taesd`` (the TAESD
    weights of bench.pipeline.vae) also that artifact with the TAESD decoder
    (:data:`COMBINED_KEY`: every option the gate admits on the reference model, together)."""
    unet = models / f"{name}.tome{ratio}-unet-{size}px"
    int8 = models / f"{dirs['int8'].name}.tome{ratio}"
    figures: dict[str, Any] = {
        "tome_unet": runner.cached(
            "tome-unet",
            "tome_unet",
            unet,
            {"model": str(dirs["model"]), "ir": str(dirs["ir"]), "size": size, "ratio": ratio},
            skip_build,
        ),
    }
    record = json.loads((unet / "tome.json").read_text(encoding="utf-8"))
    figures["tome_int8"] = runner.cached(
        "quantize-int8-tome",
        "quantize",
        int8,
        {
            "ir": str(dirs["ir"]),
            "size": size,
            "steps": steps,
            "samples": samples,
            "unet_xml": str(unet / "unet" / "openvino_model.xml"),
            "tome": record,
        },
        skip_build,
    )
    out = {PATH_KEY: int8, "tome_unet": unet}
    if taesd is not None:
        out[COMBINED_KEY] = int8.with_name(int8.name + ".vae-taesd")
        spec = {"int8": str(int8), "ir": str(dirs["ir"]), "kind": "taesd", "taesd": str(taesd)}
        figures[COMBINED_KEY] = runner.cached(
            f"build-{COMBINED_KEY}", "vae_variant", out[COMBINED_KEY], spec, skip_build
        )
    return out, figures


def isa_label(machine: dict[str, Any]) -> str:
    """amx, vnni or avx2: the best matrix ISA among the CPU's flags."""
    flags = set(machine.get("flags") or [])
    if "amx_tile" in flags:
        return "amx"
    if "avx512_vnni" in flags:
        return "vnni"
    return "avx2"


def markdown(result: dict[str, Any]) -> str:
    cfg, m = result["config"], result["machine"]
    lines = [
        f"# Token merging: UNet calls with and without ({result['date']})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('usable_cores')} usable cores, ISA "
        f"{isa_label(m).upper()} (flags {', '.join(m.get('flags') or [])}). "
        f"Model: {cfg['model_description']}; "
        f"{cfg['size']}x{cfg['size']}, batch 1, ratio {cfg['ratio']}; {cfg['calls']} calls "
        "each after one warm-up, interleaved in one process; medians.",
        "",
        "| UNet | precision | without ToMe (s) | with ToMe (s) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['unet']} | {row['precision']} | {row['without_s']} | {row['with_s']} | "
            f"x{row['speedup']} |"
        )
    gate = result.get("reference_gate")
    if gate:
        q, verdict = gate["quality"], "passed" if gate["passed"] else "FAILED"
        lines += [
            "",
            f"Reference model (`lcm-build build model_build/reference/weights --tome "
            f"{result['config']['ratio']}`, INT8): gate {verdict}; "
            f"adherence {q.get('adherence_pct')}% vs fp32 {q.get('adherence_fp32_pct')}% "
            f"(drop {q.get('adherence_drop_points')} points), PSNR {q.get('psnr_db_mean')} dB, "
            f"SSIM {q.get('ssim_mean')} (worst {q.get('ssim_min')}).",
        ]
    ops = result.get("tome_ops")
    if ops:
        lines += ["", "Ops in the token-merging UNet IR: " + json.dumps(ops) + "."]
    lines += ["", *[f"- {n}" for n in result.get("notes", [])]]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    from bench.pipeline import machine
    from bench.pipeline.run import FULL_DESCRIPTION, GUIDANCE_SCALE, ROOT, Runner, model_and_ir

    args_list = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.pipeline.tome", description=__doc__)
    p.add_argument("--work-dir", type=Path, default=Path("var/bench"))
    p.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--ratio", type=float, default=RATIO)
    p.add_argument("--calls", type=int, default=6)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--skip-int8", action="store_true", help="time the fp32 IR's UNets only")
    p.add_argument("--skip-build", action="store_true")
    p.add_argument(
        "--build-only", action="store_true", help="build (or find cached) everything, then stop"
    )
    p.add_argument("--tag", default="")
    a = p.parse_args(args_list)
    started = dt.datetime.now()
    work = a.work_dir.resolve()
    runner = Runner(work)
    models = work / "models"
    name, model_dir, ir_dir, figures = model_and_ir(runner, models, a.size, 0, False, a.skip_build)
    dirs: dict[str, Path] = {"model": model_dir, "ir": ir_dir}
    unets = {"fp32 IR": str(ir_dir / "unet" / "openvino_model.xml")}
    int8 = models / f"{name}.int8-{a.size}px-{a.steps}steps-{a.samples}samples"
    dirs["int8"] = int8
    if not a.skip_int8:
        figures["quantize"] = runner.cached(
            "quantize-int8",
            "quantize",
            int8,
            {"ir": str(ir_dir), "size": a.size, "steps": a.steps, "samples": a.samples},
            a.skip_build,
        )
    variant, tome_figures = (
        build_variant(
            runner,
            models,
            name,
            dirs,
            size=a.size,
            steps=a.steps,
            samples=a.samples,
            skip_build=a.skip_build,
            ratio=a.ratio,
        )
        if not a.skip_int8
        else _fp32_only(runner, models, name, dirs, a)
    )
    figures.update(tome_figures)
    if a.build_only:
        runner.say("built: " + ", ".join(f"{k} {v}" for k, v in variant.items()))
        return 0
    unets["fp32 IR + ToMe"] = str(variant["tome_unet"] / "unet" / "openvino_model.xml")
    rows = []
    calls: dict[str, Any] = {}
    pairs = [("fp32 IR", "fp32 IR", "fp32 IR + ToMe")]
    if not a.skip_int8:
        unets["INT8"] = str(int8 / "unet" / "openvino_model.xml")
        unets["INT8 + ToMe"] = str(variant[PATH_KEY] / "unet" / "openvino_model.xml")
        pairs.append(("INT8 UNet", "INT8", "INT8 + ToMe"))
    common = {"size": a.size, "calls": a.calls, "precision": "default"}
    for unet_label, base, merged in pairs:
        result = runner.child(
            f"unet-calls-{base.replace(' ', '_')}",
            "unet_calls",
            {**common, "unets": {base: unets[base], merged: unets[merged]}},
        )
        calls[unet_label] = result
        without, with_ = result["median_s"][base], result["median_s"][merged]
        rows.append(
            {
                "unet": unet_label,
                "precision": f"default ({result['inference_precision']})",
                "without_s": without,
                "with_s": with_,
                "speedup": round(without / with_, 3),
            }
        )
    result_doc = {
        "benchmark": "tome",
        "date": started.date().isoformat(),
        "command": shlex.join(["python", "-m", "bench.pipeline.tome", *args_list]),
        "config": {
            "model_description": FULL_DESCRIPTION,
            "size": a.size,
            "ratio": a.ratio,
            "calls": a.calls,
            "steps": a.steps,
            "samples": a.samples,
            "guidance_scale": GUIDANCE_SCALE,
        },
        "machine": machine.describe(),
        "build": figures,
        "rows": rows,
        "calls": calls,
        "reference_gate": figures.get("tome_reference_gate"),
        "tome_ops": figures["tome_unet"].get("ops"),
        "notes": [],
    }
    a.results_dir.mkdir(parents=True, exist_ok=True)
    isa = isa_label(result_doc["machine"])
    stem = (
        f"tome-{result_doc['date']}" + (f"-{isa}" if isa else "") + (f"-{a.tag}" if a.tag else "")
    )
    (a.results_dir / f"{stem}.json").write_text(json.dumps(result_doc, indent=2) + "\n")
    (a.results_dir / f"{stem}.md").write_text(markdown(result_doc))
    print(markdown(result_doc))
    print(f"written: {a.results_dir / stem}.json and .md")
    return 0


def _fp32_only(
    runner: Any, models: Path, name: str, dirs: dict[str, Path], a: argparse.Namespace
) -> tuple[dict[str, Path], dict[str, Any]]:
    unet = models / f"{name}.tome{a.ratio}-unet-{a.size}px"
    figures = {
        "tome_unet": runner.cached(
            "tome-unet",
            "tome_unet",
            unet,
            {"model": str(dirs["model"]), "ir": str(dirs["ir"]), "size": a.size, "ratio": a.ratio},
            a.skip_build,
        ),
        "tome_reference_gate": reference_gate(
            runner, models, "tome-reference-gate", ("--tome", str(a.ratio)), a.skip_build
        ),
    }
    return {"tome_unet": unet}, figures


if __name__ == "__main__":
    sys.exit(main())
