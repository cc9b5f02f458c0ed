"""The verified marker (worker/model/verified.py): unchanged files skip the hashes, any
change to a file's bytes is still hashed and refused before serving."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import lcm_fleet.artifact.manifest as manifest_module
from lcm_fleet.artifact.manifest import read_manifest, write_manifest
from worker.errors import ModelLoadError
from worker.model import verified
from worker.model.artifact import ServedModel
from worker.model.source import verify_model
from worker.model.verified import VerifyMode
from worker.settings import WorkerSettings


@pytest.fixture
def artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "artifact"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "openvino_model.bin").write_bytes(os.urandom(4096))
    (folder / "model_index.json").write_text("{}")
    write_manifest(folder, {"shape": {"width": 64, "height": 64}})
    old = time.time() - 60  # written a minute ago: settled
    for path in folder.rglob("*"):
        os.utime(path, (old, old))
    monkeypatch.setattr(verified, "SETTLE_S", 0.0)
    return folder


def settings_for(tmp_path: Path, mode: VerifyMode = VerifyMode.MARKER) -> WorkerSettings:
    return WorkerSettings(
        model_dir=tmp_path / "artifact",
        model_cache_dir=tmp_path / "cache",
        artifact_verify=mode,
        s3_access_key_id="k",  # type: ignore[arg-type]
        s3_secret_access_key="s",  # type: ignore[arg-type]
    )


def served(folder: Path) -> ServedModel:
    return ServedModel(path=folder, manifest=read_manifest(folder), width=64, height=64)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files hashed, in order (sha256_file still runs)."""
    seen: list[Path] = []
    real = manifest_module.sha256_file

    def counting(path: Path, progress=None) -> str:  # type: ignore[no-untyped-def]
        seen.append(Path(path))
        return real(path, progress)

    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    return seen


def test_a_second_start_with_unchanged_files_hashes_nothing(
    artifact: Path, tmp_path: Path, hashes: list[Path]
) -> None:
    settings = settings_for(tmp_path)
    verify_model(settings, served(artifact))
    assert len(hashes) == 2
    marker = verified.marker_path(settings.model_cache_dir, artifact, read_manifest(artifact))
    assert marker.is_file()
    verify_model(settings, served(artifact))
    assert len(hashes) == 2  # the marker stood in for the hashes


def test_a_changed_byte_with_its_mtime_restored_is_still_refused(
    artifact: Path, tmp_path: Path, hashes: list[Path]
) -> None:
    settings = settings_for(tmp_path)
    verify_model(settings, served(artifact))
    weights = artifact / "unet" / "openvino_model.bin"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    time.sleep(0.02)  # past the file system's coarse timestamp tick
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before
    assert weights.stat().st_mtime_ns == st.st_mtime_ns and weights.stat().st_size == st.st_size
    with pytest.raises(ModelLoadError, match="sha256"):
        verify_model(settings, served(artifact))
    assert len(hashes) == 4  # hashed again, and refused


def test_a_replaced_or_added_file_is_hashed_again(
    artifact: Path, tmp_path: Path, hashes: list[Path]
) -> None:
    settings = settings_for(tmp_path)
    verify_model(settings, served(artifact))
    index = artifact / "model_index.json"
    st = index.stat()
    replacement = artifact / "replacement.tmp"
    replacement.write_text("{}")
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    replacement.replace(index)  # same bytes, size and mtime; another inode
    verify_model(settings, served(artifact))
    assert len(hashes) == 4
    (artifact / "extra.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="not listed"):
        verify_model(settings, served(artifact))


def test_full_mode_hashes_at_every_start_and_writes_no_marker(
    artifact: Path, tmp_path: Path, hashes: list[Path]
) -> None:
    settings = settings_for(tmp_path, VerifyMode.FULL)
    verify_model(settings, served(artifact))
    verify_model(settings, served(artifact))
    assert len(hashes) == 4
    assert not (settings.model_cache_dir / verified.MARKER_DIR).exists()


def test_no_marker_for_files_changed_just_now(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verified, "SETTLE_S", 3600.0)
    settings = settings_for(tmp_path)
    verify_model(settings, served(artifact))
    assert not (settings.model_cache_dir / verified.MARKER_DIR).exists()
