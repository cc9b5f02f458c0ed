"""The local Redis and S3 (deploy/local/services.py, a script) loaded as a module."""

from __future__ import annotations

import importlib.util
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
