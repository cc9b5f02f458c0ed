import hashlib
import json
from pathlib import Path

import pytest

from lcm_fleet.artifact.kinds import VaeDecoderKind
from lcm_fleet.artifact.manifest import (
    FORMAT,
    MANIFEST_NAME,
    ArtifactInfo,
    Manifest,
    hash_files,
    read_manifest,
    tool_versions,
    verify_files,
    write_manifest,
)
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
    assert m.files["unet/openvino_model.bin"].bytes == 1000
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


# --- the typed manifest reads and writes format_version 1 unchanged -----------------------

#: Manifests written by model_build before the typed manifest (tiny LCM: the fp32 export,
#: the INT8 candidate, an fp16 candidate with a TAESD decoder kept below the gate).
REAL = sorted((Path(__file__).parent / "data" / "manifests").glob("*.json"))
#: Sections model_build writes that none of the tiny builds above has: a fused LoRA source,
#: prompt adherence, an INT8 VAE decoder and its calibration, a hybrid recipe.
WRITTEN_BY_BUILD = {
    "source": {
        "kind": "lcm-lora-fused",
        "base": {"kind": "hub", "id": "runwayml/stable-diffusion-v1-5", "revision": "main"},
        "lora": {"kind": "hub", "id": "latent-consistency/lcm-lora-sdv1-5", "revision": "main"},
        "lora_scale": 1.0,
        "lora_tensors": 834,
        "scheduler": "LCMScheduler",
        "pipeline_class": "StableDiffusionPipeline",
        "fp32_manifest_sha256": "ab" * 32,
    },
    "precision": "hybrid+vae-int8",
    "fake_quantize_count": 0,
    "quantization": {
        "method": "optimum-intel hybrid",
        "calibration": {"prompts": "calibration", "prompts_used": 7, "width": 512, "height": 512},
    },
    "vae_decoder": {
        "kind": "int8",
        "method": "nncf.quantize (post-training)",
        "samples": 12,
        "fake_quantize_count": 40,
        "calibration": {"renders": 12},
    },
    "quality": {
        "images": 40,
        "psnr_db_mean": None,
        "psnr_db_min": None,
        "ssim_mean": 1.0,
        "ssim_min": 1.0,
        "mean_abs_diff_mean": 0.0,
        "mean_abs_diff_max": 0.0,
        "passed": True,
        "override": None,
        "failures": [],
        "adherence_fp32_pct": 91.5,
        "adherence_pct": 90,
        "adherence_drop_points": 1.5,
    },
    "speed": {"reference": {"unet_s": 1}, "candidate": {"unet_s": 0.25}, "unet_speedup": 4.0},
    "build": {"durations_s": {"export": 3, "quantize": 41.25}, "peak_rss_gib": 6.5},
    "shape": {"width": 512, "height": 512, "batch": 1, "guidance_scale": 1},
    "model": {"guidance": "cfg", "unet_in_channels": 4, "unet_time_cond_proj_dim": None},
    "a_future_section": {"anything": [1, 2.5, None]},
}


def _old_write_manifest(folder, info):
    """What write_manifest wrote before the typed manifest (lcm_fleet at defc9c4)."""
    manifest = {
        "format": FORMAT,
        "format_version": 1,
        **info,
        "versions": tool_versions(),
        "files": hash_files(folder),
    }
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def _info_of(raw: bytes) -> dict:
    data = json.loads(raw)
    return {
        k: v for k, v in data.items() if k not in ("format", "format_version", "versions", "files")
    }


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.stem)
def test_a_manifest_written_before_reads_and_dumps_to_the_same_bytes(path, tmp_path):
    raw = path.read_bytes()
    manifest = Manifest.from_bytes(raw)
    assert manifest.to_json().encode() == raw
    assert manifest.sha256 == hashlib.sha256(raw).hexdigest()
    assert manifest.as_dict() == json.loads(raw)
    (tmp_path / MANIFEST_NAME).write_bytes(raw)
    assert read_manifest(tmp_path).sha256 == manifest.sha256


