import json

import pytest

from lcm_fleet.artifact.manifest import MANIFEST_NAME, read_manifest, verify_files, write_manifest
from lcm_fleet.errors import ManifestError
from worker.errors import ModelLoadError
from worker.model.artifact import verify_artifact


@pytest.fixture
def artifact(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "openvino_model.bin").write_bytes(b"\x00" * 1000)
    (tmp_path / "unet" / "openvino_model.xml").write_text("<net/>")
    (tmp_path / "unet" / "config.json").write_text('{"time_cond_proj_dim": 256}')
    write_manifest(tmp_path, {"shape": {"width": 128, "height": 96, "batch": 1}})
    return tmp_path


def test_manifest_lists_every_file_with_hash(artifact):
    m = read_manifest(artifact)
    assert set(m.files) == {
        "unet/openvino_model.bin",
        "unet/openvino_model.xml",
        "unet/config.json",
    }
    assert m.files["unet/openvino_model.bin"]["bytes"] == 1000
    assert len(m.sha256) == 64
    assert m.versions["openvino"]
    verify_files(artifact, m)


def test_one_flipped_byte_is_refused(artifact):
    path = artifact / "unet" / "openvino_model.bin"
    data = bytearray(path.read_bytes())
    data[500] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"unet/openvino_model.bin: sha256 .* manifest says"):
        verify_artifact(artifact)


def test_missing_and_extra_files_are_refused(artifact):
    (artifact / "unet" / "openvino_model.xml").unlink()
    (artifact / "extra.bin").write_bytes(b"1")
    with pytest.raises(ManifestError) as info:
        verify_files(artifact, read_manifest(artifact))
    assert "unet/openvino_model.xml: missing" in str(info.value)
    assert "extra.bin: not listed" in str(info.value)


def test_no_manifest(tmp_path):
    with pytest.raises(ModelLoadError, match="not an lcm-fleet artifact"):
        verify_artifact(tmp_path)


def test_incompatible_format_version(artifact):
    path = artifact / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="format_version=99"):
        verify_artifact(artifact)


def test_newer_openvino_is_refused(artifact):
    path = artifact / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["versions"]["openvino"] = "2099.1.0"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"built with openvino 2099\.1\.0"):
        verify_artifact(artifact)


def test_shape_from_manifest_or_settings(artifact):
    assert (verify_artifact(artifact).width, verify_artifact(artifact).height) == (128, 96)
    served = verify_artifact(artifact, 64, 64)
    assert (served.width, served.height) == (64, 64)


def test_failed_quality_gate_is_refused_unless_overridden(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    failed = {"passed": False, "override": None, "failures": ["mean PSNR 10 dB < 20"]}
    write_manifest(tmp_path, {"shape": {"width": 64, "height": 64}, "quality": failed})
    with pytest.raises(ModelLoadError, match=r"failed the quality gate .*mean PSNR 10 dB"):
        verify_artifact(tmp_path)
    write_manifest(
        tmp_path,
        {"shape": {"width": 64, "height": 64}, "quality": {**failed, "override": "ok by eye"}},
    )
    assert verify_artifact(tmp_path).width == 64


def test_guidance_regime_comes_from_the_unet(artifact):
    served = verify_artifact(artifact)
    assert (served.cfg, served.guidance_scale) == (False, 8.0)
