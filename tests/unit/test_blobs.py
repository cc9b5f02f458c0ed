"""Compiled-model blob folders (worker/render/blobs.py): keyed by everything a compiled model
depends on, written atomically, and imported only while nothing has touched them; the
pipeline compiles (with a warning) when a folder is stale, corrupt or will not import."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from worker.model.verified import VerifyMode
from worker.render import blobs
from worker.render import pipeline as pipeline_module
from worker.render.blobs import (
    BLOB_FILES,
    RECORD,
    BlobKey,
    BlobState,
    blob_root,
    check_blobs,
    export_blobs,
    import_config,
    key_config,
)
from worker.render.pipeline import CompileOptions, GenaiPipeline, LoadKind

KEY = BlobKey(
    model_sha256="a" * 64,
    pipeline="latent_consistency_model",
    width=512,
    height=512,
    guidance_scale=8.0,
    devices=("CPU", "CPU", "CPU"),
    device_ids=("CPU: Some Xeon [BF16 FP32 INT8]",),
    config=(("INFERENCE_NUM_THREADS", "2"),),
    openvino="2026.4.1-x",
    genai="2026.4.1.0-y",
)


def write_blobs(tmp: Path) -> None:
    """What genai's export_model calls write: one blob per component."""
    for i, rel in enumerate(BLOB_FILES.values()):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(bytes([i]) * (1000 + i))


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    folder = KEY.folder(tmp_path / "blobs")
    assert export_blobs(folder, KEY, write_blobs)
    return folder


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "b" * 64},
        {"pipeline": "stable_diffusion"},
        {"width": 768},
        {"height": 768},
        {"guidance_scale": 1.0},
        {"devices": ("GPU", "CPU", "CPU")},
        {"device_ids": ("CPU: Another CPU [FP32 INT8]",)},
        {"config": (("INFERENCE_PRECISION_HINT", "f32"),)},
        {"openvino": "2026.5.0-z"},
        {"genai": "2026.5.0.0-z"},
    ],
)
def test_every_input_of_a_compiled_model_changes_the_folder(change: dict[str, Any], tmp_path):
    other = dataclasses.replace(KEY, **change)
    assert other.digest() != KEY.digest()
    assert other.folder(tmp_path) != KEY.folder(tmp_path)


def test_folder_names_the_size_class_and_is_stable(tmp_path):
    assert KEY.folder(tmp_path) == tmp_path / f"512x512-{KEY.digest()[:20]}"
    assert dataclasses.replace(KEY).digest() == KEY.digest()


def test_cache_dir_is_not_part_of_the_key_nor_of_an_import():
    config = {"INFERENCE_NUM_THREADS": 2, "CACHE_DIR": "/c", "ENABLE_CPU_PINNING": False}
    assert key_config(config) == (("ENABLE_CPU_PINNING", "False"), ("INFERENCE_NUM_THREADS", "2"))
    assert import_config(config) == {"INFERENCE_NUM_THREADS": 2, "ENABLE_CPU_PINNING": False}


def test_blobs_live_under_the_cache_dir_unless_off():
    assert blob_root("/var/cache/ov", True) == str(Path("/var/cache/ov") / "blobs")
    assert blob_root("/var/cache/ov", False) == ""
    assert blob_root("", True) == ""


def test_component_devices_follow_the_text_encoder_device():
    assert CompileOptions().component_devices() == ("CPU", "CPU", "CPU")
    options = CompileOptions(device="GPU", text_encoder_device="CPU")
    assert options.component_devices() == ("CPU", "GPU", "GPU")


def test_an_export_is_valid_and_leaves_no_temporary_folder(exported: Path):
    assert check_blobs(exported, KEY).state is BlobState.VALID
    assert check_blobs(exported, KEY, VerifyMode.FULL).state is BlobState.VALID
    record = json.loads((exported / RECORD).read_text())
    assert record["key"] == KEY.as_dict()
    assert sorted(record["files"]) == sorted(BLOB_FILES.values())
    assert [p.name for p in exported.parent.iterdir()] == [exported.name]


