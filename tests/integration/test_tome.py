"""``lcm-build build --tome`` on the tiny model through the real CLI: a static token-merging
UNet IR without scatter ops, recorded in the manifest, served at its size only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lcm_fleet.artifact.manifest import read_manifest, verify_files
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tome_build(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tome")
    prompts = base / "eval.txt"
    prompts.write_text("a lighthouse at dusk, oil painting\n", encoding="utf-8")
    out = base / "tiny-int8-tome"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "model_build.cli", "build", str(model_dirs["tiny"]), str(out)),
            *("--work-dir", str(base / "tiny.fp32"), "--tome", "0.5", "--samples", "8"),
            *("--eval-prompts", str(prompts), "--eval-seeds", "1", "--speed-runs", "1"),
            *("--accept-below-gate", "random tiny weights", "--no-progress"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "token merging" in proc.stdout
    return out


def test_the_build_records_the_ratio_and_has_no_scatter(tome_build: Path) -> None:
    from model_build.tome import count_ops

    manifest = read_manifest(tome_build)
    verify_files(tome_build, manifest)
    assert manifest.tome is not None
    assert (manifest.tome.ratio, manifest.tome.width, manifest.tome.height) == (0.5, 128, 128)
    assert manifest.tome.merged_tokens == 128 and manifest.tome.self_attentions == 3
    assert (manifest.fake_quantize_count or 0) > 0  # the INT8 step ran on the merging UNet
    ops = count_ops(
        tome_build / "unet" / "openvino_model.xml",
        ("ScatterElementsUpdate", "GatherElements", "TopK"),
    )
    assert ops["ScatterElementsUpdate"] == ops["GatherElements"] == 0
    assert ops["TopK"] == 9  # per patched attention: best destination, ranking, its inverse


def test_the_worker_serves_it_at_its_size_and_refuses_others(tome_build: Path) -> None:
    from worker.errors import ModelLoadError
    from worker.model.artifact import verify_artifact
    from worker.render.pipeline import GenaiPipeline

    with pytest.raises(ModelLoadError, match="partition fixed for 128x128"):
        verify_artifact(tome_build, 192, 128)
    pipe = GenaiPipeline(verify_artifact(tome_build), "CPU", "", "default")
    pixels, _times = pipe.generate("a red fox in snow", 1, 2, 8.0)
    image = np.asarray(pixels)
    assert image.shape == (128, 128, 3) and image.std() > 1.0
