"""Memory of a worker's compiled pipelines: estimated from the artifact, measured while
each loads, and held to ``LCM_MEMORY_BUDGET_GIB``.

Before compiling anything the worker checks a lower bound (the weights the pipeline
loads, from the artifact's file sizes) against the budget; then it compiles one size
class after the other, measuring each one's growth of the process's resident memory
(RSS), and refuses to start as soon as the measured total is above the budget, or the
measured total plus the lower bound of the sizes still to compile is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from worker.errors import StartupError
from worker.render.sizes import PipelineSet, Size, format_size, format_sizes

if TYPE_CHECKING:
    from worker.render.pipeline import ImagePipeline

logger = logging.getLogger(__name__)

GIB = 1024**3
#: The sub-models Text2ImagePipeline compiles for text-to-image (not the VAE encoder).
LOADED_PARTS = ("text_encoder", "unet", "vae_decoder")
#: On CPU, a pipeline's RSS growth is at least this share of its weights on disk: the
#: compiled weights stay resident (measured: docs/performance.md#memory-per-size-class). On
#: a GPU they live in device memory, so the estimate applies to CPU workers only.
WEIGHTS_LOWER_BOUND = 0.9


class MemoryBudgetExceeded(StartupError):
    """The pipelines of the configured size classes do not fit in LCM_MEMORY_BUDGET_GIB."""


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def weights_bytes(model_path: Path) -> int:
    """Bytes of the weight files the text-to-image pipeline loads from an artifact."""
    return sum(
        f.stat().st_size
        for part in LOADED_PARTS
        if (Path(model_path) / part).is_dir()
        for f in (Path(model_path) / part).glob("*.bin*")  # .bin.enc: encrypted artifacts
    )


def estimate_gib(model_path: Path) -> float:
    """Lower bound of one pipeline's resident memory, before compiling it."""
    return WEIGHTS_LOWER_BOUND * weights_bytes(model_path) / GIB


@dataclass(frozen=True)
class PipelineMemory:
    size: Size
    compile_s: float
    #: Growth of the process's RSS while this pipeline loaded and compiled.
    load_gib: float
    #: Further growth during its warm-up render (OpenVINO allocates the activations at the
    #: first inference); 0 without a warm-up.
    warmup_gib: float = 0.0
    warmup_s: float = 0.0

    @property
    def rss_growth_gib(self) -> float:
        return self.load_gib + self.warmup_gib


@dataclass(frozen=True)
class LoadedSizes:
    pipelines: PipelineSet[ImagePipeline]
    loads: tuple[PipelineMemory, ...]
    #: Lower bound per pipeline, from the artifact's weights.
    estimate_gib: float
    budget_gib: float | None
    rss_gib: float

    @property
    def total_gib(self) -> float:
        return sum(m.rss_growth_gib for m in self.loads)


def gib_text(value: float) -> str:
    """2.50 for sizable figures; two significant digits for tiny ones (0.0027)."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def _refusal(
    budget_gib: float,
    budget_name: str,
    sizes: Sequence[Size],
    what: str,
    need_gib: float,
) -> MemoryBudgetExceeded:
    return MemoryBudgetExceeded(
        f"{budget_name}={budget_gib:g} is too small for the size classes "
        f"{format_sizes(sizes)}: {what}, {gib_text(need_gib)} GiB in all; raise "
        f"{budget_name} to at least {gib_text(need_gib * 1.1)}, or serve fewer sizes per worker "
        "(LCM_SIZES; run one worker per size class)"
    )


def check_estimate(
    sizes: Sequence[Size],
    estimate_gib: float,
    budget_gib: float | None,
    budget_name: str = "LCM_MEMORY_BUDGET_GIB",
) -> None:
    """Before compiling anything: refuse when even the lower bound exceeds the budget."""
    if budget_gib is not None and len(sizes) * estimate_gib > budget_gib:
        raise _refusal(
            budget_gib,
            budget_name,
            sizes,
            f"estimated before compiling at {gib_text(estimate_gib)} GiB or more per pipeline from "
            f"the artifact's weights, x {len(sizes)}",
            len(sizes) * estimate_gib,
        )


def load_size_classes(
    sizes: Sequence[Size],
    loader: Callable[[Size], ImagePipeline],
    *,
    estimate_gib: float,
    budget_gib: float | None,
    budget_name: str = "LCM_MEMORY_BUDGET_GIB",
    warmup: bool = True,
    rss: Callable[[], int] = rss_bytes,
) -> LoadedSizes:
    """Compile one pipeline per size (the first is the default), within the budget.

    With ``warmup`` each pipeline renders one 1-step image right after its compile, so its
    measured memory includes what the first inference allocates, and the first job does
    not pay for the first inference.
    """
    if not sizes:
        raise ValueError("no size class to load")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"size classes listed twice: {format_sizes(sizes)}")
    check_estimate(sizes, estimate_gib, budget_gib, budget_name)
    pipelines: dict[Size, ImagePipeline] = {}
    loads: list[PipelineMemory] = []
    for index, size in enumerate(sizes):
        before = rss()
        t0 = time.perf_counter()
        pipeline = pipelines[size] = loader(size)
        compile_s = time.perf_counter() - t0
        compiled = rss()
        warmup_s, warmup_bytes = 0.0, 0
        if warmup:
            t1 = time.perf_counter()
            pipeline.generate("warm-up", 0, 1, pipeline.guidance_scale)
            warmup_s = time.perf_counter() - t1
            warmup_bytes = max(0, rss() - compiled)
        load = PipelineMemory(
            size,
            compile_s,
            load_gib=max(0, compiled - before) / GIB,
            warmup_gib=warmup_bytes / GIB,
            warmup_s=warmup_s,
        )
        loads.append(load)
        logger.info(
            "size class %s: pipeline loaded in %.1fs, resident memory +%.2f GiB "
            "(+%.2f GiB of it in a %.1fs warm-up render)",
            format_size(size),
            compile_s,
            load.rss_growth_gib,
            load.warmup_gib,
            warmup_s,
        )
        if budget_gib is None:
            continue
        measured = sum(m.rss_growth_gib for m in loads)
        left = len(sizes) - index - 1
        if measured + left * estimate_gib > budget_gib:
            parts = " + ".join(
                f"{gib_text(m.rss_growth_gib)} ({format_size(m.size)})" for m in loads
            )
            what = f"the pipelines measured {parts} GiB while loading" + (
                " and warming up" if warmup else ""
            )
            if left:
                what += (
                    f", and the {left} still to compile take at least {gib_text(estimate_gib)} each"
                )
            raise _refusal(budget_gib, budget_name, sizes, what, measured + left * estimate_gib)
    return LoadedSizes(
        pipelines=PipelineSet(pipelines, sizes[0]),
        loads=tuple(loads),
        estimate_gib=estimate_gib,
        budget_gib=budget_gib,
        rss_gib=rss() / GIB,
    )
