"""The machine a benchmark ran on: CPU, cores, memory, OpenVINO's view of the CPU, versions."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

#: CPU flags that decide which kernels OpenVINO and PyTorch can use.
INTERESTING_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)
PACKAGES = (
    "openvino",
    "openvino-genai",
    "openvino-tokenizers",
    "nncf",
    "optimum-intel",
    "optimum",
    "torch",
    "diffusers",
    "transformers",
    "numpy",
)


def _cpuinfo() -> dict[str, Any]:
    model: str | None = None
    flags: set[str] = set()
    physical: set[tuple[str, str]] = set()
    phys_id = core_id = "0"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and model is None:
                    model = value
                elif key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "physical id":
                    phys_id = value
                elif key == "core id":
                    core_id = value
                    physical.add((phys_id, core_id))
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor() or None,
        "physical_cores": len(physical) or None,
        "flags": [flag for flag in INTERESTING_FLAGS if flag in flags],
    }


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 2)
    except OSError:
        pass
    return None


def _openvino() -> dict[str, Any]:
    try:
        import openvino as ov

        core = ov.Core()
        return {
            "full_device_name": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
            "optimization_capabilities": [
                str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            ],
            "default_inference_precision": core.get_property(
                "CPU", "INFERENCE_PRECISION_HINT"
            ).get_type_name(),
        }
    except Exception as e:  # a benchmark report should not die on a missing property
        return {"error": f"{type(e).__name__}: {e}"}


def versions() -> dict[str, str | None]:
    from lcm_fleet.artifact.manifest import tool_versions

    return {"python": platform.python_version(), **tool_versions(PACKAGES)}


def describe() -> dict[str, Any]:
    cpu = _cpuinfo()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        **cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "ram_gib": _mem_total_gib(),
        "os": platform.platform(),
        "python_executable": sys.executable,
        "env": {
            k: os.environ[k]
            for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
            if k in os.environ
        },
        "openvino_cpu": _openvino(),
        "versions": versions(),
    }
