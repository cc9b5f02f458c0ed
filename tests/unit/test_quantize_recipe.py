"""The INT8 recipes recorded in manifests are exactly what NNCF is given."""

from __future__ import annotations

import nncf
from nncf.quantization.range_estimator import RangeEstimatorParametersSet

from model_build.quantize import UNET_INT8_RECIPE, nncf_quantize_arguments
from model_build.vae_decoder import INT8_RECIPE


def test_unet_recipe_keeps_lcm_quality_settings():
    args = nncf_quantize_arguments(UNET_INT8_RECIPE)
    assert args["model_type"] is nncf.ModelType.TRANSFORMER
    assert args["preset"] is nncf.QuantizationPreset.MIXED
    advanced = args["advanced_parameters"]
    assert advanced.disable_bias_correction is True
    assert advanced.overflow_fix is nncf.OverflowFix.ENABLE


def test_vae_recipe_adds_minmax_activation_ranges():
    advanced = nncf_quantize_arguments(INT8_RECIPE)["advanced_parameters"]
    assert advanced.activations_range_estimator_params == RangeEstimatorParametersSet.MINMAX
    assert advanced.overflow_fix is nncf.OverflowFix.ENABLE


def test_keys_a_recipe_lacks_take_nncf_defaults():
    args = nncf_quantize_arguments({"model_type": None, "preset": "PERFORMANCE"})
    assert "model_type" not in args
    assert args["preset"] is nncf.QuantizationPreset.PERFORMANCE
    default = nncf.AdvancedQuantizationParameters()
    advanced = args["advanced_parameters"]
    assert advanced.overflow_fix == default.overflow_fix
    assert advanced.disable_bias_correction == default.disable_bias_correction
