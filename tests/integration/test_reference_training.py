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
