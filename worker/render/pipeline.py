"""The compiled openvino.genai pipeline, one per size class, each with a static shape.

Nothing here runs at import time. The worker's render process (worker/render/process.py)
compiles its pipelines once when it starts, with the compile cache on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from worker.errors import ModelLoadError, RenderCancelled
from worker.model.artifact import ServedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageTimes:
    text_encoder_s: float
    unet_s: float
    vae_s: float
    total_s: float


class CompiledShape(Protocol):
    """What a job is checked against: the compiled size and guidance regime."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def guidance_scale(self) -> float: ...
    @property
    def cfg(self) -> bool: ...


#: ``on_step(step, steps)`` after each denoising step (1-based); True stops the render.
StepCallback = Callable[[int, int], bool]


class ImagePipeline(CompiledShape, Protocol):
    """What rendering needs from a pipeline (the genai one, or a fake in fast tests)."""

    def generate(
        self,
        prompt: str,
        seed: int,
        steps: int,
        guidance_scale: float,
        deadline: float | None = None,
        on_step: StepCallback | None = None,
    ) -> tuple[Any, StageTimes]:
        """Render one image: (H x W x 3 uint8 array, stage times).

        ``deadline`` (time.monotonic()): stop at the next denoising step once it has
        passed and raise :class:`worker.errors.RenderCancelled`; likewise (``requested``)
        when ``on_step`` returns True.
        """
        ...


def compile_devices(device: str, text_encoder_device: str | None) -> tuple[str, ...]:
    """genai's compile takes one device, or (text encoder, denoiser, VAE) devices."""
    if text_encoder_device and text_encoder_device != device:
        return (text_encoder_device, device, device)
    return (device,)


class GenaiPipeline:
    """openvino.genai Text2ImagePipeline, batch 1, compiled for one static size."""

    def __init__(
        self,
        model: ServedModel,
        device: str,
        cache_dir: str,
        precision: str,
        cpu_threads: int | None = None,
        cpu_pinning: bool | None = None,
        text_encoder_device: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        import openvino_genai as ov_genai

        self._ov_genai = ov_genai
        self.width, self.height = width or model.width, height or model.height
        self.guidance_scale, self.cfg = model.guidance_scale, model.cfg
        config: dict[str, Any] = {}
        if cache_dir:
            config["CACHE_DIR"] = cache_dir
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        if device.startswith("CPU"):
            if cpu_threads:
                config["INFERENCE_NUM_THREADS"] = cpu_threads
            if cpu_pinning is not None:
                config["ENABLE_CPU_PINNING"] = cpu_pinning
        t0 = time.perf_counter()
        try:
            pipe = ov_genai.Text2ImagePipeline(str(model.path))
            # Batch 1: a job's N images are N seeded calls (genai 2026.4 breaks LCM when
            # reshaped for num_images_per_prompt > 1). For an LCM the guidance is an UNet
            # input; for a CFG UNet it sets the batch (2 when guidance_scale > 1).
            pipe.reshape(1, self.height, self.width, self.guidance_scale)
            pipe.compile(*compile_devices(device, text_encoder_device), config=config)
        except Exception as e:
            raise ModelLoadError(f"could not compile {model.path} on {device}: {e}") from e
        self._pipe = pipe
        self.compile_s = time.perf_counter() - t0
        logger.info(
            "pipeline compiled on %s for %dx%d in %.1fs (cache %s, precision %s)",
            device,
            self.width,
            self.height,
            self.compile_s,
            cache_dir or "off",
            precision,
        )

    def generate(
        self,
        prompt: str,
        seed: int,
        steps: int,
        guidance_scale: float,
        deadline: float | None = None,
        on_step: StepCallback | None = None,
    ) -> tuple[Any, StageTimes]:
        import numpy as np

        kwargs: dict[str, Any] = {}
        cancelled: list[int] = []
        requested: list[bool] = []
        if deadline is not None or on_step is not None:

            def callback(step: int, num_steps: int, _latent: Any) -> bool:
                # genai calls this after each denoising step; True stops the loop.
                if on_step is not None and on_step(step + 1, num_steps):
                    cancelled.append(step)
                    requested.append(True)
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    cancelled.append(step)
                    return True
                return False

            kwargs["callback"] = callback
        t0 = time.perf_counter()
        out = self._pipe.generate(
            prompt,
            width=self.width,
            height=self.height,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=self._ov_genai.CppStdGenerator(seed),
            **kwargs,
        )
        total = time.perf_counter() - t0
        if cancelled:
            why = "the job was cancelled" if requested else "the deadline passed"
            raise RenderCancelled(
                f"render stopped after denoising step {cancelled[0] + 1} of {steps}: {why}",
                requested=bool(requested),
            )
        pixels = np.array(out.data[0], copy=True)
        m = self._pipe.get_performance_metrics()
        text_ms = sum(m.get_text_encoder_infer_duration().values())
        unet_us = sum(m.raw_metrics.unet_inference_durations)
        vae_ms = m.get_vae_decoder_infer_duration()
        return pixels, StageTimes(
            text_encoder_s=text_ms / 1e3, unet_s=unet_us / 1e6, vae_s=vae_ms / 1e3, total_s=total
        )
