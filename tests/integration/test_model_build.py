"""model_build on the tiny model: determinism, the tokenizer's IR, the INT8 artifact's manifest."""

from __future__ import annotations

import json

import pytest

from lcm_fleet.artifact.manifest import read_manifest, verify_files
from tests.integration.conftest import run_cli


def test_int8_artifact_manifest(model_dirs):
    manifest = read_manifest(model_dirs["int8"])
    verify_files(model_dirs["int8"], manifest)
    data = manifest.as_dict()
    assert data["precision"] == "int8-unet"
    q = data["quantization"]
    assert (q["model_type"], q["preset"], q["disable_bias_correction"]) == (
        "TRANSFORMER",
        "MIXED",
        True,
    )
    assert q["samples"] == 40 and q["calibration"]["width"] == 128
    assert data["fake_quantize_count"] > 0
    assert data["shape"] == {"width": 128, "height": 128, "batch": 1, "guidance_scale": 8.0}
    assert data["model"]["guidance"] == "embedding"
    assert data["source"]["kind"] == "local" and len(data["source"]["content_sha256"]) == 64
    assert data["versions"]["nncf"] and data["versions"]["openvino"]
    quality = data["quality"]
    assert quality["passed"] is True and quality["override"] is None
    assert quality["images"] == 40 and quality["psnr_db_mean"] > 25 and quality["ssim_mean"] > 0.9
    assert data["speed"]["candidate"]["unet_s"] > 0 and data["speed"]["reference"]["pipeline_s"] > 0
    # Text encoder and VAE stay as exported; only the UNet changed.
    fp32 = read_manifest(model_dirs["fp32"]).files
    assert (
        manifest.files["text_encoder/openvino_model.bin"] == fp32["text_encoder/openvino_model.bin"]
    )
    assert (
        manifest.files["vae_decoder/openvino_model.bin"] == fp32["vae_decoder/openvino_model.bin"]
    )
    assert manifest.files["unet/openvino_model.bin"] != fp32["unet/openvino_model.bin"]


def test_tiny_build_is_deterministic(model_dirs, tmp_path):
    run_cli("model_build.cli", "tiny", str(tmp_path / "again"))
    first = {
        p.relative_to(model_dirs["tiny"]): p.read_bytes()
        for p in model_dirs["tiny"].rglob("*")
        if p.is_file()
    }
    second = {
        p.relative_to(tmp_path / "again"): p.read_bytes()
        for p in (tmp_path / "again").rglob("*")
        if p.is_file()
    }
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_tiny_model_family(model_dirs):
    unet = json.loads((model_dirs["tiny"] / "unet" / "config.json").read_text())
    assert unet["time_cond_proj_dim"] == 256
    sched = json.loads((model_dirs["tiny"] / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "LCMScheduler" and sched["original_inference_steps"] == 50
    vae = json.loads((model_dirs["tiny"] / "vae" / "config.json").read_text())
    assert len(vae["block_out_channels"]) == 4  # 8x downsampling


@pytest.mark.parametrize(
    "prompt",
    ["a red cube on a blue table", "Portrait, 85mm f/1.4 -- golden hour!!", "zebra über café"],
)
def test_openvino_tokenizer_matches_hf(model_dirs, prompt):
    import numpy as np
    import openvino as ov
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops)
    from transformers import CLIPTokenizer

    hf = CLIPTokenizer.from_pretrained(str(model_dirs["tiny"] / "tokenizer"))
    expected = hf(prompt, max_length=77, truncation=True).input_ids  # genai pads itself
    compiled = ov.Core().compile_model(
        str(model_dirs["fp32"] / "tokenizer" / "openvino_tokenizer.xml")
    )
    ids = compiled([prompt])["input_ids"][0]
    assert list(np.asarray(ids)) == expected


def test_build_rejects_bad_source(tmp_path):
    out = run_cli(
        "model_build.cli", "build", str(tmp_path / "nope"), str(tmp_path / "out"), check=False
    )
    assert out.returncode == 2
    assert "neither an existing folder nor a hub id" in out.stderr
    (tmp_path / "folder").mkdir()
    out = run_cli(
        "model_build.cli", "export", str(tmp_path / "folder"), str(tmp_path / "o2"), check=False
    )
    assert out.returncode == 2 and "without model_index.json" in out.stderr
