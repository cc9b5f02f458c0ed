"""The messages on the pipe between a worker and its render process, one frozen type per kind.

The worker sends a :class:`RenderRequest` per image, :class:`CancelRender` to stop it at
its next step, and :class:`Stop` once. The render process answers its start with
:class:`Ready`, :class:`Refused` or :class:`LoadFailed`, and each request with
:class:`StepDone` messages while it renders, then :class:`Image`, :class:`Cancelled` or
:class:`RenderFailed`. Both
sides ``match`` on the type; every message pickles (``multiprocessing`` pipes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.render.memory import PipelineMemory
from worker.render.pipeline import StageTimes
from worker.render.sizes import Size

# ---------------------------------------------------------------- worker -> render process


@dataclass(frozen=True)
class RenderRequest:
    """Render one image with the pipeline of ``size``."""

    size: Size
    prompt: str
    seed: int
    steps: int
    guidance_scale: float
    #: time.monotonic() after which the render stops at the next denoising step.
    soft_deadline: float | None
    #: Send StepDone while rendering (and heed CancelRender).
    report_steps: bool = False


@dataclass(frozen=True)
class Stop:
    """Exit after the current render."""


@dataclass(frozen=True)
class CancelRender:
    """Stop the running render at its next denoising step (the job was cancelled)."""


ToRenderProcess = RenderRequest | Stop | CancelRender

# ---------------------------------------------------------------- render process -> worker


@dataclass(frozen=True)
class LoadReport:
    """What a render process reports once its pipelines are compiled and warmed up."""

    pid: int
    loads: tuple[PipelineMemory, ...]
    rss_gib: float

    @property
    def total_gib(self) -> float:
        return sum(m.rss_growth_gib for m in self.loads)


@dataclass(frozen=True)
class Ready:
    """The pipelines are compiled (and warmed up); renders may come."""

    report: LoadReport


@dataclass(frozen=True)
class Refused:
    """The settings cannot work (a StartupError, e.g. over the memory budget); the process ends."""

    reason: str


@dataclass(frozen=True)
class LoadFailed:
    """The pipelines could not be loaded (a ModelLoadError for the worker); the process ends."""

    reason: str


@dataclass(frozen=True)
class Image:
    """One rendered image."""

    pixels: Any  # H x W x 3 uint8
    times: StageTimes


@dataclass(frozen=True)
class StepDone:
    """A denoising step of the running render ended (sent at most every STEP_REPORT_S)."""

    step: int
    steps: int


@dataclass(frozen=True)
class Cancelled:
    """The render stopped at a denoising step: the request's soft deadline passed, or the
    worker sent :class:`CancelRender` (``requested``)."""

    reason: str
    requested: bool = False


@dataclass(frozen=True)
class RenderFailed:
    """The render raised; the render process keeps serving."""

    reason: str


FromRenderProcess = Ready | Refused | LoadFailed | StepDone | Image | Cancelled | RenderFailed
