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
import tempfile
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
from model_build.tome import TomePlan, check_ratio, export_tome_unet
from model_build.tome import record as tome_record
from model_build.vae_decoder import (
    VaeDecoderOptions,
    make_vae_decoder,
    model_folder_of,
    precision_label,
)

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
class TomeOptions:
    """``--tome RATIO``: token merging in the candidate's UNet, made from ``source`` (the
    diffusers model; an IR cannot be traced again)."""

    ratio: float
    source: str
    revision: str = "main"

    def check(self) -> None:
        check_ratio(self.ratio)

    @property
    def active(self) -> bool:
        return self.ratio > 0


@dataclass(frozen=True)
class TomeUnet:
    """The token-merging fp32 UNet IR a candidate is made from (quantize stage 4)."""

    xml: Path
    record: dict[str, Any]
    seconds: float


def tome_unet(tome: TomeOptions, ir_dir: Path, width: int, height: int, scratch: Path) -> TomeUnet:
    """Export ``tome.source``'s UNet with token merging, static at ``width`` x ``height``,
    with the inputs and output of ``ir_dir``'s UNet, into ``scratch``."""
    t0 = time.perf_counter()
    plan = TomePlan.for_image(width, height, tome.ratio)
    xml = scratch / UNET_XML
    patched = export_tome_unet(tome.source, xml, ir_dir / UNET_XML, plan, revision=tome.revision)
    return TomeUnet(
        xml=xml, record=tome_record(plan, patched), seconds=round(time.perf_counter() - t0, 3)
    )


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
    #: The manifest's ``tome`` record (token merging), None without it.
    tome: dict[str, Any] | None = None


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
    tome: float = 0.0,
) -> BuildResult:
    """Stage 1: source -> full-precision (fp32) IR artifact with its manifest (the reference).

    ``tome`` > 0: its UNet merges that share of tokens (model_build.tome), static at the
    model's native size; the manifest records it."""
    check_source(source)
    tome = check_ratio(tome)
    t0 = time.perf_counter()
    export_ir(source, out_dir, revision=revision, overwrite=overwrite, progress=progress)
    size = native_size(out_dir)
    shape = {"width": size, "height": size, "batch": 1, "guidance_scale": default_guidance(out_dir)}
    extra: dict[str, Any] = {}
    if tome > 0:
        with tempfile.TemporaryDirectory(prefix="tome-", dir=out_dir.parent) as scratch:
            options = TomeOptions(tome, source, revision)
            made = tome_unet(options, out_dir, size, size, Path(scratch))
            for suffix in (".xml", ".bin"):
                target = out_dir / UNET_XML.with_suffix(suffix)
                shutil.move(made.xml.with_suffix(suffix), target)
        extra["tome"] = made.record
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
            **extra,
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
        tome=extra.get("tome"),
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


