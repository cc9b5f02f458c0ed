"""SD1.5 base + LCM-LoRA through the CLI to an INT8 artifact that the worker's pipeline serves."""

from __future__ import annotations

import numpy as np
import pytest

from lcm_fleet.artifact.manifest import read_manifest
from lcm_fleet.contract import Job
from lcm_fleet.errors import InvalidJob
from tests.integration.conftest import run_cli
from worker.model.artifact import verify_artifact
from worker.render.images import render
from worker.render.pipeline import GenaiPipeline

# Builds an SD1.5 + LCM-LoRA INT8 artifact through the CLI (over a minute); CI runs the slow
# tier after the default one.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora-build")
    run_cli("model_build.cli", "tiny", "--kind", "sd15", str(d / "base"))
    run_cli("model_build.cli", "tiny-lora", str(d / "base"), str(d / "lora"))
    run_cli(
        "model_build.cli",
        "build",
        str(d / "base"),
        str(d / "int8"),
        "--lora",
        str(d / "lora"),
        "--lora-scale",
        "0.8",
        "--samples",
        "16",
        "--eval-seeds",
        "1",
        "--speed-runs",
        "1",
        "--no-progress",
    )
    return d / "int8"


def test_manifest_records_base_lora_and_scale(lora_artifact):
    data = read_manifest(lora_artifact).as_dict()
    source = data["source"]
    assert source["kind"] == "lcm-lora-fused" and source["lora_scale"] == 0.8
    assert (
        len(source["base"]["content_sha256"]) == 64 and len(source["lora"]["weight_sha256"]) == 64
    )
    assert source["scheduler"] == "LCMScheduler"
    assert data["model"]["guidance"] == "cfg" and data["shape"]["guidance_scale"] == 1.0
    assert data["quality"]["passed"] and data["fake_quantize_count"] > 0


def test_worker_pipeline_serves_it_in_its_guidance_regime(lora_artifact, tmp_path):
    model = verify_artifact(lora_artifact)
    assert model.cfg and model.guidance_scale == 1.0
    pipe = GenaiPipeline(model, "CPU", str(tmp_path / "cache"), "default")
    out = render(Job(prompt="a red fox in snow", seed=5, num_images=2), pipe)
    assert out.guidance_scale == 1.0 and [i.seed for i in out.images] == [5, 6]
    pixels = out.images[0].pixels
    assert pixels.shape == (128, 128, 3) and np.isfinite(pixels).all() and pixels.std() > 0
    again = render(Job(prompt="a red fox in snow", seed=5), pipe)
    assert np.array_equal(again.images[0].pixels, pixels)
    with pytest.raises(InvalidJob, match="classifier-free guidance"):
        render(Job(prompt="x", guidance_scale=3.0), pipe)
