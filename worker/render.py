"""Render a job: check it against the loaded pipeline, then one seeded call per image."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from producer.contract import Job
from producer.errors import InvalidJob
from worker.pipeline import ImagePipeline


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
    images: list[RenderedImage]
    durations_s: dict[str, float] = field(default_factory=dict)


def check_inputs(job: Job, pipeline: ImagePipeline) -> tuple[int, int]:
    """The job's size must be the compiled one (or unset, meaning the compiled one)."""
    width = job.width or pipeline.width
    height = job.height or pipeline.height
    if (width, height) != (pipeline.width, pipeline.height):
        raise InvalidJob(
            f"field 'width'/'height' got {width}x{height}; this worker's model serves "
            f"{pipeline.width}x{pipeline.height}: leave width and height unset or send "
            f"{pipeline.width}x{pipeline.height}"
        )
    return width, height


def render(job: Job, pipeline: ImagePipeline) -> Rendered:
    width, height = check_inputs(job, pipeline)
    images: list[RenderedImage] = []
    totals = {"text_encoder": 0.0, "unet": 0.0, "vae": 0.0}
    t0 = time.perf_counter()
    for index in range(job.num_images):
        seed = job.image_seed(index)
        pixels, times = pipeline.generate(job.prompt, seed, job.steps, job.guidance_scale)
        totals["text_encoder"] += times.text_encoder_s
        totals["unet"] += times.unet_s
        totals["vae"] += times.vae_s
        images.append(RenderedImage(index=index, seed=seed, pixels=pixels))
    totals["render"] = time.perf_counter() - t0
    return Rendered(job=job, width=width, height=height, images=images, durations_s=totals)