def _prompts_sha256(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


@dataclass(frozen=True)
class CandidatePlan:
    """What a quantize run's inputs resolve to (quantize stage 2)."""

    #: The calibration renders, at the resolved size and guidance.
    calibration: CalibrationSpec
    #: The gate's evaluation set, at the same size, steps and guidance.
    evaluation: EvalSpec
    #: Calibration prompts (empty when neither the UNet nor the VAE decoder calibrates).
    prompts: list[str]
    #: How the manifest names them ("calibration", a file, the reference domain's captions).
    prompts_name: str

    def shape(self) -> dict[str, Any]:
        """The candidate's static shape, as its manifest records it."""
        spec = self.calibration
        return {
            "width": spec.width,
            "height": spec.height,
            "batch": 1,
            "guidance_scale": spec.guidance_scale,
        }


@dataclass(frozen=True)
class Candidate:
    """The candidate's parts as the precision step made them (quantize stage 4)."""

    #: The manifest's ``quantization`` record (None: the fp32 IR's parts, copied).
    quantization: dict[str, Any] | None
    fake_quantize_count: int = 0
    #: Seconds of each step, in the order they ran (the CLI prints them in this order).
    durations_s: dict[str, float] = field(default_factory=dict)
    #: Final latents the UNet's calibration capture kept (for the INT8 VAE decoder).
    latents: tuple[Any, ...] = ()

    def manifest_fields(self) -> dict[str, Any]:
        return {"quantization": self.quantization, "fake_quantize_count": self.fake_quantize_count}


@dataclass(frozen=True)
class VaeDecoderStage:
    """The candidate's ``vae_decoder`` part (quantize stage 5): its record and seconds."""

    record: dict[str, Any]
    durations_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Judged:
    """The gate's verdict on the candidate (quantize stage 6), its quality.json record."""

    gate: GateResult
    record: dict[str, Any]
    seconds: float = 0.0

    def manifest_quality(self) -> dict[str, Any]:
        """The manifest's ``quality``: the figures and the verdict a worker checks."""
        gate, record = self.gate, self.record
        return {
            **record["aggregate"],
            "passed": gate.passed,
            "override": gate.override,
            "failures": gate.failures,
            **_adherence_summary(record.get("adherence")),
        }


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BuildInputError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")


def _check_tome(tome: TomeOptions, precision: str) -> None:
    tome.check()
    if tome.active and precision == "hybrid":
        raise BuildInputError(
            f"--tome={tome.ratio} does not combine with --precision hybrid (optimum-intel "
            "quantizes the exported UNet itself); use --precision int8, fp16 or fp32"
        )


def check_quantize_inputs(
    ir_dir: Path, out_dir: Path, precision: str, tome: TomeOptions | None = None
) -> None:
    """Quantize stage 1: a known precision, an exported IR, a folder of its own for OUT,
    and a token-merging ratio in range that the precision can take."""
    _check_precision(precision)
    if tome is not None:
        _check_tome(tome, precision)
    missing = missing_ir_files(ir_dir)
    if missing:
        raise BuildInputError(
            f"ir={str(ir_dir)!r} is not an exported IR folder (missing {', '.join(missing)}); "
            "make one with `lcm-build export SOURCE DIR`"
        )
    if out_dir.resolve() == ir_dir.resolve():
        raise BuildInputError("the candidate needs its own folder: OUT must differ from IR")


def plan_candidate(
    ir_dir: Path,
    precision: str,
    spec: CalibrationSpec,
    prompts: str | Path,
    evaluation: EvalOptions,
    vae: VaeDecoderOptions,
) -> CandidatePlan:
    """Quantize stage 2: the calibration (size and guidance from the model when not given),
    the evaluation set and the calibration prompts."""
    # A reference-domain model calibrates and is judged on its own domain's captions,
    # unless other prompts were asked for.
    domain = reference_prompts(ir_dir)
    if domain is not None and str(prompts) == "calibration":
        prompts = "reference-domain training captions"
    size = native_size(ir_dir)
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
    return CandidatePlan(
        calibration=spec, evaluation=eval_spec, prompts=prompt_list, prompts_name=str(prompts)
    )


def int8_candidate(
    ir_dir: Path,
    out_dir: Path,
    spec: CalibrationSpec,
    prompts: list[str],
    prompts_name: str,
    progress: bool,
    unet_xml: Path | None = None,
) -> Candidate:
    """The INT8 step alone (calibration capture + NNCF, no gate, no manifest): the manifest's
    ``quantization`` and ``fake_quantize_count``. Benchmarks use it on random weights.

    With ``spec.vae_samples``, the same capture pass keeps that many final latents (for the
    INT8 VAE decoder). ``unet_xml``: the UNet IR to quantize instead of ``ir_dir``'s (a
    token-merging one; it calibrates on the inputs ``ir_dir``'s pipeline gives its UNet)."""
    t0 = time.perf_counter()
    captured = capture_inputs(ir_dir, prompts, spec, progress=progress)
    samples, latents = captured.unet, tuple(captured.latents)
    del captured
    capture_s = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    _copy_ir(ir_dir, out_dir, skip={UNET_XML.as_posix(), UNET_XML.with_suffix(".bin").as_posix()})
    fq = quantize_unet(unet_xml or ir_dir / UNET_XML, samples, out_dir / UNET_XML)
    del samples
    quantize_s = round(time.perf_counter() - t0, 3)
    return Candidate(
        quantization={
            **UNET_INT8_RECIPE,
            "samples": spec.samples,
            "calibration": {
                "prompts": prompts_name,
                "prompts_sha256": _prompts_sha256(prompts),
                **_calibration_record(spec),
            },
            "unchanged_parts": ["text_encoder", "vae_decoder", "vae_encoder", "tokenizer"],
        },
        fake_quantize_count=fq,
        durations_s={"calibration_capture": capture_s, "quantize": quantize_s},
        latents=latents,
    )


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
    plan: CandidatePlan,
    latents: tuple[Any, ...],
    progress: bool,
) -> VaeDecoderStage:
    """Quantize stage 5: the candidate's ``vae_decoder`` (model_build.vae_decoder), its record.

    ``latents`` are the final latents the UNet's capture pass kept (``int8`` only); when
    it kept none (the UNet was not quantized), this stage runs a capture pass of its own.
    """
    durations: dict[str, float] = {}
    calibration: dict[str, Any] | None = None
    samples = list(latents)
    if vae.needs_latents:
        captured_with = "the UNet's calibration renders"
        if not samples:
            t0 = time.perf_counter()
            samples = capture_inputs(
                ir_dir, plan.prompts, plan.calibration, progress, unet=False
            ).latents
            durations["vae_calibration_capture"] = round(time.perf_counter() - t0, 3)
            captured_with = "a capture pass of its own (the UNet was not calibrated)"
        calibration = {
            "prompts": plan.prompts_name,
            "prompts_sha256": _prompts_sha256(plan.prompts),
            **_calibration_record(plan.calibration, unet=False),
            "captured_with": captured_with,
        }
    result = make_vae_decoder(ir_dir, out_dir, vae, samples, calibration)
    if vae.kind != "sd":
        durations["vae_decoder"] = result.seconds
    return VaeDecoderStage(record=result.record, durations_s=durations)


