"""The quality gate: figures, contact sheet, failure exit code, recorded override, precisions."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from lcm_fleet.artifact.manifest import read_manifest
from tests.integration.conftest import run_cli


def test_int8_build_writes_quality_and_contact_sheet(model_dirs):
    quality = json.loads((model_dirs["int8"] / "quality.json").read_text())
    assert quality["evaluation"]["prompt_count"] == 20 and quality["evaluation"]["seeds"] == [0, 1]
    assert len(quality["per_image"]) == 40
    first = quality["per_image"][0]
    assert set(first) == {"prompt", "seed", "psnr_db", "ssim", "mean_abs_diff"}
    assert quality["gate"]["passed"] is True
    sheet = Image.open(model_dirs["int8"] / "contact_sheet.png")
    assert sheet.width > 3 * 128 and sheet.height > 40 * 128
    # The difference column of the first row is dark but not black: INT8 changes pixels.
    row = np.asarray(sheet.convert("RGB"))[24 : 24 + 128]
    diff = row[:, 4 + 2 * (128 + 4) : 4 + 2 * (128 + 4) + 128]
    assert 0 < diff.mean() < 64


def test_gate_failure_exits_3_and_records_it(model_dirs, tmp_path):
    out = run_cli(
        "model_build.cli",
        "quantize",
        str(model_dirs["fp32"]),
        str(tmp_path / "c"),
        "--precision",
        "fp16",
        "--eval-seeds",
        "1",
        "--no-progress",
        env={"LCM_GATE_MIN_PSNR_DB": "200"},
        check=False,
    )
    assert out.returncode == 3, out.stderr
    assert "LCM_GATE_MIN_PSNR_DB=200.0" in out.stderr and "contact_sheet.png" in out.stderr
    quality = read_manifest(tmp_path / "c").as_dict()["quality"]
    assert quality["passed"] is False and quality["override"] is None
    # A worker refuses it.
    from worker.errors import ModelLoadError
    from worker.model.artifact import verify_artifact

    try:
        verify_artifact(tmp_path / "c")
    except ModelLoadError as e:
        assert "failed the quality gate" in str(e)
    else:
        raise AssertionError("a worker must refuse an artifact that failed its gate")


def test_gate_override_is_recorded(model_dirs, tmp_path):
    out = run_cli(
        "model_build.cli",
        "quantize",
        str(model_dirs["fp32"]),
        str(tmp_path / "c"),
        "--precision",
        "fp16",
        "--eval-seeds",
        "1",
        "--no-progress",
        "--accept-below-gate",
        "checked by eye: ticket 42",
        env={"LCM_GATE_MIN_PSNR_DB": "200"},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    quality = read_manifest(tmp_path / "c").as_dict()["quality"]
    assert quality["passed"] is False and quality["override"] == "checked by eye: ticket 42"


def test_fp32_candidate_is_identical(model_dirs, tmp_path):
    run_cli(
        "model_build.cli",
        "quantize",
        str(model_dirs["fp32"]),
        str(tmp_path / "c"),
        "--precision",
        "fp32",
        "--eval-seeds",
        "1",
        "--no-progress",
    )
    data = read_manifest(tmp_path / "c").as_dict()
    assert data["precision"] == "fp32" and data["quality"]["mean_abs_diff_mean"] == 0.0


def test_candidate_below_the_gate_is_not_published(model_dirs, tmp_path, service_env):
    out = run_cli(
        "model_build.cli",
        "quantize",
        str(model_dirs["fp32"]),
        str(tmp_path / "c"),
        "--precision",
        "fp16",
        "--eval-seeds",
        "1",
        "--no-progress",
        env={"LCM_GATE_MIN_PSNR_DB": "200"},
        check=False,
    )
    assert out.returncode == 3
    published = run_cli(
        "model_build.cli",
        "publish",
        str(tmp_path / "c"),
        "gate-failed",
        env=service_env,
        check=False,
    )
    assert published.returncode == 2
    assert "failed the quality gate" in published.stderr
    listed = run_cli("model_build.cli", "list", "gate-failed", env=service_env, check=False)
    assert "gate-failed" not in listed.stdout or "no published" in (listed.stdout + listed.stderr)
