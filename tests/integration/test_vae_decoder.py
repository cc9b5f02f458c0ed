"""``--vae-decoder int8|int8-weights|taesd`` on the tiny model, through the real CLI.

The candidates are made from the session's fp32 IR (``model_dirs``), gated, verified and
rendered by the worker's own pipeline class; the TAESD decoder inside genai is checked
against diffusers' ``AutoencoderTiny`` on the same latents and end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lcm_fleet.artifact.manifest import read_manifest, verify_files
from tests.integration.conftest import ROOT

SIZE = 128
GUIDANCE = 8.0
PROMPT = "a red fox in snow"
#: genai converts the decoder's float image to u8 by truncation, diffusers by rounding; on
#: the same latents genai's pixel is floor(255 x) of diffusers' float x, up to the f32
#: differences of two runtimes (measured: under 2e-4 of a level). A wrong scaling, shift or
#: clamp moves pixels by many levels (tested on this decoder: a 10% latent change moves
#: them by up to 7 levels).
FLOAT_TOLERANCE_LEVELS = 0.05


@pytest.fixture(scope="module")
def vae_builds(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from model_build.tiny import build_tiny_taesd

    base = tmp_path_factory.mktemp("vae")
    prompts = base / "eval.txt"
    prompts.write_text("a lighthouse at dusk, oil painting\n", encoding="utf-8")
    taesd = build_tiny_taesd(base / "taesd")
    common = ["--eval-prompts", str(prompts), "--eval-seeds", "1", "--speed-runs", "1"]
    builds = {
        # INT8 UNet and INT8 VAE decoder from one capture pass (2 renders of 4 steps).
        "int8": ["--precision", "int8", "--samples", "8", "--vae-decoder", "int8"],
        # The UNet stays fp32: only the decoder differs from the reference.
        "int8-weights": ["--precision", "fp32", "--vae-decoder", "int8-weights"],
        "taesd": [
            *("--precision", "fp32", "--vae-decoder", "taesd", "--taesd", str(taesd)),
            *("--accept-below-gate", "random TAESD weights: the gate is expected to fail"),
        ],
    }
    out = {kind: base / f"candidate-{kind}" for kind in builds}
    # The three builds are independent: run them side by side (each is mostly imports and
    # small single-threaded steps at this size).
    cli = [sys.executable, "-m", "model_build.cli", "quantize", str(model_dirs["fp32"])]
    procs = {
        kind: subprocess.Popen(
            [*cli, str(out[kind]), *args, *common, "--no-progress"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, args in builds.items()
    }
    for kind, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{kind}: {stdout[-2000:]}{stderr[-3000:]}"
        assert "VAE " in stdout, stdout
    return {"dirs": out, "taesd": taesd, "fp32": model_dirs["fp32"], "tiny": model_dirs["tiny"]}


def _manifest(path: Path) -> dict[str, Any]:
    manifest = read_manifest(path)
    verify_files(path, manifest)
    return manifest.as_dict()


def _fake_quantize(xml: Path) -> int:
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")


def test_int8_vae_from_the_unets_capture_pass(vae_builds):
    path = vae_builds["dirs"]["int8"]
    data = _manifest(path)
    assert data["precision"] == "int8-unet+vae-int8"
    vae = data["vae_decoder"]
    assert vae["kind"] == "int8" and vae["samples"] == 2  # ceil(8 samples / 4 steps) renders
    assert vae["calibration"]["captured_with"] == "the UNet's calibration renders"
    assert vae["calibration"]["width"] == SIZE and vae["calibration"]["steps"] == 4
    assert vae["fake_quantize_count"] == _fake_quantize(path / "vae_decoder/openvino_model.xml") > 0
    assert (vae["preset"], vae["model_type"]) == ("MIXED", "TRANSFORMER")
    assert vae["activations_range_estimator"] == "MINMAX"
    durations = data["build"]["durations_s"]
    assert "calibration_capture" in durations and "vae_calibration_capture" not in durations
    assert "vae_decoder" not in data["quantization"]["unchanged_parts"]
    assert data["fake_quantize_count"] > 0  # the UNet's
    assert data["quality"]["passed"] is True
    assert data["speed"]["candidate"]["vae_s"] > 0 and data["speed"]["vae_speedup"] > 0


def test_int8_weights_vae(vae_builds):
    path, fp32 = vae_builds["dirs"]["int8-weights"], vae_builds["fp32"]
    data = _manifest(path)
    assert data["precision"] == "fp32+vae-int8-weights"
    vae = data["vae_decoder"]
    assert vae["kind"] == "int8-weights" and vae["method"] == "nncf.compress_weights"
    sizes = vae["weights_bytes"]
    assert sizes["int8"] < sizes["fp32"] / 2  # 8-bit weights instead of 32-bit
    assert sizes["fp32"] == (fp32 / "vae_decoder/openvino_model.bin").stat().st_size
    files, ref = read_manifest(path).files, read_manifest(fp32).files
    assert files["unet/openvino_model.bin"] == ref["unet/openvino_model.bin"]
    assert files["vae_decoder/openvino_model.bin"] != ref["vae_decoder/openvino_model.bin"]
    assert files["vae_decoder/config.json"] == ref["vae_decoder/config.json"]
    assert data["quality"]["passed"] is True and data["quality"]["psnr_db_mean"] > 40


def test_taesd_artifact_has_the_sd_decoders_interface(vae_builds):
    import openvino as ov

    from model_build.sources import describe_source
    from model_build.vae_decoder import io_signature

    path, fp32 = vae_builds["dirs"]["taesd"], vae_builds["fp32"]
    data = _manifest(path)
    assert data["precision"] == "fp32+vae-taesd"
    vae = data["vae_decoder"]
    assert vae["kind"] == "taesd"
    assert vae["source"] == describe_source(str(vae_builds["taesd"]), "main")
    assert vae["conversion_max_abs_diff"] < 1e-3
    core = ov.Core()
    ours = io_signature(core.read_model(str(path / "vae_decoder/openvino_model.xml")))
    theirs = io_signature(core.read_model(str(fp32 / "vae_decoder/openvino_model.xml")))
    assert ours == theirs == vae["io"]
    assert ours["inputs"][0]["names"] == ["latent_sample"]
    config = json.loads((path / "vae_decoder/config.json").read_text())
    assert config["_class_name"] == "AutoencoderTiny"
    assert (config["scaling_factor"], config["shift_factor"]) == (1.0, 0.0)
    assert len(config["block_out_channels"]) == 4  # genai: 2 ** (4 - 1) = 8x
    # Random weights: the gate judged it below the thresholds; the override is on record.
    quality = data["quality"]
    assert quality["passed"] is False and quality["override"].startswith("random TAESD")


@pytest.mark.parametrize("kind", ["int8", "int8-weights", "taesd"])
def test_worker_verifies_and_renders(vae_builds, kind):
    from worker.model.artifact import verify_artifact
    from worker.render.pipeline import GenaiPipeline

    model = verify_artifact(vae_builds["dirs"][kind])
    assert model.vae_decoder == kind and (model.width, model.height) == (SIZE, SIZE)
    pipe = GenaiPipeline(model, "CPU", "", "default")
    pixels, times = pipe.generate(PROMPT, seed=3, steps=4, guidance_scale=GUIDANCE)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 5 and times.unet_s > 0
    # genai reports the VAE decoder's time in whole milliseconds: a 128x128 TAESD decode
    # reads 0 on a fast CPU.
    assert times.vae_s >= 0 if kind == "taesd" else times.vae_s > 0


def _genai_f32(artifact: Path) -> Any:
    import openvino_genai as ov_genai

    pipe = ov_genai.Text2ImagePipeline(str(artifact))
    pipe.reshape(1, SIZE, SIZE, GUIDANCE)
    pipe.compile("CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    return pipe


def _assert_floor_of(genai_u8: Any, diffusers_float: Any) -> None:
    """genai's u8 image is floor(255 x) of diffusers' [0, 1] image x (see the tolerance)."""
    diff = np.asarray(genai_u8, dtype=np.float64) - np.asarray(diffusers_float) * 255.0
    assert diff.shape == (SIZE, SIZE, 3)
    assert diff.min() > -1.0 - FLOAT_TOLERANCE_LEVELS, diff.min()
    assert diff.max() <= FLOAT_TOLERANCE_LEVELS, diff.max()


def test_taesd_in_genai_equals_diffusers(vae_builds):
    import openvino as ov
    import openvino_genai as ov_genai
    import torch
    from diffusers import AutoencoderTiny, LatentConsistencyModelPipeline

    vae: Any = AutoencoderTiny.from_pretrained(str(vae_builds["taesd"])).eval()
    pipe = _genai_f32(vae_builds["dirs"]["taesd"])
    reference: Any = LatentConsistencyModelPipeline.from_pretrained(
        str(vae_builds["tiny"]), vae=vae, safety_checker=None
    )
    reference.set_progress_bar_config(disable=True)

    # The decoder alone, on the same latents, with genai's pre- and post-processing.
    latents = np.random.default_rng(0).standard_normal((1, 4, SIZE // 8, SIZE // 8)) * 3
    latents = latents.astype(np.float32)
    ours = np.asarray(pipe.decode(ov.Tensor(latents)).data)[0]
    with torch.no_grad():
        decoded = vae.decode(torch.from_numpy(latents) / vae.config.scaling_factor).sample
    expected = reference.image_processor.postprocess(decoded, output_type="np")[0]
    assert ours.std() > 10  # a decode with contrast, so the comparison means something
    _assert_floor_of(ours, expected)

    # End to end: genai's TorchGenerator draws the noise torch.Generator draws.
    ours = np.asarray(
        pipe.generate(
            PROMPT,
            width=SIZE,
            height=SIZE,
            num_inference_steps=4,
            guidance_scale=GUIDANCE,
            generator=ov_genai.TorchGenerator(5),
        ).data[0]
    )
    expected = reference(
        PROMPT,
        num_inference_steps=4,
        guidance_scale=GUIDANCE,
        width=SIZE,
        height=SIZE,
        generator=torch.Generator().manual_seed(5),
        output_type="np",
    ).images[0]
    _assert_floor_of(ours, expected)
