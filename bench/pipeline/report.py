"""The markdown table of a pipeline benchmark result (the JSON written by bench.pipeline.run)."""

from __future__ import annotations

from typing import Any


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _gib(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _gate(passed: Any) -> str:
    return "-" if passed is None else ("passed" if passed else "FAILED")


def _step(name: str, step: dict[str, Any] | None) -> str:
    if not step:
        return f"{name}: -"
    cached = " (cached from an earlier run)" if step.get("cached") else ""
    rss = _gib(step.get("peak_rss_gib"))
    return f"{name}: {_num(step.get('seconds'), 1)} s, peak RSS {rss} GiB{cached}"


def markdown(result: dict[str, Any]) -> str:
    cfg, machine = result["config"], result["machine"]
    ov = machine.get("openvino_cpu", {})
    versions = machine.get("versions", {})
    lines = [
        f"# Pipeline benchmark {result['date']}",
        "",
        f"{cfg['model_description']}; {cfg['size']}x{cfg['size']}, {cfg['steps']} steps, "
        f"guidance {cfg['guidance_scale']}, batch 1, prompt {cfg['prompt']!r}. "
        f"Seconds are medians of {cfg['runs']} timed renders after 1 warm-up; every path ran "
        "in a process of its own, in this order, in one run "
        f"(`{result['command']}`, {_num(result['wall_s'], 0)} s in all).",
        "",
        "| path | total s | text encoder s | UNet s | VAE s | vs PyTorch fp32 | "
        "UNet vs PyTorch | images / core-hour | gate | peak RSS GiB | load s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for path in result["paths"].values():
        m = path["median"]
        lines.append(
            f"| {path['label']} | {_num(m['total_s'])} | {_num(m['text_encoder_s'])} | "
            f"{_num(m['unet_s'])} | {_num(m['vae_s'])} | {_ratio(path['speedup_total'])} | "
            f"{_ratio(path['speedup_unet'])} | {_num(path.get('images_per_core_hour'), 0)} | "
            f"{_gate(path.get('gate_passed'))} | {_gib(path['peak_rss_gib'])} | "
            f"{_num(path['load_s'], 1)} |"
        )
    lines += [
        "",
        "- vs PyTorch fp32: PyTorch's median total (or UNet) seconds divided by the path's; "
        "above 1 is faster.",
        "- images / core-hour: 3600 / (median total s x usable cores), one render at a time "
        "on every usable core; the worker exports the same figure live "
        "(`lcm_images_per_core_hour`).",
        "- gate: the quality gate's verdict on the reference model built with that path's "
        "options (`lcm-build build model_build/reference/weights ...`; random weights cannot "
        "be judged); - for PyTorch and the fp32 IR, which are no build option, or a gate not "
        "run (`--gates`).",
        "- peak RSS: `ru_maxrss` of the process that loaded and rendered that path only.",
        "- load: PyTorch `from_pretrained`; OpenVINO read + reshape + compile of the "
        "Text2ImagePipeline with no compile cache (a worker with `LCM_CACHE_DIR` set "
        "compiles once, then loads from the cache).",
        "- stages: diffusers' text encoder / UNet forward and VAE decode, timed by wrapping "
        "them; genai's `get_performance_metrics()` as `worker/render/pipeline.py` reads it. "
        "Total is the wall time of one render call. Each column is its own median over "
        "the timed renders (every render is in the JSON).",
    ]
    build = result.get("build", {})
    q = build.get("quantize") or {}
    lines += [
        "",
        "Build (each step in its own process):",
        "",
        f"- {_step('model', build.get('model'))}",
        f"- {_step('export to fp32 IR (optimum-intel)', build.get('export'))}",
        f"- {_step('INT8 quantization', q)}: calibration capture "
        f"{_num(q.get('capture_s'), 1)} s (peak ~{_gib(q.get('capture_peak_rss_gib'))} GiB), "
        f"NNCF {_num(q.get('nncf_s'), 1)} s (peak ~{_gib(q.get('nncf_peak_rss_gib'))} GiB), "
        f"{q.get('samples')} samples, {q.get('fake_quantize_count')} FakeQuantize",
    ]
    vae_steps = [
        ("VAE calibration latents (fp32 IR, f32)", "vae_latents"),
        ("random TAESD", "taesd"),
        ("INT8-weights VAE decoder", "ov_int8_vae_int8w"),
        ("INT8 VAE decoder", "ov_int8_vae_int8"),
        ("TAESD decoder export", "ov_int8_vae_taesd"),
    ]
    for name, key in vae_steps:
        if key in build:
            step = build[key]
            extra = ""
            if step.get("fake_quantize_count"):
                extra = (
                    f": {step.get('samples')} latents, {step['fake_quantize_count']} FakeQuantize"
                )
            lines.append(f"- {_step(name, step)}{extra}")
    if any(key.startswith("ov_int8_vae_") for key in result["paths"]):
        lines += [
            "",
            "The VAE paths are the INT8-UNet artifact with its decoder made by "
            "`--vae-decoder int8-weights|int8|taesd`. On random weights their speed stands for "
            "the real model; their images do not: the INT8 decoder's ranges come from random "
            "latents, and the TAESD's weights are random. Their quality is judged on the "
            "reference model built with the same option (the gate column and the list below).",
        ]
    gates = (result.get("build") or {}).get("reference_gates") or {}
    if gates:
        lines += [
            "",
            "Gates on the reference model (one `lcm-build build` per path's options):",
            "",
        ]
        for key, gate in gates.items():
            q = gate.get("quality") or {}
            label = (result["paths"].get(key) or {}).get("label", key)
            cached = " (cached from an earlier run)" if gate.get("cached") else ""
            lines.append(
                f"- {label} (`{' '.join(gate.get('options') or []) or 'INT8 UNet only'}`): "
                f"{_gate(gate.get('passed'))}; adherence {q.get('adherence_pct')}% vs fp32 "
                f"{q.get('adherence_fp32_pct')}%, PSNR {q.get('psnr_db_mean')} dB, SSIM "
                f"{q.get('ssim_mean')}{cached}"
            )
    best = [p for p in result["paths"].values() if p.get("gate_passed") and p.get("speedup_total")]
    if best:
        top = max(best, key=lambda p: p["speedup_total"])
        lines += [
            "",
            f"Best gated path: {top['label']}, {_ratio(top['speedup_total'])} PyTorch fp32, "
            f"{_num(top.get('images_per_core_hour'), 0)} images per core-hour.",
        ]
    notes = result.get("notes") or []
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    lines += [
        "",
        f"Machine: {machine.get('cpu_model')}, {machine.get('logical_cores')} logical / "
        f"{machine.get('physical_cores')} physical cores, {machine.get('ram_gib')} GiB RAM, "
        f"CPU flags {', '.join(machine.get('flags') or []) or '-'}; OpenVINO CPU "
        f"capabilities {', '.join(ov.get('optimization_capabilities') or []) or '-'}, "
        f"default inference precision {ov.get('default_inference_precision')}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".",
        "",
    ]
    return "\n".join(lines)
