"""The build stages, each returning a dataclass: export an artifact, quantize one, or both.

An artifact is a folder that openvino.genai's Text2ImagePipeline loads, plus
``manifest.json`` (see :mod:`model_build.manifest`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from model_build.calibration import CalibrationSpec, capture_unet_inputs
from model_build.compare import Comparison, compare_artifacts
from model_build.errors import BuildInputError
from model_build.export import check_source, export_ir, missing_ir_files, prepare_output_dir
from model_build.manifest import (
    MANIFEST_NAME,
    artifact_files,
    read_manifest,
    sha256_file,
    write_manifest,
)
from model_build.prompts import load_prompts
from model_build.quantize import UNET_INT8_RECIPE, quantize_unet

logger = logging.getLogger(__name__)

UNET_XML = Path("unet/openvino_model.xml")


@dataclass(frozen=True)
class BuildResult:
    artifact: Path
    manifest_sha256: str
    precision: str
    shape: dict[str, int]
    fake_quantize_count: int = 0
    comparison: Comparison | None = None
    durations_s: dict[str, float] = field(default_factory=dict)


def describe_source(source: str, revision: str) -> dict[str, Any]:
    path = Path(source)
    if path.exists():
        digest = hashlib.sha256()
        for rel in artifact_files(path):
            digest.update(rel.encode())
            digest.update(sha256_file(path / rel).encode())
        return {"kind": "local", "path": str(path.resolve()), "content_sha256": digest.hexdigest()}
    return {"kind": "hub", "id": source, "revision": revision}


def unet_config(ir_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((ir_dir / "unet" / "config.json").read_text())
    return config


def native_size(ir_dir: Path) -> int:
    """The image size the UNet was trained at (its latent sample_size times the VAE's 8)."""
    sample = unet_config(ir_dir).get("sample_size", 64)
    return int(sample[0] if isinstance(sample, list) else sample) * 8


def _model_info(ir_dir: Path) -> dict[str, Any]:
    cfg = unet_config(ir_dir)
    return {
        "unet_in_channels": cfg.get("in_channels"),
        "unet_time_cond_proj_dim": cfg.get("time_cond_proj_dim"),
        "unet_cross_attention_dim": cfg.get("cross_attention_dim"),
    }


def export_artifact(
    source: str, out_dir: Path, *, revision: str = "main", overwrite: bool = False
) -> BuildResult:
    """Stage 1: source -> full-precision (fp32) IR artifact with its manifest."""
    check_source(source)
    t0 = time.perf_counter()
    export_ir(source, out_dir, revision=revision, overwrite=overwrite)
    size = native_size(out_dir)
    shape = {"width": size, "height": size, "batch": 1}
    write_manifest(
        out_dir,
        {
            "source": describe_source(source, revision),
            "precision": "fp32",
            "export": {
                "tool": "optimum-intel main_export",
                "task": "text-to-image",
                "weight_format": "fp32",
            },
            "quantization": None,
            "fake_quantize_count": 0,
            "shape": shape,
            "model": _model_info(out_dir),
        },
    )
    manifest = read_manifest(out_dir)
    return BuildResult(
        artifact=out_dir,
        manifest_sha256=manifest.sha256,
        precision="fp32",
        shape=shape,
        durations_s={"export": round(time.perf_counter() - t0, 3)},
    )


def _check_quantize_inputs(ir_dir: Path, out_dir: Path, overwrite: bool) -> None:
    missing = missing_ir_files(ir_dir)
    if missing:
        raise BuildInputError(
            f"ir={str(ir_dir)!r} is not an exported IR folder (missing {', '.join(missing)}); "
            "make one with `lcm-build export SOURCE DIR`"
        )
    if out_dir.resolve() == ir_dir.resolve():
        raise BuildInputError(
            "the quantized artifact needs its own folder: OUT must differ from IR"
        )
    prepare_output_dir(out_dir, overwrite)


def quantize_artifact(
    ir_dir: Path,
    out_dir: Path,
    *,
    spec: CalibrationSpec | None = None,
    prompts: str | Path = "calibration",
    overwrite: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Stage 2: fp32 IR artifact -> INT8-UNet artifact, checked against the fp32 one."""
    ir_dir, out_dir = Path(ir_dir), Path(out_dir)
    _check_quantize_inputs(ir_dir, out_dir, overwrite)
    size = native_size(ir_dir)
    spec = spec or CalibrationSpec()
    spec = replace(spec, width=spec.width or size, height=spec.height or size)
    spec.check()
    assert spec.width is not None and spec.height is not None
    prompt_list = load_prompts(prompts)
    durations: dict[str, float] = {}

    t0 = time.perf_counter()
    samples = capture_unet_inputs(ir_dir, prompt_list, spec, progress=progress)
    durations["calibration_capture"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    for rel in artifact_files(ir_dir):
        if Path(rel).parent == UNET_XML.parent and Path(rel).name.startswith("openvino_model."):
            continue
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ir_dir / rel, target)
    fq = quantize_unet(ir_dir / UNET_XML, samples, out_dir / UNET_XML)
    del samples
    durations["quantize"] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    comparison = compare_artifacts(
        ir_dir,
        out_dir,
        spec.width,
        spec.height,
        steps=spec.steps,
        guidance_scale=spec.guidance_scale,
        progress=progress,
    )
    durations["compare"] = round(time.perf_counter() - t0, 3)

    source: dict[str, Any] = {"kind": "ir", "path": str(ir_dir.resolve())}
    if (ir_dir / MANIFEST_NAME).is_file():
        parent = read_manifest(ir_dir)
        source = {**parent.data.get("source", {}), "fp32_manifest_sha256": parent.sha256}
    shape = {"width": spec.width, "height": spec.height, "batch": 1}
    prompts_text = "\n".join(prompt_list).encode()
    write_manifest(
        out_dir,
        {
            "source": source,
            "precision": "int8-unet",
            "quantization": {
                **UNET_INT8_RECIPE,
                "samples": spec.samples,
                "calibration": {
                    "prompts": str(prompts),
                    "prompts_sha256": hashlib.sha256(prompts_text).hexdigest(),
                    "prompts_used": spec.prompts_needed(),
                    "width": spec.width,
                    "height": spec.height,
                    "steps": spec.steps,
                    "guidance_scale": spec.guidance_scale,
                    "seed": spec.seed,
                    "precision": spec.precision,
                },
                "unchanged_parts": ["text_encoder", "vae_decoder", "vae_encoder", "tokenizer"],
            },
            "fake_quantize_count": fq,
            "check_vs_fp32": comparison.as_dict(),
            "shape": shape,
            "model": _model_info(ir_dir),
        },
    )
    manifest = read_manifest(out_dir)
    return BuildResult(
        artifact=out_dir,
        manifest_sha256=manifest.sha256,
        precision="int8-unet",
        shape=shape,
        fake_quantize_count=fq,
        comparison=comparison,
        durations_s=durations,
    )


def build_artifact(
    source: str,
    out_dir: Path,
    *,
    work_dir: Path | None = None,
    revision: str = "main",
    spec: CalibrationSpec | None = None,
    prompts: str | Path = "calibration",
    overwrite: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Export then quantize: the fp32 artifact is kept in ``work_dir`` (default OUT.fp32)."""
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".fp32")
    exported = export_artifact(source, work_dir, revision=revision, overwrite=overwrite)
    result = quantize_artifact(
        work_dir, out_dir, spec=spec, prompts=prompts, overwrite=overwrite, progress=progress
    )
    return BuildResult(
        **{
            **result.__dict__,
            "durations_s": {**exported.durations_s, **result.durations_s},
        }
    )