def test_no_folder_is_missing(tmp_path):
    assert check_blobs(KEY.folder(tmp_path), KEY).state is BlobState.MISSING


def test_a_folder_made_for_other_inputs_is_stale(exported: Path):
    other = dataclasses.replace(KEY, openvino="2026.5.0-z")
    check = check_blobs(exported, other)
    assert check.state is BlobState.STALE
    assert "openvino" in check.reason


@pytest.mark.parametrize("how", ["resized", "replaced", "removed", "touched"])
def test_a_blob_changed_after_its_export_is_corrupt(exported: Path, how: str):
    blob = exported / BLOB_FILES[blobs.Component.UNET]
    if how == "resized":
        with open(blob, "ab") as f:
            f.write(b"\0")
    elif how == "replaced":
        data = blob.read_bytes()
        blob.unlink()
        blob.write_bytes(data[::-1])
    elif how == "removed":
        blob.unlink()
    else:
        st = blob.stat()
        os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    check = check_blobs(exported, KEY)
    assert check.state is BlobState.CORRUPT
    assert "unet" in check.reason


def test_full_mode_hashes_the_blobs(exported: Path):
    record_path = exported / RECORD
    record = json.loads(record_path.read_text())
    record["files"][BLOB_FILES[blobs.Component.VAE]]["sha256"] = "0" * 64
    record_path.write_text(json.dumps(record))
    assert check_blobs(exported, KEY, VerifyMode.MARKER).state is BlobState.VALID
    check = check_blobs(exported, KEY, VerifyMode.FULL)
    assert check.state is BlobState.CORRUPT and "sha256" in check.reason


@pytest.mark.parametrize("record", [None, "not json", '{"format_version": 1}'])
def test_a_missing_or_unreadable_record_is_corrupt(exported: Path, record: str | None):
    if record is None:
        (exported / RECORD).unlink()
    else:
        (exported / RECORD).write_text(record)
    assert check_blobs(exported, KEY).state is BlobState.CORRUPT


def test_a_failed_export_leaves_nothing(tmp_path, caplog):
    folder = KEY.folder(tmp_path / "blobs")

    def half(tmp: Path) -> None:
        (tmp / "unet").mkdir()
        (tmp / BLOB_FILES[blobs.Component.UNET]).write_bytes(b"x")
        raise RuntimeError("disk full")

    with caplog.at_level(logging.WARNING):
        assert not export_blobs(folder, KEY, half)
    assert "disk full" in caplog.text
    assert not any((tmp_path / "blobs").iterdir())


def test_an_export_replaces_a_corrupt_folder_and_keeps_a_valid_one(exported: Path):
    (exported / RECORD).unlink()
    assert export_blobs(exported, KEY, write_blobs)
    assert check_blobs(exported, KEY).valid
    before = (exported / RECORD).read_bytes()
    assert export_blobs(exported, KEY, write_blobs)  # another process exported meanwhile
    assert (exported / RECORD).read_bytes() == before


# ------------------------------------------------- how the pipeline uses them (no OpenVINO)


