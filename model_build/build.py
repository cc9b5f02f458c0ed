"""The build stages, each returning a dataclass: export, make a candidate, gate it, or all.

An artifact is a folder that openvino.genai's Text2ImagePipeline loads, plus
``manifest.json`` (see :mod:`lcm_fleet.artifact.manifest`). A build exports the source to a
full-precision (fp32) IR, the reference; makes the candidate at the chosen precision;
renders an evaluation set with both and gates the candidate on the figures
(quality.json, contact_sheet.png); then writes the candidate's manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lcm_fleet.artifact.manifest import (
    MANIFEST_NAME,
    artifact_files,
    read_manifest,
    write_manifest,
)
from model_build.calibration import CalibrationSpec, capture_inputs
from model_build.compare import EvalSpec, compare_artifacts
from model_build.contact_sheet import write_contact_sheet
from model_build.errors import BuildError, BuildInputError
from model_build.export import check_source, export_ir, missing_ir_files, prepare_output_dir
from model_build.gate import (
    CONTACT_SHEET_NAME,
    GateResult,
    GateSettings,
    judge,
    quality_record,
    write_quality,
)
from model_build.progress import peak_rss_gib
from model_build.prompts import load_prompts
from model_build.quantize import UNET_INT8_RECIPE, count_fake_quantize, quantize_unet
from model_build.reference.quality import adherence_check, reference_prompts
from model_build.sources import describe_source
from model_build.vae_decoder import VaeDecoderOptions, make_vae_decoder, precision_label

logger = logging.getLogger(__name__)

UNET_XML = Path("unet/openvino_model.xml")
PRECISIONS = ("int8", "hybrid", "fp16", "fp32")


class QualityGateFailed(BuildError):
    """The candidate is below the quality thresholds; nothing may be published."""


@dataclass(frozen=True)
class EvalOptions:
    prompts: str | Path = "eval"
    seeds: tuple[int, ...] = (0, 1)
    speed_runs: int = 3
    gate: GateSettings = field(default_factory=GateSettings)
    #: Accept a candidate below the thresholds; the reason is recorded in the manifest.
    override: str | None = None


@dataclass(frozen=True)
class BuildResult:
    artifact: Path
    manifest_sha256: str
    precision: str
    shape: dict[str, Any]
    fake_quantize_count: int = 0
    quality: dict[str, Any] | None = None
    gate: GateResult | None = None
    durations_s: dict[str, float] = field(default_factory=dict)
    #: Peak resident memory of the build process (all stages so far).
    peak_rss_gib: float = 0.0


def unet_config(ir_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((ir_dir / "unet" / "config.json").read_text())
    return config


def native_size(ir_dir: Path) -> int:
    """The image size the UNet was trained at (its latent sample_size times the VAE's 8)."""
    sample = unet_config(ir_dir).get("sample_size", 64)
    return int(sample[0] if isinstance(sample, list) else sample) * 8


def default_guidance(ir_dir: Path) -> float:
    """8.0 for an LCM UNet (guidance embedding); 1.0, no CFG, for an SD1.5 + LCM-LoRA UNet."""
    return 8.0 if unet_config(ir_dir).get("time_cond_proj_dim") else 1.0


def model_info(ir_dir: Path) -> dict[str, Any]:
    cfg = unet_config(ir_dir)
    return {
        # "embedding": any guidance_scale per job; "cfg": the compiled guidance regime counts.
        "guidance": "embedding" if cfg.get("time_cond_proj_dim") else "cfg",
        "unet_in_channels": cfg.get("in_channels"),
        "unet_time_cond_proj_dim": cfg.get("time_cond_proj_dim"),
        "unet_cross_attention_dim": cfg.get("cross_attention_dim"),
    }


def export_artifact(
    source: str,
    out_dir: Path,
    *,
    revision: str = "main",
    overwrite: bool = False,
    source_record: dict[str, Any] | None = None,
    progress: bool = True,
) -> BuildResult:
    """Stage 1: source -> full-precision (fp32) IR artifact with its manifest (the reference)."""
    check_source(source)
    t0 = time.perf_counter()
    export_ir(source, out_dir, revision=revision, overwrite=overwrite, progress=progress)
    size = native_size(out_dir)
    shape = {"width": size, "height": size, "batch": 1, "guidance_scale": default_guidance(out_dir)}
    write_manifest(
        out_dir,
        {
            "source": source_record or describe_source(source, revision),
            "precision": "fp32",
            "export": {
                "tool": "optimum-intel main_export",
                "task": "text-to-image",
                "weight_format": "fp32",
            },
            "quantization": None,
            "fake_quantize_count": 0,
            "shape": shape,
            "model": model_info(out_dir),
        },
    )
    manifest = read_manifest(out_dir)
    return BuildResult(
        artifact=out_dir,
        manifest_sha256=manifest.sha256,
        precision="fp32",
        shape=shape,
        durations_s={"export": round(time.perf_counter() - t0, 3)},
        peak_rss_gib=peak_rss_gib(),
    )


def _copy_ir(ir_dir: Path, out_dir: Path, skip: set[str]) -> None:
    for rel in artifact_files(ir_dir):
        if rel in skip or rel == MANIFEST_NAME:
            continue
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ir_dir / rel, target)


