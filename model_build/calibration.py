"""Calibration data, captured while the pipeline renders prompts: UNet inputs, final latents.

The exported full-precision pipeline renders each prompt at the target size and step
count (latents only: the VAE is not run); every UNet call's inputs are copied, and each
render's final denoised latents, which are what the VAE decoder decodes (the INT8 VAE
decoder calibrates on them). ``samples`` UNet calls are kept, i.e. ``ceil(samples /
steps)`` prompts, and ``vae_samples`` final latents, one per prompt: one capture pass
renders as many prompts as the larger of the two needs.
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
    #: Final latents to keep for the VAE decoder's calibration (one per prompt; 0: none).
    vae_samples: int = 0

    def check(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is None:
                raise BuildInputError(f"{name} is not set: pass --{name} or leave both unset")
            if value % 8 or value < 64:
                raise BuildInputError(f"{name}={value} must be a multiple of 8 and at least 64")
        if self.samples < 1:
            raise BuildInputError(f"samples={self.samples} must be at least 1 (default 200)")
        if self.vae_samples < 0:
            raise BuildInputError(f"vae_samples={self.vae_samples} must be at least 0")
        if not 1 <= self.steps <= 8:
            raise BuildInputError(f"steps={self.steps} must be from 1 to 8 (LCM; default 4)")
        if self.guidance_scale is not None and not 1.0 <= self.guidance_scale <= 20.0:
            raise BuildInputError(
                f"guidance_scale={self.guidance_scale} must be from 1.0 to 20.0 "
                "(default: 8.0 for an LCM, 1.0 for an LCM-LoRA model)"
            )

    def prompts_needed(self, unet: bool = True) -> int:
        """Prompts one capture pass renders (for the UNet's samples and/or the VAE's)."""
        return max(math.ceil(self.samples / self.steps) if unet else 0, self.vae_samples)


class _CapturingRequest:
    """Stands in for the UNet's compiled model: copies each call's inputs, then delegates."""

    def __init__(self, compiled: Any, store: list[dict[str, Any]]) -> None:
        self._compiled = compiled
        self._store = store

    def __call__(self, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        import numpy as np

        self._store.append({name: np.array(value, copy=True) for name, value in inputs.items()})
        return self._compiled(inputs, *args, **kwargs)


@dataclass
class CapturedInputs:
    #: ``spec.samples`` UNet input dicts (empty when the UNet was not captured).
    unet: list[dict[str, Any]]
    #: ``spec.vae_samples`` final denoised latents, one float32 array per render.
    latents: list[Any]


def capture_unet_inputs(
    ir_dir: Path, prompts: list[str], spec: CalibrationSpec, progress: bool = True
) -> list[dict[str, Any]]:
    """Render prompts with the IR pipeline and return ``spec.samples`` UNet input dicts."""
    return capture_inputs(ir_dir, prompts, spec, progress).unet


def capture_inputs(
    ir_dir: Path,
    prompts: list[str],
    spec: CalibrationSpec,
    progress: bool = True,
    *,
    unet: bool = True,
) -> CapturedInputs:
    """One capture pass: UNet inputs (unless ``unet`` is False) and final latents."""
    spec.check()
    if spec.guidance_scale is None:
        raise QuantizeError("the calibration guidance scale must be resolved before capture")
    if not unet and not spec.vae_samples:
        raise QuantizeError("nothing to capture: neither UNet inputs nor VAE latents")
    import json

    import numpy as np
    import torch
    from optimum.intel import OVLatentConsistencyModelPipeline, OVStableDiffusionPipeline
    from tqdm import tqdm

    needed = spec.prompts_needed(unet)
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
    store: list[dict[str, Any]] = []
    if unet:
        model = pipe.unet
        if not hasattr(model, "request") or model.request is None:
            raise QuantizeError(
                "cannot capture UNet inputs: this optimum-intel has no compiled `unet.request`; "
                "use the optimum-intel version pinned in pyproject.toml"
            )
        model.request = _CapturingRequest(model.request, store)
    latents: list[Any] = []
    bar = tqdm(chosen, desc="calibration capture", unit="prompt", disable=not progress)
    for i, prompt in enumerate(bar):
        out = pipe(
            [prompt],
            num_inference_steps=spec.steps,
            guidance_scale=spec.guidance_scale,
            width=spec.width,
            height=spec.height,
            generator=torch.Generator().manual_seed(spec.seed + i),
            output_type="latent",
        )
        if len(latents) < spec.vae_samples:
            latents.append(np.array(out.images, dtype=np.float32, copy=True))
    del pipe
    if unet and len(store) < spec.samples:
        raise QuantizeError(
            f"captured {len(store)} UNet calls, expected {spec.samples}: the pipeline ran fewer "
            "UNet steps than requested"
        )
    logger.info(
        "captured %d UNet input samples and %d final latents from %d prompts",
        spec.samples if unet else 0,
        len(latents),
        needed,
    )
    return CapturedInputs(unet=store[: spec.samples] if unet else [], latents=latents)
