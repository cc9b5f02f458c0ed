"""Check a job once against what the worker serves, then render it: one seeded call per image."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lcm_fleet.contract import Job
from lcm_fleet.errors import InvalidJob
from worker.durations import JobDurations
from worker.render.pipeline import CompiledShape, ImagePipeline
from worker.render.sizes import PipelineSet, Size

S = TypeVar("S", bound=CompiledShape)


@dataclass(frozen=True)
class CheckedJob(Generic[S]):
    """A job checked against the size class it renders in; what comes after trusts it."""

    job: Job
    size_class: S
    width: int
    height: int
    guidance_scale: float

    @property
    def size(self) -> Size:
        return self.width, self.height


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
    #: The render stages: text_encoder, unet, vae, render.
    durations: JobDurations = field(default_factory=JobDurations)


def check_job(job: Job, classes: PipelineSet[S]) -> CheckedJob[S]:
    """The job's size class among those served, and the job checked against it."""
    return check_inputs(job, classes.for_job(job))  # InvalidJob: a size not served


def check_inputs(job: Job, shape: S) -> CheckedJob[S]:
    """Size: the compiled one (or unset). Guidance: the model's default when unset; for a
    CFG model, on the same side of 1.0 as the compiled guidance."""
    width = job.width or shape.width
    height = job.height or shape.height
    if (width, height) != (shape.width, shape.height):
        raise InvalidJob(
            f"field 'width'/'height' got {width}x{height}; this worker's model serves "
            f"{shape.width}x{shape.height}: leave width and height unset or send "
            f"{shape.width}x{shape.height}"
        )
    guidance = job.guidance_scale if job.guidance_scale is not None else shape.guidance_scale
    if shape.cfg and (guidance > 1.0) != (shape.guidance_scale > 1.0):
        allowed = "above 1.0" if shape.guidance_scale > 1.0 else "exactly 1.0"
        raise InvalidJob(
            f"field 'guidance_scale' got {guidance}; this worker's model uses classifier-free "
            f"guidance (SD1.5 + LCM-LoRA) and is compiled for guidance_scale "
            f"{shape.guidance_scale}: send a value {allowed}, or leave it unset"
        )
    return CheckedJob(job, shape, width, height, guidance)


def render(
    job: Job | CheckedJob[Any],
    pipeline: ImagePipeline,
    on_image: Callable[[RenderedImage, float], None] | None = None,
    on_step: Callable[[int, int, int, int], bool] | None = None,
) -> Rendered:
    """Render every image of ``job``; ``on_image(image, guidance)`` sees each one at once.

    The worker passes the job it checked (worker/job.py); a plain Job (tools, tests) is
    checked against ``pipeline`` first. ``on_step(image, images, step, steps)`` (1-based)
    sees each denoising step the pipeline reports; True stops the render there.
    """
    checked = check_inputs(job, pipeline) if isinstance(job, Job) else job
    job, guidance = checked.job, checked.guidance_scale
    images: list[RenderedImage] = []
    durations = JobDurations()
    t0 = time.perf_counter()
    for index in range(job.num_images):
        seed = job.image_seed(index)
        if on_step is None:
            pixels, times = pipeline.generate(job.prompt, seed, job.steps, guidance)
        else:
            step_of_image = functools.partial(on_step, index + 1, job.num_images)
            pixels, times = pipeline.generate(
                job.prompt, seed, job.steps, guidance, on_step=step_of_image
            )
        durations = durations.plus(times)
        image = RenderedImage(index=index, seed=seed, pixels=pixels)
        images.append(image)
        if on_image is not None:
            on_image(image, guidance)
    return Rendered(
        job=job,
        width=checked.width,
        height=checked.height,
        guidance_scale=guidance,
        images=images,
        durations=durations.but(render=time.perf_counter() - t0),
    )
