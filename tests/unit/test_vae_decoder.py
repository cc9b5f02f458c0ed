"""--vae-decoder: option checks, the CLI's refusals, genai's decoder conventions, worker check."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from lcm_fleet.artifact.manifest import FORMAT, Manifest
from model_build import cli
from model_build.calibration import CalibrationSpec
from model_build.errors import BuildInputError
from model_build.vae_decoder import (
    VAE_DECODERS,
    VaeDecoderOptions,
    check_taesd_fits,
    decoder_inputs,
    precision_label,
    scale_factor,
)

#: The SD decoder config fields genai reads (LCM_Dreamshaper_v7's VAE).
SD_VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latent_channels": 4,
    "out_channels": 3,
}
#: diffusers' default AutoencoderTiny config (TAESD), as taesd_config writes it.
TAESD = {
    "block_out_channels": [64, 64, 64, 64],
    "decoder_block_out_channels": [64, 64, 64, 64],
    "upsampling_scaling_factor": 2,
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
    "latent_channels": 4,
    "out_channels": 3,
}


def test_kinds_and_precisions_come_from_the_kernel_enums():
    from lcm_fleet.artifact.kinds import BuildPrecision, VaeDecoderKind, names
    from model_build.build import PRECISIONS

    assert names(VaeDecoderKind) == VAE_DECODERS
    assert names(BuildPrecision) == PRECISIONS  # build.py's own tuple, until it uses the enum


def test_default_is_the_sd_decoder():
    options = VaeDecoderOptions()
    options.check()
    assert options.kind == "sd" and not options.needs_latents
    assert VAE_DECODERS == ("sd", "int8-weights", "int8", "taesd")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (VaeDecoderOptions(kind="fp8"), "vae_decoder='fp8' is not one of sd, int8-weights"),
        (VaeDecoderOptions(kind="taesd"), "--vae-decoder taesd needs --taesd SOURCE"),
        (VaeDecoderOptions(kind="int8", taesd="a/b"), "only used with --vae-decoder taesd"),
        (VaeDecoderOptions(kind="sd", samples=4), "--vae-samples 4 is only used with"),
        (VaeDecoderOptions(kind="int8", samples=0), "vae_samples=0 must be at least 1"),
        (VaeDecoderOptions(kind="taesd", taesd="not a hub id"), "neither an existing folder"),
    ],
)
def test_bad_options_name_the_field_and_the_fix(options, message):
    with pytest.raises(BuildInputError, match=re.escape(message)):
        options.check()


def test_taesd_folder_needs_a_config(tmp_path):
    with pytest.raises(BuildInputError, match=r"without config\.json"):
        VaeDecoderOptions(kind="taesd", taesd=str(tmp_path)).check()
    (tmp_path / "config.json").write_text("{}")
    VaeDecoderOptions(kind="taesd", taesd=str(tmp_path)).check()
    VaeDecoderOptions(kind="taesd", taesd="madebyollin/taesd").check()  # a hub id


def test_precision_label():
    assert precision_label("int8-unet", "sd") == "int8-unet"
    assert precision_label("int8-unet", "taesd") == "int8-unet+vae-taesd"
    assert precision_label("fp32", "int8-weights") == "fp32+vae-int8-weights"


def test_decoder_inputs_follow_genais_preprocessing():
    latents = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    np.testing.assert_allclose(decoder_inputs(latents, SD_VAE), latents / 0.18215, rtol=1e-6)
    shifted = {"scaling_factor": 0.5, "shift_factor": 0.25}
    np.testing.assert_allclose(decoder_inputs(latents, shifted), latents / 0.5 + 0.25)
    assert decoder_inputs(latents, {}).dtype == np.float32  # no fields: unchanged


def test_scale_factor_as_genai_derives_it():
    assert scale_factor(SD_VAE) == 8 and scale_factor(TAESD) == 8
    assert scale_factor({"block_out_channels": [32, 32]}) == 2


def test_taesd_fits_the_sd_latents():
    check_taesd_fits(TAESD, SD_VAE, unet_in=4)
    with pytest.raises(BuildInputError, match="latent_channels=4, the UNet makes 16"):
        check_taesd_fits(TAESD, SD_VAE, unet_in=16)
    four_x = {**TAESD, "block_out_channels": [64] * 3, "decoder_block_out_channels": [64] * 3}
    with pytest.raises(BuildInputError, match="upsamples 4x"):
        check_taesd_fits(four_x, SD_VAE, unet_in=4)
    with pytest.raises(BuildInputError, match="factor 2 per block"):
        check_taesd_fits({**TAESD, "upsampling_scaling_factor": 4}, SD_VAE, unet_in=4)
    with pytest.raises(BuildInputError, match="out_channels=1"):
        check_taesd_fits({**TAESD, "out_channels": 1}, SD_VAE, unet_in=4)


def test_one_capture_pass_renders_for_the_larger_need():
    spec = CalibrationSpec(width=64, height=64, samples=200, steps=4, vae_samples=8)
    assert spec.prompts_needed() == 50  # the UNet's 200 calls need more renders
    assert spec.prompts_needed(unet=False) == 8
    assert CalibrationSpec(samples=8, steps=4, vae_samples=5).prompts_needed() == 5
    with pytest.raises(BuildInputError, match="vae_samples=-1"):
        CalibrationSpec(width=64, height=64, vae_samples=-1).check()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vae-decoder", "taesd"], "needs --taesd SOURCE"),
        (["--taesd", "some/taesd"], "--taesd 'some/taesd' is only used with --vae-decoder taesd"),
        (["--vae-samples", "4"], "--vae-samples 4 is only used with --vae-decoder int8"),
    ],
)
def test_cli_refuses_bad_vae_options_with_exit_2(tmp_path, capsys, args, message):
    code = cli.main(["quantize", str(tmp_path / "ir"), str(tmp_path / "out"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_worker_refuses_an_unknown_vae_decoder(tmp_path):
    from worker.errors import ModelLoadError
    from worker.model.artifact import check_vae_decoder

    def manifest(**data):
        files = {"a": {"sha256": "0" * 64, "bytes": 0}}
        return Manifest.model_validate(
            {"format": FORMAT, "format_version": 1, "files": files, **data}
        )

    assert check_vae_decoder(manifest(), tmp_path) == "sd"  # artifacts before the option
    assert check_vae_decoder(manifest(vae_decoder={"kind": "taesd"}), tmp_path) == "taesd"
    with pytest.raises(ModelLoadError, match=r"vae_decoder kind 'vq-gan'.* upgrade the worker"):
        check_vae_decoder(manifest(vae_decoder={"kind": "vq-gan"}), tmp_path)


def test_vae_decoder_module_is_light():
    """The worker imports it (VAE_DECODERS): no OpenVINO, numpy or build packages at import."""
    code = "import sys, model_build.vae_decoder; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in out.stdout.split()}
    assert not loaded & {"openvino", "numpy", "torch", "diffusers", "nncf", "optimum"}
