"""The worker refuses artifacts that do not match their manifest, before it serves."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.conftest import ROOT, worker_check, worker_env


def test_intact_artifact_passes_check(service_env, model_dirs, tmp_path):
    out = worker_check(worker_env(service_env, model_dirs["int8"], tmp_path, "q"))
    assert out.returncode == 0, out.stderr
    assert "ok:" in out.stdout


def _corrupted_copy(model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(model_dir, copy)
    target = copy / "unet" / "openvino_model.bin"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return copy


def test_one_corrupted_byte_is_refused(service_env, model_dirs, tmp_path):
    copy = _corrupted_copy(model_dirs["int8"], tmp_path)
    out = worker_check(worker_env(service_env, copy, tmp_path, "q"))
    assert out.returncode == 2
    assert "refusing to serve" in out.stderr
    assert "unet/openvino_model.bin: sha256" in out.stderr


def test_missing_secret_names_the_variable(service_env, model_dirs, tmp_path):
    env = worker_env(service_env, model_dirs["int8"], tmp_path, "q")
    del env["LCM_S3_SECRET_ACCESS_KEY"]
    out = worker_check(env)
    assert out.returncode == 2
    assert "LCM_S3_SECRET_ACCESS_KEY: Field required" in out.stderr


def test_missing_bucket_is_refused_at_start(service_env, model_dirs, tmp_path):
    env = worker_env(service_env, model_dirs["int8"], tmp_path, "q", LCM_S3_BUCKET="no-such-bucket")
    out = worker_check(env)
    assert out.returncode == 2
    assert "cannot use bucket 'no-such-bucket'" in out.stderr


def test_serving_worker_refuses_a_corrupted_artifact_and_stops_its_render_process(
    service_env, model_dirs, tmp_path
):
    # Serving (not --check), the render process starts compiling while the worker hashes the
    # files; a mismatch still refuses to start, and that render process goes with it.
    copy = _corrupted_copy(model_dirs["int8"], tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli"],
        cwd=ROOT,
        env=worker_env(service_env, copy, tmp_path, "q.refused"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "unet/openvino_model.bin: sha256" in out.stderr
    started = re.search(r"render process 0 started \(pid (\d+)\)", out.stderr)
    assert started, out.stderr[-2000:]
    assert " ready." not in out.stderr  # Celery never consumed
    pid = int(started.group(1))
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), f"render process {pid} outlived the worker"