def _model_xmls(ir_dir: Path) -> list[str]:
    return [rel for rel in artifact_files(ir_dir) if rel.endswith("/openvino_model.xml")]


def int8_candidate(
    ir_dir: Path,
    out_dir: Path,
    spec: CalibrationSpec,
    prompts: list[str],
    prompts_name: str,
    progress: bool,
    durations: dict[str, float],
    vae_latents: list[Any] | None = None,
) -> dict[str, Any]:
    """The INT8 step alone (calibration capture + NNCF, no gate, no manifest): the manifest's
    ``quantization`` and ``fake_quantize_count``. Benchmarks use it on random weights.

    With ``spec.vae_samples``, the same capture pass keeps that many final latents and
    appends them to ``vae_latents`` (for the INT8 VAE decoder)."""
    t0 = time.perf_counter()
    captured = capture_inputs(ir_dir, prompts, spec, progress=progress)
    samples = captured.unet
    if vae_latents is not None:
        vae_latents.extend(captured.latents)
    del captured
    durations["calibration_capture"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    _copy_ir(ir_dir, out_dir, skip={UNET_XML.as_posix(), UNET_XML.with_suffix(".bin").as_posix()})
    fq = quantize_unet(ir_dir / UNET_XML, samples, out_dir / UNET_XML)
    del samples
    durations["quantize"] = round(time.perf_counter() - t0, 3)
    return {
        "quantization": {
            **UNET_INT8_RECIPE,
            "samples": spec.samples,
            "calibration": {
                "prompts": prompts_name,
                "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
                **_calibration_record(spec),
            },
            "unchanged_parts": ["text_encoder", "vae_decoder", "vae_encoder", "tokenizer"],
        },
        "fake_quantize_count": fq,
    }


def _calibration_record(spec: CalibrationSpec, unet: bool = True) -> dict[str, Any]:
    return {
        "prompts_used": spec.prompts_needed(unet),
        "width": spec.width,
        "height": spec.height,
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "seed": spec.seed,
        "precision": spec.precision,
    }


def vae_decoder_stage(
    ir_dir: Path,
    out_dir: Path,
    vae: VaeDecoderOptions,
    spec: CalibrationSpec,
    prompts: list[str],
    prompts_name: str,
    latents: list[Any],
    progress: bool,
    durations: dict[str, float],
) -> dict[str, Any]:
    """Make the candidate's ``vae_decoder`` part (model_build.vae_decoder); its manifest record.

    ``latents`` are the final latents the UNet's capture pass kept (``int8`` only); when
    it kept none (the UNet was not quantized), this stage runs a capture pass of its own.
    """
    calibration: dict[str, Any] | None = None
    if vae.needs_latents:
        captured_with = "the UNet's calibration renders"
        if not latents:
            t0 = time.perf_counter()
            latents = capture_inputs(ir_dir, prompts, spec, progress, unet=False).latents
            durations["vae_calibration_capture"] = round(time.perf_counter() - t0, 3)
            captured_with = "a capture pass of its own (the UNet was not calibrated)"
        calibration = {
            "prompts": prompts_name,
            "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
            **_calibration_record(spec, unet=False),
            "captured_with": captured_with,
        }
    result = make_vae_decoder(ir_dir, out_dir, vae, latents, calibration)
    if vae.kind != "sd":
        durations["vae_decoder"] = result.seconds
    return result.record


def _candidate_fp16(ir_dir: Path, out_dir: Path) -> dict[str, Any]:
    import openvino as ov

    xmls = _model_xmls(ir_dir)
    skip = set(xmls) | {x[: -len(".xml")] + ".bin" for x in xmls}
    _copy_ir(ir_dir, out_dir, skip=skip)
    core = ov.Core()
    for rel in xmls:
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(core.read_model(str(ir_dir / rel)), str(out_dir / rel), compress_to_fp16=True)
    return {"quantization": {"method": "fp16 weight compression", "parts": sorted(xmls)}}


def _candidate_hybrid(
    ir_dir: Path, out_dir: Path, spec: CalibrationSpec, prompts: list[str], prompts_name: str
) -> dict[str, Any]:
    from optimum.intel import OVLatentConsistencyModelPipeline, OVWeightQuantizationConfig

    chosen = [prompts[i % len(prompts)] for i in range(spec.prompts_needed())]
    config = OVWeightQuantizationConfig(
        bits=8, quant_method="hybrid", dataset=chosen, num_samples=spec.samples
    )
    try:
        pipe = OVLatentConsistencyModelPipeline.from_pretrained(
            str(ir_dir), quantization_config=config, compile=False
        )
        pipe.save_pretrained(str(out_dir))
    except Exception as e:
        raise BuildError(f"optimum-intel hybrid quantization of {ir_dir} failed: {e}") from e
    del pipe
    # save_pretrained writes no OpenVINO tokenizer IR: take the exported one.
    for rel in artifact_files(ir_dir):
        if rel.startswith("tokenizer/") and not (out_dir / rel).exists():
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ir_dir / rel, out_dir / rel)
    import openvino as ov

    fq = count_fake_quantize(ov.Core().read_model(str(out_dir / UNET_XML)))
    return {
        "quantization": {
            "method": "optimum-intel hybrid: INT8 weights everywhere, INT8 activations in the UNet",
            "samples": spec.samples,
            "calibration": {
                "prompts": prompts_name,
                "prompts_sha256": hashlib.sha256("\n".join(chosen).encode()).hexdigest(),
                "prompts_used": len(chosen),
            },
        },
        "fake_quantize_count": fq,
    }


