"""The local Redis and S3 (deploy/local/services.py, a script) loaded as a module."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def local_services() -> Any:
    """deploy/local/services.py as a module: ``start(state_dir, ...)``, ``stop(state_dir)``."""
    spec = importlib.util.spec_from_file_location("lcm_services", ROOT / "deploy/local/services.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_worker(
    artifact: Path,
    env: dict[str, str],
    queue: str,
    log: Path,
    code_dir: Path = ROOT,
    timeout_s: float = 900,
) -> subprocess.Popen[bytes]:
    """An ``lcm-worker`` of the code tree ``code_dir`` on ``artifact`` and ``queue``, its output
    in ``log`` (its compile cache beside it), once it logs that it is ready."""
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    worker_env.update(
        env,
        LCM_MODEL_DIR=str(artifact),
        LCM_QUEUE=queue,
        LCM_METRICS_PORT="0",
        LCM_CACHE_DIR=str(log.parent / "ov-cache"),
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli"],
            cwd=code_dir,
            env=worker_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout_s
    while " ready." not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"worker {log.stem} did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc
