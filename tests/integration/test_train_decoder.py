"""``lcm-build train-decoder`` on the tiny model with a micro recipe: deterministic, resumable
after a stop to the same weights, and its output is an AutoencoderTiny that
``--vae-decoder taesd`` builds into an artifact; the reference model's shipped decoder passes
the gate (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lcm_fleet.artifact.manifest import read_manifest, verify_files
from tests.integration.conftest import ROOT, run_cli

WEIGHTS = "diffusion_pytorch_model.safetensors"
#: A few renders and steps: seconds on the tiny model, the same code as the shipped recipe.
MICRO: dict[str, Any] = {
    "steps": 8,
    "batch": 2,
    "seeds_per_prompt": 2,
    "render_steps": (1, 2),
    "eval_seeds": 1,
    "checkpoint_every": 3,
    "crop": 4,
}


class Stop(Exception):
    """Stands for a run stopped right after a checkpoint."""


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("decoder-prompts")
    (base / "train.txt").write_text("a red fox in snow\na lighthouse at dusk\n", encoding="utf-8")
    (base / "eval.txt").write_text("a blue boat on a lake\n", encoding="utf-8")
    return {"train": base / "train.txt", "eval": base / "eval.txt"}


def _train(model: Path, out: Path, prompts: dict[str, Path], resume: bool = False, **kw: Any):
    from model_build.train_decoder import DecoderRecipe, train_decoder

    return train_decoder(
        model,
        out,
        DecoderRecipe(**{**MICRO, **kw}),
        prompts=prompts["train"],
        eval_prompts=prompts["eval"],
        resume=resume,
        threads=1,
        progress=False,
    )


@pytest.fixture(scope="module")
def straight(
    model_dirs: dict[str, Path], prompts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("decoder") / "straight"
    _train(model_dirs["tiny"], out, prompts)
    return out


def test_same_seed_same_weights_and_a_resumed_run_ends_the_same(
    straight: Path,
    model_dirs: dict[str, Path],
    prompts: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from model_build.errors import BuildInputError
    from model_build.training import Checkpoints

    again = tmp_path / "again"
    _train(model_dirs["tiny"], again, prompts)
    assert (again / WEIGHTS).read_bytes() == (straight / WEIGHTS).read_bytes()

    # A run stopped right after its first checkpoint of the decoder stage (step 3 of 8).
    stopped = tmp_path / "stopped"
    save = Checkpoints.save

    def save_then_stop(self: Checkpoints, stage: str, state: dict, done: bool = False) -> None:
        save(self, stage, state, done)
        if stage == "decoder" and not done:
            raise Stop

    monkeypatch.setattr(Checkpoints, "save", save_then_stop)
    with pytest.raises(Stop):
        _train(model_dirs["tiny"], stopped, prompts)
    monkeypatch.setattr(Checkpoints, "save", save)
    assert not (stopped / WEIGHTS).exists()
    assert (stopped / ".training" / "data.done.pt").is_file()
    with pytest.raises(BuildInputError, match="pass --resume"):
        _train(model_dirs["tiny"], stopped, prompts)
    resumed = _train(model_dirs["tiny"], stopped, prompts, resume=True)
    assert resumed.resumed_from == {"decoder": 3}
    assert (stopped / WEIGHTS).read_bytes() == (straight / WEIGHTS).read_bytes()

    other = tmp_path / "other-seed"
    _train(model_dirs["tiny"], other, prompts, seed=1)
    assert (other / WEIGHTS).read_bytes() != (straight / WEIGHTS).read_bytes()


def test_output_is_an_autoencoder_tiny_of_the_models_scale_and_latents(
    straight: Path, model_dirs: dict[str, Path]
) -> None:
    import torch
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny.from_pretrained(str(straight))
    unet = json.loads((model_dirs["tiny"] / "unet" / "config.json").read_text())
    with torch.no_grad():
        image = vae.decode(torch.zeros(1, unet["in_channels"], 16, 16)).sample
    assert image.shape == (1, 3, 128, 128)  # 8x, the tiny VAE's factor
    record = json.loads((straight / "train-decoder.json").read_text())
    assert record["recipe"]["steps"] == MICRO["steps"] and record["threads"] == 1
    assert record["data"] == {"rendered": 4, "evaluation": 1}
    assert record["figures"]["images"] == 1 and record["weights_bytes"] > 0
    assert record["model"]["kind"] == "local"
    assert not (straight / ".training").exists()  # a finished run keeps no checkpoints


def test_trained_decoder_builds_with_vae_decoder_taesd(
    straight: Path, model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    prompts = tmp_path / "eval.txt"
    prompts.write_text("a lighthouse at dusk, oil painting\n", encoding="utf-8")
    out = tmp_path / "candidate"
    run_cli(
        *("model_build.cli", "quantize", str(model_dirs["fp32"]), str(out)),
        *("--precision", "fp32", "--vae-decoder", "taesd", "--taesd", str(straight)),
        *("--eval-prompts", str(prompts), "--eval-seeds", "1", "--speed-runs", "1"),
        *("--accept-below-gate", "a micro recipe on a random model", "--no-progress"),
    )
    manifest = read_manifest(out)
    verify_files(out, manifest)
    record = manifest.as_dict()["vae_decoder"]
    assert record["kind"] == "taesd" and record["conversion_max_abs_diff"] < 1e-3
    assert record["source"]["path"] == str(straight.resolve())


# The reference model's INT8 UNet with its shipped decoder (MODEL/taesd, found without
# --taesd): export, calibration, NNCF and the gate with adherence, as the demo's build.
@pytest.mark.slow
def test_reference_taesd_build_passes_the_gate(tmp_path: Path) -> None:
    weights = ROOT / "model_build" / "reference" / "weights"
    out = tmp_path / "reference-taesd"
    run_cli(
        *("model_build.cli", "build", str(weights), str(out)),
        *("--samples", "80", "--vae-decoder", "taesd", "--no-progress"),
    )
    quality = json.loads((out / "quality.json").read_text())
    assert quality["gate"]["passed"], quality["gate"]
    assert quality["adherence"]["drop_points"] <= 3.0
    manifest = read_manifest(out).as_dict()
    assert manifest["vae_decoder"]["source"]["path"] == str((weights / "taesd").resolve())
    assert manifest["precision"] == "int8-unet+vae-taesd"
