"""Size classes: the sizes a worker serves, one compiled pipeline each, and job routing.

A job that names its size is queued on that size's queue (``lcm.render.512x768``); a
worker consumes the queue of every size it serves plus the default queue, each with its
bulk queue beside it (``lcm.render.512x768.bulk``, taken after the interactive ones:
lcm_fleet/consuming/order.py), and renders
each job with the pipeline compiled for the job's size. Jobs without a size take the
worker's default size, the first one listed. Light module: no OpenVINO.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from lcm_fleet.contract import (
    SIZE_MAX,
    SIZE_MIN,
    SIZE_MULTIPLE,
    Job,
    JobClass,
    class_queue,
    size_queue,
)
from lcm_fleet.errors import InvalidJob

Size = tuple[int, int]
P = TypeVar("P")


def format_size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def format_sizes(sizes: Iterable[Size]) -> str:
    return ",".join(format_size(s) for s in sizes)


def _one_size(item: object) -> Size:
    if isinstance(item, str):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"size {item.strip()!r} is not WIDTHxHEIGHT; write e.g. 512x768")
        return int(parts[0]), int(parts[1])
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return int(item[0]), int(item[1])
    raise ValueError(f"size {item!r} is not WIDTHxHEIGHT; write e.g. 512x512,768x512")


def parse_sizes(value: object) -> tuple[Size, ...]:
    """``"512x512,768x512"`` (or a sequence of such texts or pairs) -> ((512, 512), (768, 512))."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[object] = [p for p in value.split(",") if p.strip()]
    elif isinstance(value, (tuple, list)):
        items = list(value)
    else:
        raise ValueError(f"sizes must be a text like 512x512,768x512; got {value!r}")
    sizes: list[Size] = []
    for item in items:
        size = _one_size(item)
        if not all(SIZE_MIN <= side <= SIZE_MAX and side % SIZE_MULTIPLE == 0 for side in size):
            raise ValueError(
                f"size {format_size(size)}: each side must be a multiple of {SIZE_MULTIPLE} "
                f"from {SIZE_MIN} to {SIZE_MAX}"
            )
        if size in sizes:
            raise ValueError(f"size {format_size(size)} is listed twice")
        sizes.append(size)
    return tuple(sizes)


def queues_for(base: str, sizes: Iterable[Size]) -> list[str]:
    """The default queue, then the size-class queue of every size served; then the bulk
    queue of each of them, in the same order (lcm_fleet.contract.class_queue)."""
    interactive = [base, *(size_queue(base, w, h) for w, h in sizes)]
    return [*interactive, *(class_queue(q, JobClass.BULK) for q in interactive)]


class PipelineSet(Generic[P]):
    """One compiled pipeline (or its description) per size class; ``for_job`` picks the
    one a job needs."""

    def __init__(self, pipelines: Mapping[Size, P], default: Size) -> None:
        if default not in pipelines:
            raise ValueError(f"default size {format_size(default)} has no pipeline")
        self._pipelines = dict(pipelines)
        self.default = default

    @property
    def sizes(self) -> list[Size]:
        """Served sizes, the default first."""
        return [self.default, *(s for s in self._pipelines if s != self.default)]

    def get(self, size: Size) -> P:
        return self._pipelines[size]

    def size_of(self, job: Job) -> Size:
        """The size the job renders at: its own, or this worker's default."""
        if job.width is None or job.height is None:
            return self.default
        return job.width, job.height

    def for_job(self, job: Job) -> P:
        size = self.size_of(job)
        pipeline = self._pipelines.get(size)
        if pipeline is None:
            served = ", ".join(format_size(s) for s in self.sizes)
            raise InvalidJob(
                f"field 'width'/'height' got {format_size(size)}; this worker's model serves "
                f"{served}: leave width and height unset or send one of those sizes (jobs "
                f"submitted with a size wait on their own size-class queue for a worker that "
                "serves it)"
            )
        return pipeline
