"""The compiled openvino.genai pipeline: loaded and compiled once per worker process.

Nothing here runs at import time. ``process_pipelines()`` builds the pipelines on first
use in a process (one per size class; the Celery worker calls it from
``worker_process_init``, so the first job does not pay for the compile), each with a
static shape and a compile cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from worker.artifact import ServedModel
from worker.errors import ModelLoadError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class StageTimes:
    text_encoder_s: float
    unet_s: float
    vae_s: float
    total_s: float


class ImagePipeline(Protocol):
    """What rendering needs from a pipeline (the genai one, or a fake in fast tests)."""

    width: int
    height: int
    guidance_scale: float
    cfg: bool

    def generate(
        self, prompt: str, seed: int, steps: int, guidance_scale: float
    ) -> tuple[Any, StageTimes]:
        """Render one image: (H x W x 3 uint8 array, stage times)."""
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
        self, prompt: str, seed: int, steps: int, guidance_scale: float
    ) -> tuple[Any, StageTimes]:
        import numpy as np

        t0 = time.perf_counter()
        out = self._pipe.generate(
            prompt,
            width=self.width,
            height=self.height,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=self._ov_genai.CppStdGenerator(seed),
        )
        total = time.perf_counter() - t0
        pixels = np.array(out.data[0], copy=True)
        m = self._pipe.get_performance_metrics()
        text_ms = sum(m.get_text_encoder_infer_duration().values())
        unet_us = sum(m.raw_metrics.unet_inference_durations)
        vae_ms = m.get_vae_decoder_infer_duration()
        return pixels, StageTimes(
            text_encoder_s=text_ms / 1e3, unet_s=unet_us / 1e6, vae_s=vae_ms / 1e3, total_s=total
        )


_lock = threading.Lock()
_loaded: Any = None


def process_pipelines(loader: Callable[[], T]) -> T:
    """This process's pipelines, built by ``loader()`` the first time they are asked for."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = loader()
        return _loaded


def reset_process_pipelines() -> None:
    global _loaded
    with _lock:
        _loaded = None
