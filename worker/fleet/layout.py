"""How a CPU unit's cores become render processes: the measured default, or the settings.

``lcm-fleet`` gives each socket (NUMA node) one worker; inside it, ``LCM_CONCURRENCY``
render processes of ``LCM_CPU_THREADS`` OpenVINO threads each, every one pinned to cores of
its own (worker/runtime.py splits the worker's affinity). :func:`choose_layout` picks the
two from the unit's core count when neither is set, by the rule bench/streams measured
(docs/performance.md#streams-per-socket); either setting overrides it, and the other is
derived from the cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Fewest cores per render process by default: one, the split bench/streams measured best for
#: images per second on the 2-core AMX machine: pinned 1-thread processes never rendered fewer
#: than one process with both cores, and more for small renders (figures in
#: docs/performance.md#streams-per-socket-benchstreams). Each image takes longer and each
#: process holds its own pipelines. OpenVINO's THROUGHPUT rule gives compute-bound models one
#: thread per stream too.
DEFAULT_CORES_PER_PROCESS = 1
#: Most render processes per unit by default: each holds its own compiled pipelines (+3.2 GiB
#: at 512x512; genai's clone(), which would share them, is C++ only), so on a large socket
#: the processes get more threads instead: 56 cores are 8 processes x 7 threads.
DEFAULT_MAX_PROCESSES = 8


class LayoutError(ValueError):
    """LCM_CONCURRENCY / LCM_CPU_THREADS ask for more cores than the unit has."""


class LayoutSource(str, Enum):
    """Where a unit's render processes x threads came from."""

    DEFAULT = "default"
    SETTINGS = "settings"


class LayoutSettings(BaseSettings):
    """The worker's two settings that lcm-fleet reads to split a unit (same names, same
    bounds as worker/settings.py); unset means "choose"."""

    model_config = SettingsConfigDict(env_prefix="LCM_", extra="ignore")

    concurrency: int | None = Field(default=None, ge=1, le=64)
    cpu_threads: int | None = Field(default=None, ge=1, le=1024)


@dataclass(frozen=True)
class RenderLayout:
    """``processes`` render processes of ``threads`` threads each, on ``cores`` cores."""

    processes: int
    threads: int
    cores: int
    source: LayoutSource

    @property
    def idle_cores(self) -> int:
        return self.cores - self.processes * self.threads

    def describe(self) -> str:
        """e.g. '2 render processes x 1 thread of 2 cores (default)'."""
        p = "process" if self.processes == 1 else "processes"
        t = "thread" if self.threads == 1 else "threads"
        why = (
            f"default: at least {DEFAULT_CORES_PER_PROCESS} core(s) per process, "
            f"at most {DEFAULT_MAX_PROCESSES} processes"
            if self.source is LayoutSource.DEFAULT
            else "LCM_CONCURRENCY / LCM_CPU_THREADS"
        )
        idle = f", {self.idle_cores} idle" if self.idle_cores else ""
        split = f"{self.processes} render {p} x {self.threads} {t}"
        return f"{split} of {self.cores} cores{idle} ({why})"

    def env(self) -> dict[str, str]:
        return {
            "LCM_CONCURRENCY": str(self.processes),
            "LCM_CPU_THREADS": str(self.threads),
            "LCM_CPU_PINNING": "true",
        }


def choose_layout(
    cores: int, concurrency: int | None = None, cpu_threads: int | None = None
) -> RenderLayout:
    """Render processes x threads for a unit of ``cores`` cores.

    Neither set: up to one process per DEFAULT_CORES_PER_PROCESS cores and at most
    DEFAULT_MAX_PROCESSES, the cores shared out evenly: of those counts, the one leaving the
    fewest cores idle, the most processes among equals (12 cores: 6 x 2, not 8 x 1 and 4
    idle). One set: the other from the cores. Both: as given, refused when they need more
    cores than the unit has.
    """
    if cores < 1:
        raise LayoutError(f"a CPU unit needs at least one core, got {cores}")
    if concurrency is None and cpu_threads is None:
        most = max(1, min(DEFAULT_MAX_PROCESSES, cores // DEFAULT_CORES_PER_PROCESS))
        processes = min(range(1, most + 1), key=lambda p: (cores % p, -p))
        return RenderLayout(processes, cores // processes, cores, LayoutSource.DEFAULT)
    if concurrency is not None and cpu_threads is None:
        if concurrency > cores:
            raise LayoutError(
                f"LCM_CONCURRENCY={concurrency} asks for more render processes than the unit's "
                f"{cores} cores; set it to at most {cores}, or unset it to let lcm-fleet choose"
            )
        cpu_threads = cores // concurrency
    elif cpu_threads is not None and concurrency is None:
        if cpu_threads > cores:
            raise LayoutError(
                f"LCM_CPU_THREADS={cpu_threads} is more than the unit's {cores} cores; set it "
                f"to at most {cores}, or unset it to let lcm-fleet choose"
            )
        concurrency = cores // cpu_threads
    assert concurrency is not None and cpu_threads is not None
    if concurrency * cpu_threads > cores:
        raise LayoutError(
            f"LCM_CONCURRENCY={concurrency} x LCM_CPU_THREADS={cpu_threads} needs "
            f"{concurrency * cpu_threads} cores, and the unit has {cores}; lower one, or unset "
            "both to let lcm-fleet choose"
        )
    return RenderLayout(concurrency, cpu_threads, cores, LayoutSource.SETTINGS)


def split_cpus(cpus: list[int], processes: int, threads: int) -> tuple[tuple[int, ...], ...]:
    """Each render process's own cores: ``processes`` runs of ``threads`` of ``cpus``."""
    if processes * threads > len(cpus):
        raise LayoutError(
            f"{processes} render processes x {threads} threads need {processes * threads} "
            f"cores; this worker may run on {len(cpus)} ({','.join(map(str, cpus))})"
        )
    ordered = sorted(cpus)
    return tuple(tuple(ordered[i * threads : (i + 1) * threads]) for i in range(processes))