def gate_candidate(
    ir_dir: Path, out_dir: Path, spec: EvalSpec, options: EvalOptions, progress: bool
) -> tuple[GateResult, dict[str, Any]]:
    """Render the evaluation set with both; write quality.json and the contact sheet.

    For a reference-domain model (its ``reference.json``) the gate also scores prompt
    adherence of both (model_build.reference.quality)."""
    comparison = compare_artifacts(ir_dir, out_dir, spec, progress=progress)
    adherence = adherence_check(
        ir_dir,
        out_dir,
        options.gate.gate_max_adherence_drop_points,
        spec.steps,
        spec.guidance_scale,
    )
    gate = judge(
        comparison.aggregate(),
        options.gate,
        options.override,
        extra_failures=adherence["failures"] if adherence else None,
    )
    prompts_label = str(options.prompts)
    if reference_prompts(ir_dir) is not None and options.prompts == "eval":
        prompts_label = "reference-domain evaluation captions"
    record = quality_record(comparison, spec, gate, prompts_label)
    if adherence is not None:
        record["adherence"] = adherence
    write_quality(out_dir, record)
    write_contact_sheet(
        comparison.pixels,
        comparison.scores,
        out_dir / CONTACT_SHEET_NAME,
        title=f"{out_dir.name}: candidate vs fp32 reference",
    )
    return gate, record