def _candidate_fp16(ir_dir: Path, out_dir: Path, unet_xml: Path | None = None) -> Candidate:
    import openvino as ov

    xmls = _model_xmls(ir_dir)
    skip = set(xmls) | {x[: -len(".xml")] + ".bin" for x in xmls}
    _copy_ir(ir_dir, out_dir, skip=skip)
    core = ov.Core()
    for rel in xmls:
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        xml = unet_xml if unet_xml is not None and rel == UNET_XML.as_posix() else ir_dir / rel
        ov.save_model(core.read_model(str(xml)), str(out_dir / rel), compress_to_fp16=True)
    return Candidate(quantization={"method": "fp16 weight compression", "parts": sorted(xmls)})


def _candidate_hybrid(
    ir_dir: Path, out_dir: Path, spec: CalibrationSpec, prompts: list[str], prompts_name: str
) -> Candidate:
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
    return Candidate(
        quantization={
            "method": "optimum-intel hybrid: INT8 weights everywhere, INT8 activations in the UNet",
            "samples": spec.samples,
            "calibration": {
                "prompts": prompts_name,
                "prompts_sha256": _prompts_sha256(chosen),
                "prompts_used": len(chosen),
            },
        },
        fake_quantize_count=fq,
    )


def make_candidate(
    ir_dir: Path,
    out_dir: Path,
    precision: str,
    plan: CandidatePlan,
    progress: bool,
    unet_xml: Path | None = None,
) -> Candidate:
    """Quantize stage 4: the candidate's parts at ``precision`` (the VAE decoder: stage 5).

    ``unet_xml``: the UNet IR to make the candidate's UNet from instead of ``ir_dir``'s."""
    t0 = time.perf_counter()
    if precision == "int8":
        return int8_candidate(
            ir_dir, out_dir, plan.calibration, plan.prompts, plan.prompts_name, progress, unet_xml
        )
    if precision == "hybrid":
        made = _candidate_hybrid(ir_dir, out_dir, plan.calibration, plan.prompts, plan.prompts_name)
        return replace(made, durations_s={"quantize": round(time.perf_counter() - t0, 3)})
    if precision == "fp16":
        made = _candidate_fp16(ir_dir, out_dir, unet_xml)
        return replace(made, durations_s={"convert": round(time.perf_counter() - t0, 3)})
    _copy_ir(ir_dir, out_dir, skip=set())
    if unet_xml is not None:
        for suffix in (".xml", ".bin"):
            shutil.copy2(unet_xml.with_suffix(suffix), out_dir / UNET_XML.with_suffix(suffix))
    return Candidate(quantization=None)