def test_real_manifests_cover_the_sections_the_build_writes():
    stems = {p.stem for p in REAL}
    assert {"tiny-fp32-export", "tiny-int8", "tiny-fp16-taesd-override"} <= stems
    fp32 = Manifest.from_bytes((REAL[0].parent / "tiny-fp32-export.json").read_bytes())
    assert fp32.precision == "fp32" and fp32.quantization is None and fp32.quality is None
    assert fp32.export is not None and fp32.export.weight_format == "fp32"
    int8 = Manifest.from_bytes((REAL[0].parent / "tiny-int8.json").read_bytes())
    assert int8.quantization is not None and int8.quantization.calibration is not None
    assert int8.quantization.calibration.prompts == "calibration"
    assert int8.fake_quantize_count and int8.fake_quantize_count > 0
    assert int8.quality is not None and int8.quality.passed and int8.quality.serveable
    assert int8.speed is not None and int8.speed.reference is not None
    assert int8.shape is not None and (int8.shape.width, int8.shape.height) == (128, 128)
    assert int8.model is not None and int8.model.guidance == "embedding"
    assert int8.build is not None and "quantize" in int8.build.durations_s
    assert int8.vae_decoder is not None and int8.vae_decoder.known_kind is VaeDecoderKind.SD
    taesd = Manifest.from_bytes((REAL[0].parent / "tiny-fp16-taesd-override.json").read_bytes())
    assert taesd.vae_decoder_kind == "taesd" and taesd.quality is not None
    assert taesd.quality.passed is False and taesd.quality.override and taesd.quality.serveable
    assert taesd.gate_refusal("serve", "x") is None


@pytest.mark.parametrize(
    "info",
    [*(_info_of(p.read_bytes()) for p in REAL), WRITTEN_BY_BUILD, {}],
    ids=[*(p.stem for p in REAL), "written-by-build", "empty"],
)
def test_writing_the_same_info_gives_the_same_bytes(info, artifact):
    expected = _old_write_manifest(artifact, info)
    write_manifest(artifact, info)
    assert (artifact / MANIFEST_NAME).read_text() == expected
    write_manifest(artifact, ArtifactInfo.model_validate(info))  # the typed way, same bytes
    assert (artifact / MANIFEST_NAME).read_text() == expected
    assert read_manifest(artifact).info().as_dict() == info


def test_ints_floats_and_nulls_are_kept_as_written(artifact):
    write_manifest(artifact, WRITTEN_BY_BUILD)
    m = read_manifest(artifact)
    assert m.shape is not None and m.shape.guidance_scale == 1
    assert isinstance(m.shape.guidance_scale, int)
    assert m.quality is not None and m.quality.psnr_db_mean is None
    assert "psnr_db_mean" in m.quality.as_dict() and "override" in m.quality.as_dict()
    assert m.model is not None and "unet_cross_attention_dim" not in m.model.as_dict()
    assert m.as_dict()["a_future_section"] == {"anything": [1, 2.5, None]}
    assert m.source is not None and m.source.kind == "lcm-lora-fused"
    assert m.derived_source()["fp32_manifest_sha256"] == m.sha256
    assert m.derived_source()["lora_scale"] == 1.0


def test_a_value_of_the_wrong_type_is_refused_on_write_and_on_read(artifact):
    with pytest.raises(ManifestError, match=r"shape\.width"):
        write_manifest(artifact, {"shape": {"width": "wide", "height": 64}})
    path = artifact / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["quality"] = {"passed": "maybe"}
    path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=r"not a valid lcm-fleet manifest: quality\.passed"):
        verify_artifact(artifact)


def test_a_value_the_typed_manifest_would_change_is_refused(artifact):
    with pytest.raises(ManifestError, match="would not be written as given"):
        write_manifest(artifact, {"quality": {"images": 40.0}})


def test_the_gate_decision_and_its_one_message(artifact):
    def manifest(quality):
        write_manifest(artifact, {"quality": quality} if quality is not None else {})
        return read_manifest(artifact)

    assert manifest(None).gate_refusal("serve", artifact) is None  # no gate ran (fp32 export)
    assert manifest({"passed": True, "failures": []}).gate_refusal("publish", artifact) is None
    accepted = manifest({"passed": False, "override": "ok by eye", "failures": ["PSNR 9"]})
    assert accepted.quality is not None and accepted.quality.serveable
    failed = manifest({"passed": False, "override": None, "failures": ["PSNR 9", "SSIM 0.1"]})
    assert failed.quality is not None and not failed.quality.serveable
    for action in ("serve", "publish"):
        assert failed.gate_refusal(action, artifact) == (
            f"refusing to {action} {artifact}: it failed the quality gate at build time "
            "(PSNR 9; SSIM 0.1); rebuild it, or build it with --accept-below-gate REASON to "
            "accept it on record"
        )