def _adherence_summary(adherence: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's prompt-adherence figures (reference-domain models only)."""
    if not adherence:
        return {}
    return {
        "adherence_fp32_pct": adherence["reference_f32"]["adherence_pct"],
        "adherence_pct": adherence["candidate_served"]["adherence_pct"],
        "adherence_drop_points": adherence["drop_points"],
    }


def quantize_artifact(
    ir_dir: Path,
    out_dir: Path,
    *,
    precision: str = "int8",
    spec: CalibrationSpec | None = None,
    prompts: str | Path = "calibration",
    evaluation: EvalOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
    vae: VaeDecoderOptions | None = None,
) -> BuildResult:
    """Stage 2: fp32 IR artifact -> candidate at ``precision``, gated against the fp32 one.

    ``vae`` chooses the candidate's VAE decoder (model_build.vae_decoder; default: the SD
    decoder as the precision step made it). It is part of the candidate the gate judges.

    Raises QualityGateFailed (after writing quality.json, the contact sheet and a manifest
    that records the failure) when the candidate is below the thresholds and no override
    was given.
    """
    ir_dir, out_dir = Path(ir_dir), Path(out_dir)
    if precision not in PRECISIONS:
        raise BuildInputError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    missing = missing_ir_files(ir_dir)
    if missing:
        raise BuildInputError(
            f"ir={str(ir_dir)!r} is not an exported IR folder (missing {', '.join(missing)}); "
            "make one with `lcm-build export SOURCE DIR`"
        )
    if out_dir.resolve() == ir_dir.resolve():
        raise BuildInputError("the candidate needs its own folder: OUT must differ from IR")
    vae = vae or VaeDecoderOptions()
    vae.check()
    evaluation = evaluation or EvalOptions()
    # A reference-domain model calibrates and is judged on its own domain's captions,
    # unless other prompts were asked for.
    domain = reference_prompts(ir_dir)
    if domain is not None and str(prompts) == "calibration":
        prompts = "reference-domain training captions"
    size = native_size(ir_dir)
    spec = spec or CalibrationSpec()
    spec = replace(
        spec,
        width=spec.width or size,
        height=spec.height or size,
        guidance_scale=spec.guidance_scale or default_guidance(ir_dir),
    )
    if vae.needs_latents:
        # Default: one latent per render the UNet's calibration makes anyway.
        spec = replace(spec, vae_samples=vae.samples or math.ceil(spec.samples / spec.steps))
    spec.check()
    assert spec.width is not None and spec.height is not None and spec.guidance_scale is not None
    eval_spec = EvalSpec(
        width=spec.width,
        height=spec.height,
        prompts=tuple(
            domain["eval"]
            if domain is not None and evaluation.prompts == "eval"
            else load_prompts(evaluation.prompts)
        ),
        seeds=evaluation.seeds,
        steps=spec.steps,
        guidance_scale=spec.guidance_scale,
        speed_runs=evaluation.speed_runs,
    )
    needs_prompts = precision in ("int8", "hybrid") or vae.needs_latents
    if not needs_prompts:
        prompt_list: list[str] = []
    elif domain is not None and prompts == "reference-domain training captions":
        prompt_list = domain["calibration"]
    else:
        prompt_list = load_prompts(prompts)
    prepare_output_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    durations: dict[str, float] = {}

    t0 = time.perf_counter()
    latents: list[Any] = []
    if precision == "int8":
        info = int8_candidate(
            ir_dir, out_dir, spec, prompt_list, str(prompts), progress, durations, latents
        )
    elif precision == "hybrid":
        info = _candidate_hybrid(ir_dir, out_dir, spec, prompt_list, str(prompts))
        durations["quantize"] = round(time.perf_counter() - t0, 3)
    elif precision == "fp16":
        info = _candidate_fp16(ir_dir, out_dir)
        durations["convert"] = round(time.perf_counter() - t0, 3)
    else:
        _copy_ir(ir_dir, out_dir, skip=set())
        info = {"quantization": None}

    vae_record = vae_decoder_stage(
        ir_dir, out_dir, vae, spec, prompt_list, str(prompts), latents, progress, durations
    )
    del latents
    quantization = info.get("quantization")
    if vae.kind != "sd" and quantization and "unchanged_parts" in quantization:
        quantization["unchanged_parts"] = [
            part for part in quantization["unchanged_parts"] if part != "vae_decoder"
        ]

    t0 = time.perf_counter()
    gate, record = gate_candidate(ir_dir, out_dir, eval_spec, evaluation, progress)
    durations["evaluate"] = round(time.perf_counter() - t0, 3)

    source: dict[str, Any] = {"kind": "ir", "path": str(ir_dir.resolve())}
    if (ir_dir / MANIFEST_NAME).is_file():
        parent = read_manifest(ir_dir)
        source = {**parent.data.get("source", {}), "fp32_manifest_sha256": parent.sha256}
    shape = {
        "width": spec.width,
        "height": spec.height,
        "batch": 1,
        "guidance_scale": spec.guidance_scale,
    }
    write_manifest(
        out_dir,
        {
            "source": source,
            "precision": precision_label({"int8": "int8-unet"}.get(precision, precision), vae.kind),
            "fake_quantize_count": 0,
            **info,
            "vae_decoder": vae_record,
            "quality": {
                **record["aggregate"],
                "passed": gate.passed,
                "override": gate.override,
                "failures": gate.failures,
                **_adherence_summary(record.get("adherence")),
            },
            "speed": record["speed"],
            "build": {"durations_s": durations, "peak_rss_gib": peak_rss_gib()},
            "shape": shape,
            "model": model_info(ir_dir),
        },
    )
    manifest = read_manifest(out_dir)
    result = BuildResult(
        artifact=out_dir,
        manifest_sha256=manifest.sha256,
        precision=str(manifest.data["precision"]),
        shape=shape,
        fake_quantize_count=int(manifest.data.get("fake_quantize_count") or 0),
        quality=record,
        gate=gate,
        durations_s=durations,
        peak_rss_gib=peak_rss_gib(),
    )
    if not gate.accepted:
        raise QualityGateFailed(
            f"{out_dir} failed the quality gate: {'; '.join(gate.failures)}. Look at "
            f"{out_dir / CONTACT_SHEET_NAME}; pass --accept-below-gate REASON to keep it anyway "
            "(recorded in the manifest), or change the LCM_GATE_* thresholds"
        )
    return result


def build_artifact(
    source: str,
    out_dir: Path,
    *,
    work_dir: Path | None = None,
    revision: str = "main",
    precision: str = "int8",
    spec: CalibrationSpec | None = None,
    prompts: str | Path = "calibration",
    evaluation: EvalOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
    source_record: dict[str, Any] | None = None,
    vae: VaeDecoderOptions | None = None,
) -> BuildResult:
    """Export then make and gate the candidate; the fp32 reference stays in ``work_dir``."""
    if precision not in PRECISIONS:
        raise BuildInputError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if vae is not None:
        vae.check()
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".fp32")
    exported = export_artifact(
        source,
        work_dir,
        revision=revision,
        overwrite=overwrite,
        source_record=source_record,
        progress=progress,
    )
    result = quantize_artifact(
        work_dir,
        out_dir,
        precision=precision,
        spec=spec,
        prompts=prompts,
        evaluation=evaluation,
        overwrite=overwrite,
        progress=progress,
        vae=vae,
    )
    return replace(result, durations_s={**exported.durations_s, **result.durations_s})