def gate_candidate(
    ir_dir: Path, out_dir: Path, spec: EvalSpec, options: EvalOptions, progress: bool
) -> Judged:
    """Quantize stage 6: render the evaluation set with both; quality.json, the contact sheet.

    For a reference-domain model (its ``reference.json``) the gate also scores prompt
    adherence of both (model_build.reference.quality)."""
    t0 = time.perf_counter()
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
    return Judged(gate=gate, record=record, seconds=round(time.perf_counter() - t0, 3))


def _adherence_summary(adherence: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's prompt-adherence figures (reference-domain models only)."""
    if not adherence:
        return {}
    return {
        "adherence_fp32_pct": adherence["reference_f32"]["adherence_pct"],
        "adherence_pct": adherence["candidate_served"]["adherence_pct"],
        "adherence_drop_points": adherence["drop_points"],
    }


def _quantization_record(candidate: Candidate, vae: VaeDecoderOptions) -> dict[str, Any] | None:
    """The candidate's ``quantization``; a VAE decoder made by its own stage is no longer
    among the parts the precision step left unchanged."""
    quantization = candidate.quantization
    if vae.kind != "sd" and quantization and "unchanged_parts" in quantization:
        unchanged = [p for p in quantization["unchanged_parts"] if p != "vae_decoder"]
        return {**quantization, "unchanged_parts": unchanged}
    return quantization


def write_candidate_manifest(
    ir_dir: Path,
    out_dir: Path,
    label: str,
    plan: CandidatePlan,
    fields: dict[str, Any],
    durations: dict[str, float],
) -> str:
    """Quantize stage 7: the candidate's manifest.json (``fields``: what its stages
    recorded); its sha256."""
    source: dict[str, Any] = {"kind": "ir", "path": str(ir_dir.resolve())}
    if (ir_dir / MANIFEST_NAME).is_file():
        parent = read_manifest(ir_dir)
        source = parent.derived_source()
    write_manifest(
        out_dir,
        {
            "source": source,
            "precision": label,
            **fields,
            "build": {"durations_s": durations, "peak_rss_gib": peak_rss_gib()},
            "shape": plan.shape(),
            "model": model_info(ir_dir),
        },
    )
    return read_manifest(out_dir).sha256


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
    tome: TomeOptions | None = None,
) -> BuildResult:
    """Stage 2: fp32 IR artifact -> candidate at ``precision``, gated against the fp32 one,
    in the eight numbered "quantize stages" below.

    ``tome`` (ratio > 0): the candidate's UNet merges tokens (model_build.tome), made from
    the diffusers source at the candidate's static size; the fp32 reference it is gated
    against does not, so the gate judges token merging and the precision together.

    ``vae`` chooses the candidate's VAE decoder (model_build.vae_decoder; default: the SD
    decoder as the precision step made it). It is part of the candidate the gate judges.

    Raises QualityGateFailed (after writing quality.json, the contact sheet and a manifest
    that records the failure) when the candidate is below the thresholds and no override
    was given.
    """
    ir_dir, out_dir = Path(ir_dir), Path(out_dir)
    # 1. Check the inputs.
    check_quantize_inputs(ir_dir, out_dir, precision, tome)
    vae = (vae or VaeDecoderOptions()).with_model_taesd(model_folder_of(ir_dir))
    vae.check()
    evaluation = evaluation or EvalOptions()

    # 2. Resolve the calibration, the evaluation set and the prompts.
    plan = plan_candidate(ir_dir, precision, spec or CalibrationSpec(), prompts, evaluation, vae)

    # 3. Prepare the output folder.
    prepare_output_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 4. Make the candidate's parts at the precision (from a token-merging UNet with --tome).
    merging = None
    if tome is not None and tome.active:
        # The merging fp32 UNet lives beside OUT only while the candidate is made from it.
        with tempfile.TemporaryDirectory(prefix="tome-", dir=out_dir.parent) as scratch:
            spec = plan.calibration
            assert spec.width is not None and spec.height is not None
            merging = tome_unet(tome, ir_dir, spec.width, spec.height, Path(scratch))
            candidate = make_candidate(ir_dir, out_dir, precision, plan, progress, merging.xml)
    else:
        candidate = make_candidate(ir_dir, out_dir, precision, plan, progress)
    tome_fields: dict[str, Any] = {}
    if merging is not None:
        tome_fields["tome"] = merging.record
        candidate = replace(
            candidate, durations_s={"tome_export": merging.seconds, **candidate.durations_s}
        )

    # 5. Make its VAE decoder.
    decoder = vae_decoder_stage(ir_dir, out_dir, vae, plan, candidate.latents, progress)

    # 6. Gate it against the fp32 reference: quality.json and the contact sheet.
    judged = gate_candidate(ir_dir, out_dir, plan.evaluation, evaluation, progress)
    durations = {**candidate.durations_s, **decoder.durations_s, "evaluate": judged.seconds}

    # 7. Write its manifest, the gate's verdict included.
    label = precision_label({"int8": "int8-unet"}.get(precision, precision), vae.kind)
    manifest_sha256 = write_candidate_manifest(
        ir_dir,
        out_dir,
        label,
        plan,
        {
            **candidate.manifest_fields(),
            "quantization": _quantization_record(candidate, vae),
            "vae_decoder": decoder.record,
            "quality": judged.manifest_quality(),
            "speed": judged.record["speed"],
            **tome_fields,
        },
        durations,
    )

    # 8. Refuse a candidate below the gate without an override (its manifest says so).
    if not judged.gate.accepted:
        raise QualityGateFailed(
            f"{out_dir} failed the quality gate: {'; '.join(judged.gate.failures)}. Look at "
            f"{out_dir / CONTACT_SHEET_NAME}; pass --accept-below-gate REASON to keep it anyway "
            "(recorded in the manifest), or change the LCM_GATE_* thresholds"
        )
    return BuildResult(
        artifact=out_dir,
        manifest_sha256=manifest_sha256,
        precision=label,
        shape=plan.shape(),
        fake_quantize_count=candidate.fake_quantize_count,
        quality=judged.record,
        gate=judged.gate,
        durations_s=durations,
        peak_rss_gib=peak_rss_gib(),
        tome=tome_fields.get("tome"),
    )


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
    tome: float = 0.0,
) -> BuildResult:
    """Export then make and gate the candidate; the fp32 reference stays in ``work_dir``.

    ``tome`` > 0: the candidate's UNet merges that share of tokens (the reference's does not)."""
    # 1. Check the inputs before the export's minutes.
    _check_precision(precision)
    merging = TomeOptions(ratio=tome, source=source, revision=revision)
    _check_tome(merging, precision)
    if vae is not None:
        # A TAESD the model folder trained for itself (model_build/train_decoder.py).
        vae = vae.with_model_taesd(Path(source) if Path(source).is_dir() else None)
        vae.check()
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".fp32")

    # 2. Export the fp32 reference.
    exported = export_artifact(
        source,
        work_dir,
        revision=revision,
        overwrite=overwrite,
        source_record=source_record,
        progress=progress,
    )

    # 3. Make and gate the candidate.
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
        tome=merging,
    )
    return replace(result, durations_s={**exported.durations_s, **result.durations_s})