class Component:
    def __init__(self, origin: str) -> None:
        self.origin = origin

    def export_model(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        name = (
            "vae_decoder/openvino_model.blob" if folder.endswith("vae") else "openvino_model.blob"
        )
        (Path(folder) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(self.origin.encode() * 100)


@pytest.fixture
def fake_genai(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The pipeline's genai calls replaced: records what was compiled and imported."""
    calls: dict[str, Any] = {"compiled": 0, "imported": 0, "import_error": None}

    def compile_components(path, width, height, guidance, options):
        calls["compiled"] += 1
        calls["compile_options"] = options
        return (Component("c"), Component("c"), Component("c"))

    def import_components(path, folder, options):
        calls["imported"] += 1
        if calls["import_error"]:
            raise RuntimeError(calls["import_error"])
        return (Component("i"), Component("i"), Component("i"))

    monkeypatch.setattr(pipeline_module, "compile_components", compile_components)
    monkeypatch.setattr(pipeline_module, "import_components", import_components)
    monkeypatch.setattr(pipeline_module, "blob_key", lambda *a: KEY)
    monkeypatch.setattr(pipeline_module, "assemble", lambda path, components: components)
    return calls


def load(tmp_path: Path, **options: Any) -> GenaiPipeline:
    artifact = tmp_path / "artifact"
    artifact.mkdir(exist_ok=True)
    (artifact / "model_index.json").write_text('{"_class_name": "LatentConsistencyModelPipeline"}')
    pipe = GenaiPipeline.__new__(GenaiPipeline)
    pipe._compile(
        tmp_path / "artifact",
        512,
        512,
        8.0,
        False,
        CompileOptions(
            cache_dir=str(tmp_path / "cache"), blob_dir=str(tmp_path / "blobs"), **options
        ),
        model_sha256=KEY.model_sha256,
    )
    return pipe


def test_first_start_compiles_without_the_cache_and_exports_then_the_next_imports(
    tmp_path, fake_genai
):
    first = load(tmp_path)
    assert first.loaded is LoadKind.COMPILED and fake_genai["compiled"] == 1
    # OpenVINO cannot import what it exports from a cache-loaded model: compiled afresh.
    assert fake_genai["compile_options"].cache_dir == ""
    assert check_blobs(KEY.folder(tmp_path / "blobs"), KEY).valid
    second = load(tmp_path)
    assert second.loaded is LoadKind.IMPORTED
    assert fake_genai == {**fake_genai, "compiled": 1, "imported": 1}
    assert second.blob_folder == KEY.folder(tmp_path / "blobs")


def test_a_corrupt_folder_is_compiled_with_a_warning_and_exported_again(
    tmp_path, fake_genai, caplog
):
    load(tmp_path)
    folder = KEY.folder(tmp_path / "blobs")
    with open(folder / BLOB_FILES[blobs.Component.UNET], "ab") as f:
        f.write(b"!")
    with caplog.at_level(logging.WARNING):
        pipe = load(tmp_path)
    assert pipe.loaded is LoadKind.COMPILED and fake_genai["imported"] == 0
    assert "were exported" in caplog.text and "compiling instead" in caplog.text
    assert check_blobs(folder, KEY).valid


def test_a_folder_that_will_not_import_is_compiled_with_a_warning(tmp_path, fake_genai, caplog):
    load(tmp_path)
    fake_genai["import_error"] = "Unable to read the model"
    with caplog.at_level(logging.WARNING):
        pipe = load(tmp_path)
    assert pipe.loaded is LoadKind.COMPILED and fake_genai["compiled"] == 2
    assert "Unable to read the model" in caplog.text and "compiling instead" in caplog.text
    # ... and exported anew (it looked valid: kept as it was, it would fail at every start).
    fake_genai["import_error"] = None
    assert load(tmp_path).loaded is LoadKind.IMPORTED and fake_genai["compiled"] == 2


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LCM_CACHE_DIR": "/c"}, "/c/blobs"),
        ({"LCM_CACHE_DIR": "/c", "LCM_BLOB_CACHE": "false"}, ""),
        ({"LCM_CACHE_DIR": ""}, ""),
    ],
)
def test_the_worker_keeps_blobs_under_its_cache_dir(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
):
    from lcm_fleet.artifact.manifest import Manifest
    from worker.model.artifact import ServedModel
    from worker.runtime import Runtime
    from worker.settings import WorkerSettings

    for name in list(os.environ):
        if name.startswith("LCM_"):
            monkeypatch.delenv(name)
    for name, value in {
        "LCM_MODEL_DIR": "/m",
        "LCM_S3_ACCESS_KEY_ID": "k",
        "LCM_S3_SECRET_ACCESS_KEY": "s",
        "LCM_ARTIFACT_VERIFY": "full",
        **env,
    }.items():
        monkeypatch.setenv(name, value)
    model = ServedModel(path=Path("/m"), manifest=Manifest.model_construct(), width=64, height=64)
    spec = Runtime(WorkerSettings(), model).render_spec()
    assert spec.blob_dir == (str(Path(expected)) if expected else "")
    assert spec.blob_verify is VerifyMode.FULL
