"""Prompt adherence in model_build's quality report, for models of the reference domain.

An exported artifact of the reference model carries its ``reference.json``. For such an
artifact the build calibrates on the training captions, gates PSNR/SSIM on evaluation
captions of the domain, and also scores prompt adherence of the full-precision reference
(f32) and of the candidate (as a worker serves it: the device's default precision, and at
f32 to isolate the quantization): the candidate may lose at most
``LCM_GATE_MAX_ADHERENCE_DROP_POINTS`` points.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from model_build.reference.evaluate import EvalSettings, reference_record, render_genai, split_of
from model_build.reference.scorer import score_renders

logger = logging.getLogger(__name__)

#: Captions of the domain the PSNR/SSIM comparison renders (the adherence check renders all).
GATE_PROMPTS = 20


def is_reference(ir_dir: Path) -> bool:
    return reference_record(ir_dir) is not None


def reference_prompts(ir_dir: Path) -> dict[str, list[str]] | None:
    """The domain's calibration (training) and evaluation captions, or None if not a reference."""
    if not is_reference(ir_dir):
        return None
    split = split_of(ir_dir)
    evaluation = split.eval_scenes()
    step = max(1, len(evaluation) // GATE_PROMPTS)
    return {
        "calibration": [s.caption for s in split.train_scenes()],
        "eval": [s.caption for s in evaluation[::step][:GATE_PROMPTS]],
    }


def adherence_check(
    ir_dir: Path,
    candidate_dir: Path,
    max_drop_points: float,
    steps: int,
    guidance_scale: float,
) -> dict[str, Any] | None:
    """Adherence of the fp32 reference and the candidate; None when ``ir_dir`` is not a
    reference-domain artifact. ``failures`` is empty when the candidate is close enough."""
    record = reference_record(ir_dir)
    if record is None:
        return None
    split = split_of(ir_dir)
    scenes = split.eval_scenes()
    figures: dict[str, Any] = {}
    for label, folder, precision in (
        ("reference_f32", ir_dir, "f32"),
        ("candidate_f32", candidate_dir, "f32"),
        ("candidate_served", candidate_dir, "default"),
    ):
        settings = EvalSettings(steps=steps, guidance_scale=guidance_scale, precision=precision)
        renders = render_genai(folder, scenes, settings, size=int(record["image_size"]))
        report = score_renders(renders, split.held_out)
        figures[label] = {
            "adherence_pct": report.adherence_pct,
            "held_out_pct": report.held_out.get("adherence_pct"),
            "seen_pct": report.seen.get("adherence_pct"),
            "attribute_pct": report.attribute_pct,
        }
    reference = figures["reference_f32"]["adherence_pct"]
    worst = min(
        figures["candidate_f32"]["adherence_pct"], figures["candidate_served"]["adherence_pct"]
    )
    drop = round(reference - worst, 2)
    failures = []
    if drop > max_drop_points:
        failures.append(
            f"prompt adherence {worst}% is {drop} points below the fp32 reference's {reference}% "
            f"(> LCM_GATE_MAX_ADHERENCE_DROP_POINTS={max_drop_points})"
        )
    logger.info("prompt adherence: fp32 %.1f%%, candidate %s", reference, figures)
    return {
        "captions": len(scenes),
        "seeds": list(EvalSettings().seeds),
        "images_each": len(scenes) * len(EvalSettings().seeds),
        "steps": steps,
        "guidance_scale": guidance_scale,
        **figures,
        "drop_points": drop,
        "max_drop_points": max_drop_points,
        "failures": failures,
    }
