"""bench.pipeline in smoke mode (tiny model, 128x128): every path runs and reports figures.

Checks the shape of the result only, never a timing: the benchmark measures, it does not
judge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATHS = (
    "pytorch_fp32",
    "ov_default",
    "ov_f32",
    "ov_int8_worker",
    "ov_int8_vae_int8w",
    "ov_int8_vae_int8",
    "ov_int8_vae_taesd",
    "ov_int8_tome",
    "ov_int8_tome_taesd",
)
STAGES = ("total_s", "text_encoder_s", "unet_s", "vae_s")
#: openvino.genai reports the text encoder's and the VAE decoder's durations in whole
#: milliseconds: the tiny model's take under 1 ms on a fast CPU and read 0 there.
WHOLE_MS_STAGES = ("text_encoder_s", "vae_s")


@pytest.mark.slow
def test_bench_pipeline_smoke(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.pipeline.run",
            "--tiny",
            "--size",
            "128",
            "--work-dir",
            str(tmp_path / "work"),
            "--results-dir",
            str(results),
            # One reference build (a few minutes), not one per option: the glue is the same.
            "--gates",
            "ov_int8_tome",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [json_path] = results.glob("pipeline-*-tiny.json")
    assert json_path.with_suffix(".md").is_file()
    result = json.loads(json_path.read_text())
    assert result["config"]["size"] == 128 and result["config"]["model"] == "tiny"
    assert set(result["paths"]) == set(PATHS)
    for key in PATHS:
        path = result["paths"][key]
        assert len(path["runs"]) >= 3, key
        median = path["median"]
        for stage in STAGES:
            coarse = key != "pytorch_fp32" and stage in WHOLE_MS_STAGES
            assert median[stage] >= 0 if coarse else median[stage] > 0, (key, stage, median)
        assert path["peak_rss_gib"] > 0 and path["load_s"] > 0, key
        assert path["speedup_total"] > 0 and path["speedup_unet"] > 0, key
    assert result["paths"]["pytorch_fp32"]["speedup_total"] == 1.0
    assert result["paths"]["ov_int8_worker"]["precision"] == "default"
    # The token-merging path says whether the reference model's --tome build passed its gate;
    # a path that is no build option, or whose gate was not run, says None.
    assert isinstance(result["paths"]["ov_int8_tome"]["gate_passed"], bool)
    assert result["build"]["reference_gates"]["ov_int8_tome"]["options"] == ["--tome", "0.5"]
    assert result["paths"]["pytorch_fp32"]["gate_passed"] is None
    assert result["paths"]["ov_int8_tome_taesd"]["gate_passed"] is None
    quantize = result["build"]["quantize"]
    assert quantize["fake_quantize_count"] > 0 and quantize["peak_rss_gib"] > 0
    assert result["machine"]["cpu_model"] and result["machine"]["ram_gib"] > 0
    assert "| INT8 UNet, worker path" in proc.stdout
    assert result["build"]["ov_int8_vae_int8"]["fake_quantize_count"] > 0
    assert "| INT8 UNet + TAESD decoder (random), worker path" in proc.stdout


@pytest.mark.slow
def test_bench_priority_smoke(reference_artifact: Path, tmp_path: Path) -> None:
    """bench.priority end to end on a small batch (about 15 s once the reference artifact is
    built, which the slow tier does anyway): every phase and goal is reported."""
    from tests.integration.conftest import TEST_REDIS_URL, TEST_S3_PORT

    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    env["LCM_REDIS_URL"] = TEST_REDIS_URL
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench.priority.run", "--bulk", "30", "--interactive", "4",
            "--pace-s", "0.2", "--artifact", str(reference_artifact),
            "--work-dir", str(tmp_path / "work"), "--results-dir", str(results),
            # SeaweedFS of its own, beside the session's (which takes TEST_S3_PORT..+9).
            "--s3-port", str(TEST_S3_PORT + 10),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [json_path] = results.glob("priority-64x64-b30-k4-*.json")
    assert json_path.with_suffix(".md").is_file()
    report = json.loads(json_path.read_text())
    assert set(report["phases"]) == {"idle", "bulk", "mixed"}
    for name in ("idle", "mixed"):
        phase = report["phases"][name]
        assert phase["latency"]["n"] == 4 and len(phase["interactive"]) == 4
        assert all(i["finished_at"] > i["submitted_at"] for i in phase["interactive"])
    for name in ("bulk", "mixed"):
        bulk = report["phases"][name]["bulk"]
        assert bulk["jobs"] == bulk["images"] == 30 and bulk["images_per_s"] > 0
    assert {"interactive_goal_met", "bulk_throughput_ratio"} <= set(report["goals"])
    assert report["machine"]["isa"] is not None and report["workers"] == 1
