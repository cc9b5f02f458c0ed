"""The named kinds an artifact and a worker agree on: VAE decoders, build and inference precisions.

``str`` enums, so a manifest or a setting holds the same text as before (``"int8"``) and
compares equal to it.
"""

from __future__ import annotations

from lcm_fleet.enums import TextEnum


class VaeDecoderKind(TextEnum):
    """How an artifact's VAE decoder was made (``lcm-build --vae-decoder``).

    Every kind loads through genai's Text2ImagePipeline unchanged: model_build makes each
    with the SD decoder's inputs and outputs. Artifacts without the record have ``sd``.
    """

    SD = "sd"
    INT8_WEIGHTS = "int8-weights"
    INT8 = "int8"
    TAESD = "taesd"


class BuildPrecision(TextEnum):
    """What ``lcm-build build --precision`` makes of the UNet (and, for fp16, every part)."""

    INT8 = "int8"
    HYBRID = "hybrid"
    FP16 = "fp16"
    FP32 = "fp32"


class InferencePrecision(TextEnum):
    """OpenVINO's INFERENCE_PRECISION_HINT; ``default`` lets the device choose (bf16 where
    the CPU has it, f32 on AVX2)."""

    DEFAULT = "default"
    F32 = "f32"
    BF16 = "bf16"
    F16 = "f16"


def names(kinds: type[TextEnum]) -> tuple[str, ...]:
    """The values of an enum, in order, for messages and argparse choices."""
    return tuple(str(k.value) for k in kinds)
