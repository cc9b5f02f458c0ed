"""An artifact encrypted at rest (`lcm-build encrypt`): served from memory with its key, the
same images as the plaintext artifact; refused without it, with another key, or tampered."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from lcm_fleet.artifact.manifest import read_manifest, write_manifest
from lcm_fleet.contract import Job
from producer.api import submit
from tests.integration.conftest import (
    run_cli,
    start_worker,
    stop_worker,
    worker_check,
    worker_env,
)
from worker.errors import ModelLoadError
from worker.model.artifact import verify_artifact
from worker.render.images import render
from worker.render.pipeline import GenaiPipeline

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()


@pytest.fixture(scope="module")
def encrypted(model_dirs, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("encrypted")
    (d / "model.key").write_text(KEY + "\n")
    run_cli(
        "model_build.cli",
        "encrypt",
        str(model_dirs["int8"]),
        str(d / "artifact"),
        "--key-file",
        str(d / "model.key"),
    )
    return d / "artifact"


def test_no_ir_file_is_stored_in_the_clear(encrypted, model_dirs):
    manifest = read_manifest(encrypted)
    plain = read_manifest(model_dirs["int8"])
    enc = manifest.encryption
    assert enc is not None and enc.algorithm == "AES-256-GCM"
    assert enc.plaintext_manifest_sha256 == plain.sha256
    ir = sorted(rel for rel in plain.files if rel.endswith((".xml", ".bin")))
    assert sorted(enc.plaintext) == ir and len(ir) >= 10
    assert {rel: plain.files[rel].sha256 for rel in ir} == enc.plaintext
    for rel in ir:
        assert not (encrypted / rel).exists()
        stored = (encrypted / (rel + ".enc")).read_bytes()
        assert (model_dirs["int8"] / rel).read_bytes()[:64] not in stored
    # the configs stay readable; the stored files' hashes are checked without the key
    assert (encrypted / "unet" / "config.json").read_bytes() == (
        model_dirs["int8"] / "unet" / "config.json"
    ).read_bytes()
    run_cli("model_build.cli", "verify", str(encrypted))


def test_served_from_memory_with_the_images_of_the_plaintext_artifact(
    encrypted, model_dirs, tmp_path
):
    before = sorted(p.name for p in encrypted.rglob("*"))
    job = Job(prompt="a lighthouse at dusk", seed=11, num_images=2)
    plain = GenaiPipeline(verify_artifact(model_dirs["int8"]), "CPU", "", "default")
    model = verify_artifact(encrypted, key=SecretStr(KEY))
    cache = tmp_path / "cache"
    pipe = GenaiPipeline(model, "CPU", str(cache), "default", blob_dir=str(cache / "blobs"))
    a, b = render(job, plain), render(job, pipe)
    for x, y in zip(a.images, b.images, strict=True):
        assert x.pixels.std() > 0 and np.array_equal(x.pixels, y.pixels)
    # nothing decrypted was written: neither beside the artifact nor in a compile cache or
    # a compiled-model blob
    assert sorted(p.name for p in encrypted.rglob("*")) == before
    assert not cache.exists() or not any(cache.iterdir())


def test_check_refuses_without_the_key_and_with_another_key(service_env, encrypted, tmp_path):
    out = worker_check(worker_env(service_env, encrypted, tmp_path, "q"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "encrypted" in out.stderr and "set LCM_MODEL_KEY" in out.stderr
    out = worker_check(worker_env(service_env, encrypted, tmp_path, "q", LCM_MODEL_KEY=OTHER_KEY))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "LCM_MODEL_KEY is not the key it was encrypted with" in out.stderr
    assert OTHER_KEY not in out.stderr + out.stdout
    out = worker_check(
        worker_env(service_env, encrypted, tmp_path, "q", LCM_MODEL_KEY="not-base64!")
    )
    assert out.returncode == 2 and "LCM_MODEL_KEY is not valid base64" in out.stderr
    out = worker_check(worker_env(service_env, encrypted, tmp_path, "q", LCM_MODEL_KEY=KEY))
    assert out.returncode == 0, out.stdout + out.stderr
    assert KEY not in out.stderr + out.stdout


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_refused_by_the_hash_check(service_env, encrypted, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(encrypted, copy)
    _flip(copy / "unet" / "openvino_model.bin.enc")
    out = worker_check(worker_env(service_env, copy, tmp_path, "q", LCM_MODEL_KEY=KEY))
    assert out.returncode == 2
    assert "unet/openvino_model.bin.enc: sha256" in out.stderr


def test_a_flipped_byte_with_a_rewritten_manifest_is_refused_by_the_tag(encrypted, tmp_path):
    # An attacker who can rewrite the manifest passes the hash check; AES-GCM does not.
    copy = tmp_path / "artifact"
    shutil.copytree(encrypted, copy)
    _flip(copy / "unet" / "openvino_model.bin.enc")
    write_manifest(copy, read_manifest(encrypted).info())
    model = verify_artifact(copy, key=SecretStr(KEY))
    with pytest.raises(ModelLoadError, match=r"unet/openvino_model.bin.enc does not decrypt"):
        GenaiPipeline(model, "CPU", "", "default")


def test_a_worker_serves_jobs_from_it(
    service_env, encrypted, worker, producer_settings, s3, tmp_path
):
    queue = f"lcm.test.enc.{uuid.uuid4().hex[:8]}"
    env = worker_env(service_env, encrypted, tmp_path, queue, LCM_MODEL_KEY=KEY)
    proc = start_worker(env, tmp_path / "worker.log")
    try:
        settings = producer_settings.model_copy(update={"queue": queue})
        a = submit("a red fox in snow", settings=settings, seed=3).wait(120)
        b = submit("a red fox in snow", settings=producer_settings, seed=3).wait(120)
    finally:
        assert stop_worker(proc) == 0
    pixels = [
        np.asarray(
            Image.open(
                io.BytesIO(
                    s3.get_object(Bucket=settings.s3_bucket, Key=r.images[0].key)["Body"].read()
                )
            ).convert("RGB")
        )
        for r in (a, b)
    ]
    assert np.array_equal(pixels[0], pixels[1])
    log = proc.log_text()
    assert KEY not in log and "compile cache and compiled-model blobs off" in log
    assert json.loads(json.dumps(a.model_dump(mode="json"))) and KEY not in json.dumps(
        a.model_dump(mode="json")
    )
    assert os.path.isdir(encrypted)
