"""NNCF post-training INT8 quantization of the UNet, with the settings that keep LCM quality."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from model_build.errors import QuantizeError

logger = logging.getLogger(__name__)

#: The recipe recorded in every INT8 manifest.
UNET_INT8_RECIPE: dict[str, Any] = {
    "method": "nncf.quantize (post-training)",
    "part": "unet",
    "mode": "int8",
    "model_type": "TRANSFORMER",
    "preset": "MIXED",
    "disable_bias_correction": True,
    # 7-bit weights in every layer: on CPUs without VNNI/AMX (AVX2, AVX-512 without VNNI)
    # OpenVINO documents that 8-bit dot products can saturate an intermediate buffer
    # (measured: docs/model-build.md#overflow-fix). An artifact is served on whatever CPUs a
    # fleet has, so it is built to be right on all of them.
    "overflow_fix": "ENABLE",
}


def count_fake_quantize(model: Any) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")


def nncf_quantize_arguments(recipe: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``nncf.quantize`` that ``recipe`` (a manifest recipe) names.

    Keys a recipe lacks take NNCF's defaults; the UNet's and the VAE decoder's INT8 recipes
    both go through here, so what a manifest records is what NNCF was given.
    """
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    advanced: dict[str, Any] = {}
    if "disable_bias_correction" in recipe:
        advanced["disable_bias_correction"] = recipe["disable_bias_correction"]
    if recipe.get("activations_range_estimator"):
        advanced["activations_range_estimator_params"] = getattr(
            RangeEstimatorParametersSet, recipe["activations_range_estimator"]
        )
    if recipe.get("overflow_fix"):
        advanced["overflow_fix"] = getattr(nncf.OverflowFix, recipe["overflow_fix"])
    arguments: dict[str, Any] = {
        "advanced_parameters": nncf.AdvancedQuantizationParameters(**advanced)
    }
    if recipe.get("model_type"):
        arguments["model_type"] = getattr(nncf.ModelType, recipe["model_type"])
    if recipe.get("preset"):
        arguments["preset"] = getattr(nncf.QuantizationPreset, recipe["preset"])
    return arguments


def quantize_unet(unet_xml: Path, samples: list[dict[str, Any]], out_xml: Path) -> int:
    """Quantize the UNet IR at ``unet_xml`` with ``samples``; save it at ``out_xml``.

    Returns the number of FakeQuantize operations in the result.
    """
    import nncf
    import openvino as ov

    if not samples:
        raise QuantizeError("no calibration samples: capture at least one UNet call")
    model = ov.Core().read_model(str(unet_xml))
    try:
        quantized = nncf.quantize(
            model,
            nncf.Dataset(samples),
            subset_size=len(samples),
            **nncf_quantize_arguments(UNET_INT8_RECIPE),
        )
    except Exception as e:
        raise QuantizeError(f"NNCF could not quantize {unet_xml}: {e}") from e
    fq = count_fake_quantize(quantized)
    if fq == 0:
        raise QuantizeError(f"NNCF inserted no FakeQuantize into {unet_xml}: nothing was quantized")
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    logger.info("UNet quantized: %d FakeQuantize operations -> %s", fq, out_xml)
    return fq
