"""Calibration data for the UNet: its inputs, captured while the pipeline renders prompts.

The exported full-precision pipeline renders each prompt at the target size and step
count (latents only: the VAE does not matter to the UNet); every UNet call's inputs
are copied. ``samples`` UNet calls are kept, i.e. ``ceil(samples / steps)`` prompts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_build.errors import BuildInputError, QuantizeError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSpec:
    #: Target size; None means the model's native size (resolved by the build).
    width: int | None = None
    height: int | None = None
    samples: int = 200
    steps: int = 4
    #: None: 8.0 for an LCM UNet (guidance embedding), 1.0 for a CFG UNet (LCM-LoRA).
    guidance_scale: float | None = None
    seed: int = 0
    #: OpenVINO inference precision while capturing: f32 reproduces PyTorch's activations.
    precision: str = "f32"

    def check(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is None:
                raise BuildInputError(f"{name} is not set: pass --{name} or leave both unset")
            if value % 8 or value < 64:
                raise BuildInputError(f"{name}={value} must be a multiple of 8 and at least 64")
        if self.samples < 1:
            raise BuildInputError(f"samples={self.samples} must be at least 1 (default 200)")
        if not 1 <= self.steps <= 8:
            raise BuildInputError(f"steps={self.steps} must be from 1 to 8 (LCM; default 4)")
        if self.guidance_scale is not None and not 1.0 <= self.guidance_scale <= 20.0:
            raise BuildInputError(
                f"guidance_scale={self.guidance_scale} must be from 1.0 to 20.0 "
                "(default: 8.0 for an LCM, 1.0 for an LCM-LoRA model)"
            )

    def prompts_needed(self) -> int:
        return math.ceil(self.samples / self.steps)


class _CapturingRequest:
    """Stands in for the UNet's compiled model: copies each call's inputs, then delegates."""

    def __init__(self, compiled: Any, store: list[dict[str, Any]]) -> None:
        self._compiled = compiled
        self._store = store

    def __call__(self, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        import numpy as np

        self._store.append({name: np.array(value, copy=True) for name, value in inputs.items()})
        return self._compiled(inputs, *args, **kwargs)


def capture_unet_inputs(
    ir_dir: Path, prompts: list[str], spec: CalibrationSpec, progress: bool = True
) -> list[dict[str, Any]]:
    """Render prompts with the IR pipeline and return ``spec.samples`` UNet input dicts."""
    spec.check()
    if spec.guidance_scale is None:
        raise QuantizeError("the calibration guidance scale must be resolved before capture")
    import json

    import torch
    from optimum.intel import OVLatentConsistencyModelPipeline, OVStableDiffusionPipeline
    from tqdm import tqdm

    needed = spec.prompts_needed()
    chosen = [prompts[i % len(prompts)] for i in range(needed)]
    unet_config = json.loads((Path(ir_dir) / "unet" / "config.json").read_text())
    # An LCM UNet takes the guidance as an embedding; an SD1.5 UNet with a fused LCM-LoRA
    # has none, and optimum's LCM pipeline fails on it: the SD pipeline runs it (CFG).
    pipeline_class = (
        OVLatentConsistencyModelPipeline
        if unet_config.get("time_cond_proj_dim")
        else OVStableDiffusionPipeline
    )
    pipe = pipeline_class.from_pretrained(
        str(ir_dir), ov_config={"INFERENCE_PRECISION_HINT": spec.precision}, compile=True
    )
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    if not hasattr(unet, "request") or unet.request is None:
        raise QuantizeError(
            "cannot capture UNet inputs: this optimum-intel has no compiled `unet.request`; "
            "use the optimum-intel version pinned in pyproject.toml"
        )
    store: list[dict[str, Any]] = []
    unet.request = _CapturingRequest(unet.request, store)
    bar = tqdm(chosen, desc="calibration capture", unit="prompt", disable=not progress)
    for i, prompt in enumerate(bar):
        pipe(
            [prompt],
            num_inference_steps=spec.steps,
            guidance_scale=spec.guidance_scale,
            width=spec.width,
            height=spec.height,
            generator=torch.Generator().manual_seed(spec.seed + i),
            output_type="latent",
        )
    del pipe
    if len(store) < spec.samples:
        raise QuantizeError(
            f"captured {len(store)} UNet calls, expected {spec.samples}: the pipeline ran fewer "
            "UNet steps than requested"
        )
    logger.info("captured %d UNet input samples from %d prompts", spec.samples, needed)
    return store[: spec.samples]
