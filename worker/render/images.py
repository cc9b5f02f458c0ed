"""Render a job: check it against the loaded pipeline, then one seeded call per image."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lcm_fleet.contract import Job
from lcm_fleet.errors import InvalidJob
from worker.render.pipeline import CompiledShape, ImagePipeline


@dataclass(frozen=True)
class RenderedImage:
    index: int
    seed: int
    pixels: Any  # H x W x 3 uint8


@dataclass(frozen=True)
class Rendered:
    job: Job
    width: int
    height: int
    guidance_scale: float
    images: list[RenderedImage]
    durations_s: dict[str, float] = field(default_factory=dict)


def check_inputs(job: Job, pipeline: CompiledShape) -> tuple[int, int, float]:
    """Size: the compiled one (or unset). Guidance: the model's default when unset; for a
    CFG model, on the same side of 1.0 as the compiled guidance."""
    width = job.width or pipeline.width
    height = job.height or pipeline.height
    if (width, height) != (pipeline.width, pipeline.height):
        raise InvalidJob(
            f"field 'width'/'height' got {width}x{height}; this worker's model serves "
            f"{pipeline.width}x{pipeline.height}: leave width and height unset or send "
            f"{pipeline.width}x{pipeline.height}"
        )
    guidance = job.guidance_scale if job.guidance_scale is not None else pipeline.guidance_scale
    if pipeline.cfg and (guidance > 1.0) != (pipeline.guidance_scale > 1.0):
        allowed = "above 1.0" if pipeline.guidance_scale > 1.0 else "exactly 1.0"
        raise InvalidJob(
            f"field 'guidance_scale' got {guidance}; this worker's model uses classifier-free "
            f"guidance (SD1.5 + LCM-LoRA) and is compiled for guidance_scale "
            f"{pipeline.guidance_scale}: send a value {allowed}, or leave it unset"
        )
    return width, height, guidance


def render(
    job: Job,
    pipeline: ImagePipeline,
    on_image: Callable[[RenderedImage, float], None] | None = None,
) -> Rendered:
    """Render every image of ``job``; ``on_image(image, guidance)`` sees each one at once."""
    width, height, guidance = check_inputs(job, pipeline)
    images: list[RenderedImage] = []
    totals = {"text_encoder": 0.0, "unet": 0.0, "vae": 0.0}
    t0 = time.perf_counter()
    for index in range(job.num_images):
        seed = job.image_seed(index)
        pixels, times = pipeline.generate(job.prompt, seed, job.steps, guidance)
        totals["text_encoder"] += times.text_encoder_s
        totals["unet"] += times.unet_s
        totals["vae"] += times.vae_s
        image = RenderedImage(index=index, seed=seed, pixels=pixels)
        images.append(image)
        if on_image is not None:
            on_image(image, guidance)
    totals["render"] = time.perf_counter() - t0
    return Rendered(
        job=job,
        width=width,
        height=height,
        guidance_scale=guidance,
        images=images,
        durations_s=totals,
    )
