"""Each benchmark path's quality gate, judged on the reference model (``gate_passed``).

The pipeline benchmark times the full-size architecture with random weights: its images have
no quality to judge. So each path made by a build option takes the verdict of the reference
model (model_build/reference/weights, a model that follows prompts) built with the same
options by the real ``lcm-build build``: ``gate_passed`` is true only when that build passed
its gate. The paths that are not a build option (PyTorch and the fp32 IR) have no gate:
``gate_passed`` is None.

Each build runs in a child process and is cached in the work dir with its manifest's
quality record, like the benchmark's other build steps.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REFERENCE = Path(__file__).resolve().parents[2] / "model_build" / "reference" / "weights"
#: Calibration samples of the reference builds (lcm-build build --samples).
REFERENCE_SAMPLES = 80
#: Token-merging ratio of the benchmark's ToMe paths.
TOME_RATIO = 0.5

#: Path key -> the ``lcm-build build`` options its artifact is made with.
GATED: dict[str, tuple[str, ...]] = {
    "ov_int8_worker": (),
    "ov_int8_vae_int8w": ("--vae-decoder", "int8-weights"),
    "ov_int8_vae_int8": ("--vae-decoder", "int8"),
    "ov_int8_vae_taesd": ("--vae-decoder", "taesd"),
    "ov_int8_tome": ("--tome", str(TOME_RATIO)),
    "ov_int8_tome_taesd": ("--tome", str(TOME_RATIO), "--vae-decoder", "taesd"),
}


def folder_name(options: tuple[str, ...] | list[str]) -> str:
    """The cache folder of the reference build with ``options``: ``reference.int8`` and one
    suffix per option (``.tome0.5``, ``.vae-taesd``)."""
    pairs = zip(options[::2], options[1::2], strict=True)
    return "reference.int8" + "".join(
        f".tome{value}" if flag == "--tome" else f".vae-{value}" for flag, value in pairs
    )


def task_reference_gate(spec: dict[str, Any]) -> dict[str, Any]:
    """``lcm-build build`` of the reference model with ``options``: the gate's verdict and
    figures, from the manifest it writes whether the gate passed or not."""
    from lcm_fleet.artifact.manifest import read_manifest

    out = Path(spec["out"])
    options = [str(o) for o in spec.get("options", ())]
    args = [
        *(sys.executable, "-m", "model_build.cli", "build", str(REFERENCE), str(out)),
        *("--work-dir", str(out.with_name(out.name + ".fp32")), "--overwrite", "--no-progress"),
        *("--samples", str(spec.get("samples", REFERENCE_SAMPLES)), "--speed-runs", "1"),
        *options,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 3):  # 3: built, below the gate
        raise RuntimeError(f"{shlex.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    quality = read_manifest(out).quality
    assert quality is not None
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "options": options,
        "passed": bool(quality.passed),
        "quality": quality.as_dict(),
    }


TASKS = {"reference_gate": task_reference_gate}


def parse_keys(text: str) -> tuple[str, ...]:
    """``--gates``: ``all``, ``none`` or path keys separated by commas."""
    if text == "all":
        return tuple(GATED)
    if text == "none":
        return ()
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in keys if k not in GATED]
    if unknown:
        raise ValueError(
            f"--gates: unknown path(s) {', '.join(unknown)}; use all, none or some of "
            f"{', '.join(GATED)}"
        )
    return keys


def reference_gate(
    runner: Any, models: Path, label: str, options: tuple[str, ...], skip_build: bool
) -> dict[str, Any]:
    """The reference build with ``options`` (cached in ``models``): its figures."""
    spec = {"options": list(options)}
    return runner.cached(label, "reference_gate", models / folder_name(options), spec, skip_build)


def build_gates(
    runner: Any, models: Path, keys: tuple[str, ...], skip_build: bool
) -> dict[str, dict[str, Any]]:
    """The reference build of each path in ``keys`` (cached): path key -> its figures."""
    return {
        key: reference_gate(runner, models, f"gate-{key}", GATED[key], skip_build) for key in keys
    }


def verdicts(paths: dict[str, Any], gates: dict[str, dict[str, Any]]) -> None:
    """Set each path's ``gate_passed``: its reference build's verdict; None for a path that is
    no build option (or whose gate was not run)."""
    for key, path in paths.items():
        gate = gates.get(key)
        path["gate_passed"] = None if gate is None else bool(gate["passed"])
