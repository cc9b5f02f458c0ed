"""SD1.5 base + LCM-LoRA: fusion is exact, the fused folder exports and renders with genai."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_build.errors import BuildInputError
from model_build.lora import fuse_lcm_lora
from model_build.tiny import TinySpec, build_tiny_lora, build_tiny_sd15

SIZE = 64
SCALE = 0.8
STEPS = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lora")
    base = build_tiny_sd15(root / "base", TinySpec(image_size=SIZE))
    lora = build_tiny_lora(base, root / "lora")
    fused = root / "fused"
    source = fuse_lcm_lora(str(base), str(lora), fused, scale=SCALE)
    return {"root": root, "base": base, "lora": lora, "fused": fused, "source": source}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_tiny_sd15_and_lora_are_deterministic(models, tmp_path):
    from model_build.tiny import build_tiny

    base = build_tiny_sd15(tmp_path / "base", TinySpec(image_size=SIZE))
    assert _files(base) == _files(models["base"])
    assert _files(build_tiny_lora(base, tmp_path / "lora")) == _files(models["lora"])
    # The shared parts are build_tiny's, byte for byte; the UNet has no guidance input.
    lcm = _files(build_tiny(tmp_path / "lcm", TinySpec(image_size=SIZE)))
    for rel, data in _files(base).items():
        if rel.split("/")[0] in {"text_encoder", "tokenizer", "vae"}:
            assert lcm[rel] == data
    unet = json.loads((base / "unet" / "config.json").read_text())
    assert unet["time_cond_proj_dim"] is None
    sched = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "PNDMScheduler" and sched["skip_prk_steps"] is True


def _render(pipe: Any, **kwargs: Any) -> np.ndarray:
    import torch

    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a red fox in snow",
        num_inference_steps=STEPS,
        guidance_scale=1.0,
        width=SIZE,
        height=SIZE,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
        **kwargs,
    )
    return np.asarray(out.images[0])


def test_fused_folder_and_source(models):
    from safetensors.torch import load_file

    fused, base = models["fused"], models["base"]
    index = json.loads((fused / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    sched = json.loads((fused / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "LCMScheduler" and "skip_prk_steps" not in sched
    new = load_file(fused / "unet" / "diffusion_pytorch_model.safetensors")
    old = load_file(base / "unet" / "diffusion_pytorch_model.safetensors")
    assert new.keys() == old.keys()  # LoRA layers unloaded: plain UNet weights
    changed = [k for k in old if not np.array_equal(new[k].numpy(), old[k].numpy())]
    assert changed and all(k.rsplit(".", 2)[-2] in {"to_q", "to_k", "to_v", "0"} for k in changed)
    source = models["source"]
    assert source["base"]["kind"] == "local" and len(source["base"]["content_sha256"]) == 64
    assert source["lora"]["weight_name"] == "pytorch_lora_weights.safetensors"
    assert source["lora_scale"] == SCALE and source["scheduler"] == "LCMScheduler"
    assert source["pipeline_class"] == "StableDiffusionPipeline"


def test_fusion_equals_unfused_lora(models):
    import torch
    from diffusers import LCMScheduler, StableDiffusionPipeline

    fused = StableDiffusionPipeline.from_pretrained(str(models["fused"]), torch_dtype=torch.float32)
    assert isinstance(fused.scheduler, LCMScheduler)
    reference = StableDiffusionPipeline.from_pretrained(
        str(models["base"]), torch_dtype=torch.float32
    )
    reference.scheduler = LCMScheduler.from_config(reference.scheduler.config)
    plain = _render(reference)
    reference.load_lora_weights(str(models["lora"]))
    unfused = _render(reference, cross_attention_kwargs={"scale": SCALE})
    got = _render(fused)
    assert np.isfinite(got).all()
    assert np.abs(got - plain).max() > 5e-3  # the LoRA does something (~2.5e-2 here)
    np.testing.assert_allclose(got, unfused, rtol=0, atol=1e-5)


def test_fused_exports_and_renders_with_genai(models):
    import openvino_genai as ov_genai

    from model_build.export import export_ir

    ir = export_ir(str(models["fused"]), models["root"] / "ir")
    images = {}
    for guidance in (1.0, 2.0):
        pipe = ov_genai.Text2ImagePipeline(str(ir))
        pipe.reshape(1, SIZE, SIZE, guidance)
        pipe.compile("CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
        out = pipe.generate(
            "a red fox in snow",
            width=SIZE,
            height=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            generator=ov_genai.CppStdGenerator(7),
        )
        image = np.array(out.data[0], copy=True)
        assert image.shape == (SIZE, SIZE, 3)
        assert np.isfinite(image.astype(np.float64)).all() and image.std() > 1.0
        images[guidance] = image
    # Without a guidance input in the UNet, guidance > 1 is classifier-free guidance.
    assert not np.array_equal(images[1.0], images[2.0])


def _bad_lora(models: dict[str, Any], name: str, edit: Any) -> Path:
    from safetensors.torch import load_file, save_file

    tensors = load_file(models["lora"] / "pytorch_lora_weights.safetensors")
    path = models["root"] / f"bad-{name}.safetensors"
    save_file(edit(tensors), path, metadata={"format": "pt"})
    return path


def _renamed(tensors: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("unet.", "transformer."): v for k, v in tensors.items()}


def _half_renamed(tensors: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("up_blocks.1", "up_blocks.9"): v for k, v in tensors.items()}


def _narrowed(tensors: dict[str, Any]) -> dict[str, Any]:
    return {k: v[:, :-1].contiguous() if "lora.down" in k else v for k, v in tensors.items()}


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("scale", {"scale": 0.0}),
        ("scale", {"scale": 4.5}),
        ("scale", {"scale": float("nan")}),
        ("base", {"base": "{root}/nowhere"}),
        ("base", {"base": "{lora}"}),
        ("base", {"base": "not a hub id"}),
        ("lora", {"lora": "{root}/nowhere"}),
        ("lora", {"lora": "{base}/model_index.json"}),
        ("lora", {"lora": "{base}"}),
        ("weight_name", {"weight_name": "missing.safetensors"}),
        ("out_dir", {"out_dir": "{base}"}),
    ],
)
def test_bad_inputs_name_the_field(models, tmp_path, field, kwargs):
    args = {"base": str(models["base"]), "lora": str(models["lora"]), "out_dir": tmp_path / "o"}
    for key, value in kwargs.items():
        args[key] = value.format(**models) if isinstance(value, str) else value
    with pytest.raises(BuildInputError, match=rf"\b{field}="):
        fuse_lcm_lora(**args)


@pytest.mark.parametrize(
    ("name", "edit", "cause"),
    [
        ("renamed", _renamed, None),
        ("half", _half_renamed, None),
        ("narrow", _narrowed, RuntimeError),
    ],
)
def test_lora_keys_must_match_base(models, tmp_path, name, edit, cause):
    bad = _bad_lora(models, name, edit)
    with pytest.raises(BuildInputError, match=r"lora=.*(match|does not fit)") as info:
        fuse_lcm_lora(str(models["base"]), str(bad), tmp_path / "o")
    if cause is not None:
        assert isinstance(info.value.__cause__, cause)
    assert not (tmp_path / "o" / "model_index.json").exists()


def test_base_that_is_already_an_lcm(models, tmp_path):
    from model_build.tiny import build_tiny

    lcm = build_tiny(tmp_path / "lcm", TinySpec(image_size=SIZE))
    with pytest.raises(BuildInputError, match=r"base=.*already an LCM"):
        fuse_lcm_lora(str(lcm), str(models["lora"]), tmp_path / "o")
