"""What hardware a machine offers the fleet: CPU sockets (NUMA nodes) and OpenVINO devices."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from worker.fleet.layout import RenderLayout, choose_layout

logger = logging.getLogger(__name__)


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8-11' -> [0, 1, 2, 3, 8, 9, 10, 11] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(part))
    return sorted(set(cpus))


def numa_nodes(sys_root: Path = Path("/sys")) -> list[list[int]]:
    """CPUs of each NUMA node that this process may run on; one node of all CPUs if unknown."""
    allowed = set(os.sched_getaffinity(0))
    nodes = []
    base = sys_root / "devices" / "system" / "node"
    for node in sorted(base.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        try:
            cpus = [c for c in parse_cpulist((node / "cpulist").read_text()) if c in allowed]
        except (OSError, ValueError):
            continue
        if cpus:
            nodes.append(cpus)
    return nodes or [sorted(allowed)]


def openvino_devices() -> list[str]:
    """OpenVINO's device names on this machine, e.g. ['CPU', 'GPU.0', 'GPU.1']."""
    import openvino as ov

    return list(ov.Core().available_devices)


@dataclass(frozen=True)
class Unit:
    """One worker process: a device, and for CPU units the cores it is pinned to and how
    they are split into render processes (worker/fleet/layout.py)."""

    name: str
    device: str
    cpus: tuple[int, ...] | None
    metrics_port: int
    layout: RenderLayout | None = None

    def env(self) -> dict[str, str]:
        env = {
            "LCM_UNIT": self.name,
            "LCM_DEVICE": self.device,
            "LCM_METRICS_PORT": str(self.metrics_port),
        }
        if self.cpus is not None:
            # LCM_CONCURRENCY render processes of LCM_CPU_THREADS threads, each pinned to
            # cores of its own within the unit's (worker/runtime.py).
            layout = self.layout or choose_layout(len(self.cpus))
            env.update(layout.env())
        return env


def plan_units(
    nodes: list[list[int]],
    devices: list[str],
    *,
    wanted: list[str] | None = None,
    metrics_port: int = 9464,
    concurrency: int | None = None,
    cpu_threads: int | None = None,
) -> list[Unit]:
    """One unit per NUMA node (device CPU) and one per GPU.

    ``wanted`` overrides the device list (e.g. ``["GPU.0"]``, or ``["CPU"]`` for CPU units
    only); names not offered by OpenVINO are refused. Each CPU unit's render processes x
    threads: :func:`worker.fleet.layout.choose_layout` of its cores, ``concurrency`` and
    ``cpu_threads`` (LCM_CONCURRENCY, LCM_CPU_THREADS) overriding it.
    """
    gpus = [d for d in devices if d.startswith("GPU")]
    chosen = list(wanted) if wanted else ["CPU", *gpus]
    unknown = [d for d in chosen if d != "CPU" and d not in devices]
    if unknown:
        raise ValueError(
            f"--devices names {', '.join(unknown)}, which OpenVINO does not offer here "
            f"(available: {', '.join(devices) or 'none'})"
        )
    slots: list[tuple[str, str, tuple[int, ...] | None]] = []
    if "CPU" in chosen:
        slots += [(f"cpu{i}", "CPU", tuple(cpus)) for i, cpus in enumerate(nodes)]
    for device in chosen:
        if device.startswith("GPU"):
            suffix = device.split(".", 1)[1] if "." in device else "0"
            slots.append((f"gpu{suffix}", device, None))
    units = [
        Unit(
            name,
            device,
            cpus,
            metrics_port + i if metrics_port else 0,
            None if cpus is None else choose_layout(len(cpus), concurrency, cpu_threads),
        )
        for i, (name, device, cpus) in enumerate(slots)
    ]
    if not units:
        raise ValueError("the fleet plan is empty: no CPU node and no GPU was chosen")
    return units
