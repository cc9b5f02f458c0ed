"""Versioned artifacts in the real S3 (SeaweedFS): publish, list, resolve, pull, worker start."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lcm_fleet.artifact.manifest import write_manifest
from lcm_fleet.artifact.registry import Registry, UnknownModelError
from lcm_fleet.backoff import Backoff
from lcm_fleet.errors import StorageError
from lcm_fleet.keys import alias_key, object_key
from lcm_fleet.storage import ObjectStore
from model_build.registry import list_versions, publish
from tests.integration.conftest import run_module, worker_check, worker_env

FAST = Backoff(base_s=0.01, cap_s=0.02, attempts=2)
#: Below the tiny model's larger files (~0.5-0.9 MB), so both upload paths are exercised.
SMALL_THRESHOLD = 256 * 1024


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"registry-test-{uuid.uuid4().hex[:8]}/"


@pytest.fixture(scope="module")
def bucket(service_env: dict[str, str]) -> str:
    return service_env["LCM_S3_BUCKET"]


@pytest.fixture(scope="module")
def registry(s3: Any, bucket: str, prefix: str) -> Registry:
    return Registry(ObjectStore(s3, bucket), prefix)


def _registry(client: Any, bucket: str, prefix: str, backoff: Backoff | None = None) -> Registry:
    return Registry(ObjectStore(client, bucket, backoff), prefix)


@pytest.fixture(scope="module")
def published(model_dirs: dict[str, Path], registry: Registry) -> Any:
    return publish(
        registry,
        model_dirs["int8"],
        "tiny",
        progress=False,
        large_file_bytes=SMALL_THRESHOLD,
    )


def _fake_artifact(folder: Path, content: bytes, **info: Any) -> Path:
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "openvino_model.bin").write_bytes(content)
    (folder / "unet" / "openvino_model.xml").write_text("<net/>")
    (folder / "model_index.json").write_text("{}")
    write_manifest(
        folder,
        {"precision": "int8-unet", "shape": {"width": 64, "height": 64, "batch": 1}, **info},
    )
    return folder


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return dict(s3.head_object(Bucket=bucket, Key=key))
    except Exception as e:
        if "404" in str(e) or "Not Found" in str(e):
            return None
        raise


def _alias(s3: Any, bucket: str, prefix: str, name: str) -> dict[str, Any] | None:
    key = alias_key(prefix, name)
    if _head(s3, bucket, key) is None:
        return None
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


class _Wrapper:
    """The real client, with hooks around the calls the registry makes."""

    def __init__(self, client: Any, fail_key_suffix: str | None = None) -> None:
        self._client = client
        self._fail = fail_key_suffix
        self.downloads = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _maybe_fail(self, key: str) -> None:
        if self._fail and key.endswith(self._fail):
            raise ConnectionError(f"simulated outage while uploading {key}")

    def put_object(self, **kwargs: Any) -> Any:
        self._maybe_fail(kwargs["Key"])
        return self._client.put_object(**kwargs)

    def upload_file(self, filename: str, bucket: str, key: str, **kwargs: Any) -> Any:
        self._maybe_fail(key)
        return self._client.upload_file(filename, bucket, key, **kwargs)

    def download_file(self, bucket: str, key: str, filename: str, **kwargs: Any) -> Any:
        with self._lock:
            self.downloads += 1
        return self._client.download_file(bucket, key, filename, **kwargs)


def _registry_worker_env(
    service_env: dict[str, str], tmp: Path, prefix: str, model: str
) -> dict[str, str]:
    env = worker_env(service_env, tmp / "unused", tmp, "q")
    del env["LCM_MODEL_DIR"]
    env.update(LCM_MODEL=model, LCM_MODEL_CACHE_DIR=str(tmp / "model-cache"), LCM_S3_PREFIX=prefix)
    return env


def test_publish_uploads_every_file_then_the_alias(published, model_dirs, s3, bucket, prefix):
    raw = (model_dirs["int8"] / "manifest.json").read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    assert published.version == sha[:16] and published.manifest_sha256 == sha
    manifest = json.loads(raw)
    assert published.files == len(manifest["files"]) + 1
    assert published.uploaded == published.files and published.skipped == 0
    for rel, entry in manifest["files"].items():
        head = _head(s3, bucket, object_key(prefix, "tiny", published.version, rel))
        assert head is not None, rel
        assert head["ContentLength"] == entry["bytes"]
        assert head["Metadata"]["sha256"] == entry["sha256"]
    alias = _alias(s3, bucket, prefix, "tiny")
    assert alias == {
        "name": "tiny",
        "version": published.version,
        "manifest_sha256": sha,
        "published_at": published.published_at,
    }
    assert published.uri == f"s3://{bucket}/{prefix}models/tiny/{published.version}/"


def test_list_shows_it_as_latest(published, model_dirs, registry):
    rows = list_versions(registry, "tiny")
    assert [r["version"] for r in rows] == [published.version]
    row = rows[0]
    assert row["latest"] and row["aliases"] == ["latest"] and row["intact"]
    assert row["precision"] == "int8-unet"
    assert row["shape"]["width"] == row["shape"]["height"]
    assert row["published_at"] == published.published_at
    manifest = json.loads((model_dirs["int8"] / "manifest.json").read_text())
    assert row["quality"] == manifest.get("quality") and row["speed"] == manifest.get("speed")
    assert "tiny" in {r["name"] for r in list_versions(registry)}


def test_republish_is_idempotent(published, model_dirs, registry, s3, bucket, prefix):
    before = {
        rel: _head(s3, bucket, object_key(prefix, "tiny", published.version, rel))
        for rel in ("manifest.json", "unet/openvino_model.bin")
    }
    again = publish(
        registry,
        model_dirs["int8"],
        "tiny",
        progress=False,
        large_file_bytes=SMALL_THRESHOLD,
    )
    assert again.version == published.version
    assert again.uploaded == 0 and again.skipped == published.files
    for rel, head in before.items():
        after = _head(s3, bucket, object_key(prefix, "tiny", published.version, rel))
        assert after is not None and head is not None
        assert after["ETag"] == head["ETag"] and after["LastModified"] == head["LastModified"]
    assert _alias(s3, bucket, prefix, "tiny")["version"] == published.version  # type: ignore[index]


def test_worker_pulls_latest_then_refuses_a_corrupted_cache(
    published, service_env, tmp_path, prefix
):
    env = _registry_worker_env(service_env, tmp_path, prefix, "tiny@latest")
    out = worker_check(env)
    assert out.returncode == 0, out.stderr
    cached = tmp_path / "model-cache" / "tiny" / published.version
    assert f"ok: {cached}" in out.stdout
    assert (cached / "manifest.json").is_file()
    assert not [p for p in cached.parent.iterdir() if ".partial-" in p.name]

    target = cached / "unet" / "openvino_model.bin"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    out = worker_check(env)
    assert out.returncode == 2, out.stdout
    assert "unet/openvino_model.bin: sha256" in out.stderr
    assert f"delete the folder {cached}" in out.stderr

    shutil.rmtree(cached)  # what the message says to do: the next start downloads afresh
    pinned = _registry_worker_env(service_env, tmp_path, prefix, f"tiny@{published.version}")
    out = worker_check(pinned)
    assert out.returncode == 0, out.stderr


def test_worker_refuses_unknown_model(published, service_env, tmp_path, prefix):
    out = worker_check(_registry_worker_env(service_env, tmp_path, prefix, "nosuch@latest"))
    assert out.returncode == 2
    assert "unknown model name 'nosuch'" in out.stderr and "tiny" in out.stderr
    out = worker_check(_registry_worker_env(service_env, tmp_path, prefix, "tiny@0000000000000000"))
    assert out.returncode == 2
    assert "unknown version '0000000000000000'" in out.stderr
    assert published.version in out.stderr
    out = worker_check(_registry_worker_env(service_env, tmp_path, prefix, "Tiny@latest"))
    assert out.returncode == 2
    assert "LCM_MODEL='Tiny@latest'" in out.stderr and "a-z, 0-9" in out.stderr


def test_unknown_name_version_and_alias(published, registry, tmp_path):
    with pytest.raises(UnknownModelError, match=r"unknown model name 'nosuch'.*tiny"):
        registry.resolve("nosuch@latest")
    with pytest.raises(UnknownModelError, match=r"unknown version '0123456789abcdef'"):
        registry.resolve("tiny@0123456789abcdef")
    with pytest.raises(UnknownModelError, match=r"no alias 'stable'.*versions: "):
        registry.resolve("tiny@stable")
    with pytest.raises(UnknownModelError, match="unknown model name 'nosuch'"):
        list_versions(registry, "nosuch")
    with pytest.raises(UnknownModelError):
        registry.pull("nosuch@latest", tmp_path / "cache")
    assert registry.resolve("tiny@latest") == ("tiny", published.version)
    assert registry.resolve(f"tiny@{published.version}") == ("tiny", published.version)


def test_interrupted_publish_never_moves_the_alias(registry, s3, bucket, prefix, tmp_path):
    # A name with no published version: the alias must not appear.
    fresh = _fake_artifact(tmp_path / "fresh", b"\x01" * 3000)
    failing = _registry(_Wrapper(s3, fail_key_suffix="/manifest.json"), bucket, prefix, FAST)
    with pytest.raises(StorageError, match="simulated outage"):
        publish(failing, fresh, "halfway", progress=False)
    assert _alias(s3, bucket, prefix, "halfway") is None
    with pytest.raises(UnknownModelError, match="no alias 'latest'"):
        registry.resolve("halfway@latest")
    assert list_versions(registry, "halfway") == []  # data without manifest: hidden

    # A name with a published version: the alias keeps pointing at it.
    v1 = publish(registry, fresh, "halfway", progress=False)
    assert v1.uploaded == 1 and v1.skipped == v1.files - 1  # only the manifest was missing
    alias_before = _alias(s3, bucket, prefix, "halfway")
    second = _fake_artifact(tmp_path / "second", b"\x02" * 3000)
    with pytest.raises(StorageError, match="simulated outage"):
        publish(failing, second, "halfway", progress=False)
    assert _alias(s3, bucket, prefix, "halfway") == alias_before
    assert [r["version"] for r in list_versions(registry, "halfway")] == [v1.version]
    assert registry.resolve("halfway@latest") == ("halfway", v1.version)


def test_list_shows_quality_and_speed_and_latest_moves(registry, tmp_path):
    quality = {"psnr_db": 41.5, "ssim": 0.97, "mean_abs_diff": 0.8, "passed": True}
    speed = {"it_per_s": 3.2, "device": "CPU"}
    v1 = publish(registry, _fake_artifact(tmp_path / "a", b"a" * 100), "scored", progress=False)
    v2 = publish(
        registry,
        _fake_artifact(tmp_path / "b", b"b" * 100, quality=quality, speed=speed),
        "scored",
        progress=False,
    )
    rows = {r["version"]: r for r in list_versions(registry, "scored")}
    assert set(rows) == {v1.version, v2.version}
    assert not rows[v1.version]["latest"] and rows[v1.version]["quality"] is None
    assert rows[v2.version]["latest"]
    assert rows[v2.version]["quality"] == quality and rows[v2.version]["speed"] == speed


def test_concurrent_pulls_download_once(registry, s3, bucket, prefix, tmp_path):
    result = publish(
        registry,
        _fake_artifact(tmp_path / "art", os.urandom(200_000)),
        "shared",
        progress=False,
    )
    counting = _Wrapper(s3)
    cache = tmp_path / "cache"
    pulling = _registry(counting, bucket, prefix)
    with ThreadPoolExecutor(max_workers=4) as pool:
        paths = list(pool.map(lambda _: pulling.pull("shared@latest", cache), range(4)))
    assert set(paths) == {cache / "shared" / result.version}
    assert counting.downloads == result.files - 1  # every data file once; manifest by GET
    assert sorted(p.name for p in (cache / "shared").iterdir()) == [
        f".{result.version}.lock",
        result.version,
    ]
    # A pinned version already in the cache needs no store at all.
    assert _registry(None, bucket, prefix).pull(f"shared@{result.version}", cache) == paths[0]


def test_pull_refuses_a_tampered_object(registry, s3, bucket, prefix, tmp_path):
    result = publish(
        registry,
        _fake_artifact(tmp_path / "art", b"\x07" * 5000),
        "tampered",
        progress=False,
    )
    key = object_key(prefix, "tampered", result.version, "unet/openvino_model.bin")
    s3.put_object(Bucket=bucket, Key=key, Body=b"\x08" * 5000)
    cache = tmp_path / "cache"
    with pytest.raises(StorageError, match=r"unet/openvino_model.bin: downloaded"):
        _registry(s3, bucket, prefix, FAST).pull("tampered@latest", cache)
    assert [p.name for p in (cache / "tampered").iterdir()] == [f".{result.version}.lock"]


def test_cli_publish_and_list(service_env, prefix, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LCM_")}
    env.update(service_env, LCM_S3_PREFIX=prefix)
    art = _fake_artifact(
        tmp_path / "art",
        b"c" * 1000,
        quality={"psnr_db_min": 39.25, "ssim_min": 0.98, "passed": True, "failures": []},
        speed={"unet_speedup": 1.8, "reference": {"unet_s": 0.2}},
    )
    out = run_module("model_build.cli", "publish", str(art), "from-cli", "--no-progress", env=env)
    assert out.returncode == 0, out.stderr
    version = hashlib.sha256((art / "manifest.json").read_bytes()).hexdigest()[:16]
    assert f"published from-cli@{version}" in out.stdout
    assert f"s3://{service_env['LCM_S3_BUCKET']}/{prefix}models/from-cli/{version}/" in out.stdout

    out = run_module("model_build.cli", "list", "from-cli", env=env)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "VERSION", "LATEST", "PRECISION"]
    assert row.split()[:5] == ["from-cli", version, "*", "int8-unet", "64x64"]
    assert row.endswith("PSNR min 39.25 dB, SSIM min 0.98, passed  unet x1.8")

    out = run_module("model_build.cli", "list", "--json", env=env)
    assert out.returncode == 0 and "from-cli" in {r["name"] for r in json.loads(out.stdout)}

    assert run_module("model_build.cli", "list", "no-such-model", env=env).returncode == 2
    bad = run_module("model_build.cli", "publish", str(art), "Bad Name", env=env)
    assert bad.returncode == 2 and "name='Bad Name' is not a valid model name" in bad.stderr
    no_creds = {k: v for k, v in env.items() if k != "LCM_S3_SECRET_ACCESS_KEY"}
    out = run_module("model_build.cli", "publish", str(art), "from-cli", env=no_creds)
    assert out.returncode == 2 and "LCM_S3_SECRET_ACCESS_KEY" in out.stderr
