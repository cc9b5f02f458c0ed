"""Training the reference LCM: deterministic for a seed, and resumable after a hard kill.

A micro recipe (small image, few steps) keeps this fast; the full recipe is the same code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MICRO = {
    "image_size": 32,
    "per_scene": 1,
    "text_hidden": 32,
    "unet_channels": [16, 32],
    "vae_channels": [8, 16, 16, 16],
    "vae_steps": 20,
    "vae_batch": 4,
    "vae_crop": 16,
    "teacher_steps": 150,
    "teacher_batch": 8,
    "distill_steps": 20,
    "distill_batch": 8,
    "checkpoint_every": 25,
}
TRAIN = (
    "import json, sys\n"
    "from model_build.reference.train import Recipe, train_reference\n"
    "kw = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[2]).items()}\n"
    "train_reference(sys.argv[1], Recipe(**kw), threads=1, progress=False)\n"
)


def _train(out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN, str(out), json.dumps(MICRO)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _weights(folder: Path) -> dict[str, bytes]:
    files = sorted(folder.glob("*/*.safetensors"))
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder"}
    return {f"{f.parent.name}/{f.name}": f.read_bytes() for f in files}


def test_same_seed_same_weights_even_after_a_kill_mid_stage(tmp_path: Path) -> None:
    straight = _train(tmp_path / "straight")
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err.decode()[-2000:]

    interrupted = tmp_path / "interrupted"
    proc = _train(interrupted)
    checkpoint = interrupted / ".training" / "teacher.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before its teacher checkpoint could be caught"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (interrupted / "model_index.json").exists()
    assert (interrupted / ".training" / "vae.done.pt").exists()

    resumed = _train(interrupted)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert _weights(interrupted) == _weights(tmp_path / "straight")
    record = json.loads((interrupted / "reference.json").read_text())
    assert record["recipe"]["seed"] == 0 and record["split"]["held_out"]


def test_other_recipe_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    from model_build.errors import BuildInputError
    from model_build.reference.train import Recipe, train_reference

    (tmp_path / ".training").mkdir()
    (tmp_path / ".training" / "recipe.json").write_text(json.dumps({"seed": 5}))
    with pytest.raises(BuildInputError, match="another recipe"):
        train_reference(tmp_path, Recipe(), progress=False)


def test_a_text_length_shorter_than_the_grammar_is_refused_with_the_fix(tmp_path: Path) -> None:
    from model_build.errors import BuildInputError
    from model_build.reference.train import Recipe, train_reference

    with pytest.raises(BuildInputError, match=r"text_max_length=6: raise text_max_length"):
        train_reference(tmp_path, Recipe(text_max_length=6, per_scene=1), progress=False)
    assert not (tmp_path / "model_index.json").exists()


def test_vae_colour_error_reads_a_known_colour_shift() -> None:
    import torch

    from model_build.reference.domain import make_split, render_dataset
    from model_build.reference.train import _Data, vae_colour_error

    class ShiftingVae:
        """decode(encode(x)) = x + shift on the red channel (in [-1, 1] units)."""

        def __init__(self, shift: float) -> None:
            self.shift = shift

        def encode(self, x):
            return type("E", (), {"latent_dist": type("D", (), {"mean": x})()})()

        def decode(self, z):
            out = z.clone()
            out[:, 0] += self.shift
            return type("O", (), {"sample": out})()

    scenes = make_split(0).train_scenes()[:40]
    pixels, index = render_dataset(scenes, 2, 64, 0)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    data = _Data(images, torch.tensor(index), [s.caption for s in scenes], None, None)
    errors = vae_colour_error(ShiftingVae(10 / 127.5), data, scenes)
    assert set(errors) == {s.colour for s in scenes}
    # 10 levels of red everywhere (the palette's highest red, 240, stays below 255).
    assert all(abs(e - 10.0) < 0.2 for e in errors.values()), errors
    assert max(vae_colour_error(ShiftingVae(0.0), data, scenes).values()) == 0.0
