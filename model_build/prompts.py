"""Prompt sets shipped with the package (one prompt per line)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from model_build.errors import BuildInputError

SHIPPED = {"calibration": "calibration_prompts.txt", "eval": "eval_prompts.txt"}


def load_prompts(name_or_path: str | Path) -> list[str]:
    """A shipped set by name (``calibration``) or a text file with one prompt per line."""
    if str(name_or_path) in SHIPPED:
        text = (
            resources.files("model_build")
            .joinpath("data", SHIPPED[str(name_or_path)])
            .read_text(encoding="utf-8")
        )
        source = f"shipped set {name_or_path!r}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise BuildInputError(
                f"prompts={str(name_or_path)!r} is neither a shipped set ({', '.join(SHIPPED)}) "
                "nor a file; pass a text file with one prompt per line"
            )
        text = path.read_text(encoding="utf-8")
        source = str(path)
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise BuildInputError(f"prompts from {source} are empty: give at least one prompt")
    return prompts
