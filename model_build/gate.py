"""The quality gate: a candidate must stay close enough to the full-precision reference.

Thresholds are settings (``LCM_GATE_*``). Below them the build fails and nothing is
published, unless the operator passes an explicit override, which the manifest records.
The defaults catch broken candidates (noise, saturation, a wrong tokenizer); tune them
for your model from the figures in quality.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_build.compare import Comparison, EvalSpec

QUALITY_NAME = "quality.json"
CONTACT_SHEET_NAME = "contact_sheet.png"


class GateSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LCM_", extra="ignore", frozen=True)

    gate_min_psnr_db: float = Field(default=20.0, ge=0)
    gate_min_ssim: float = Field(default=0.65, ge=-1, le=1)
    #: Every single image must keep at least this SSIM (catches one broken render).
    gate_min_ssim_worst: float = Field(default=0.40, ge=-1, le=1)
    gate_max_mean_abs_diff: float = Field(default=16.0, ge=0, le=255)
    #: Reference-domain models: how many points of prompt adherence the candidate may lose.
    gate_max_adherence_drop_points: float = Field(default=3.0, ge=0, le=100)


@dataclass
class GateResult:
    passed: bool
    failures: list[str]
    thresholds: dict[str, float]
    override: str | None = None
    accepted: bool = field(init=False)

    def __post_init__(self) -> None:
        self.accepted = self.passed or bool(self.override)


def judge(
    aggregate: dict[str, float],
    settings: GateSettings,
    override: str | None = None,
    extra_failures: list[str] | None = None,
) -> GateResult:
    """Check the figures against the thresholds; ``extra_failures`` come from other checks."""
    failures = list(extra_failures or [])
    psnr = aggregate["psnr_db_mean"]
    if math.isfinite(psnr) and psnr < settings.gate_min_psnr_db:
        failures.append(f"mean PSNR {psnr} dB < LCM_GATE_MIN_PSNR_DB={settings.gate_min_psnr_db}")
    if aggregate["ssim_mean"] < settings.gate_min_ssim:
        failures.append(
            f"mean SSIM {aggregate['ssim_mean']} < LCM_GATE_MIN_SSIM={settings.gate_min_ssim}"
        )
    if aggregate["ssim_min"] < settings.gate_min_ssim_worst:
        failures.append(
            f"worst SSIM {aggregate['ssim_min']} < "
            f"LCM_GATE_MIN_SSIM_WORST={settings.gate_min_ssim_worst}"
        )
    if aggregate["mean_abs_diff_mean"] > settings.gate_max_mean_abs_diff:
        failures.append(
            f"mean |diff| {aggregate['mean_abs_diff_mean']} > "
            f"LCM_GATE_MAX_MEAN_ABS_DIFF={settings.gate_max_mean_abs_diff}"
        )
    return GateResult(
        passed=not failures, failures=failures, thresholds=settings.model_dump(), override=override
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # identical images: PSNR is infinite
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def quality_record(
    comparison: Comparison, spec: EvalSpec, gate: GateResult, prompts_source: str
) -> dict[str, Any]:
    return _json_safe(
        {
            "reference": "fp32 export, f32 inference",
            "evaluation": {
                "prompts": prompts_source,
                "prompt_count": len(spec.prompts),
                "seeds": list(spec.seeds),
                "steps": spec.steps,
                "guidance_scale": spec.guidance_scale,
                "width": spec.width,
                "height": spec.height,
            },
            "aggregate": comparison.aggregate(),
            "per_image": [asdict(s) for s in comparison.scores],
            "speed": comparison.speed(),
            "gate": {
                "passed": gate.passed,
                "failures": gate.failures,
                "thresholds": gate.thresholds,
                "override": gate.override,
            },
        }
    )


def write_quality(folder: Path, record: dict[str, Any]) -> Path:
    path = folder / QUALITY_NAME
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
