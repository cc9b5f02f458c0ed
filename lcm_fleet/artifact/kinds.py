"""The named kinds an artifact and a worker agree on: VAE decoders, build and inference precisions.

``str`` enums, so a manifest or a setting holds the same text as before (``"int8"``) and
compares equal to it.
"""

from __future__ import annotations

from enum import Enum


class VaeDecoderKind(str, Enum):
    """How an artifact's VAE decoder was made (``lcm-build --vae-decoder``).

    Every kind loads through genai's Text2ImagePipeline unchanged: model_build makes each
    with the SD decoder's inputs and outputs. Artifacts without the record have ``sd``.
    """

    SD = "sd"
    INT8_WEIGHTS = "int8-weights"
    INT8 = "int8"
    TAESD = "taesd"

    def __str__(self) -> str:
        return self.value


class BuildPrecision(str, Enum):
    """What ``lcm-build build --precision`` makes of the UNet (and, for fp16, every part)."""

    INT8 = "int8"
    HYBRID = "hybrid"
    FP16 = "fp16"
    FP32 = "fp32"

    def __str__(self) -> str:
        return self.value


class InferencePrecision(str, Enum):
    """OpenVINO's INFERENCE_PRECISION_HINT; ``default`` lets the device choose (bf16 where
    the CPU has it, f32 on AVX2)."""

    DEFAULT = "default"
    F32 = "f32"
    BF16 = "bf16"
    F16 = "f16"

    def __str__(self) -> str:
        return self.value


def names(kinds: type[Enum]) -> tuple[str, ...]:
    """The values of an enum, in order, for messages and argparse choices."""
    return tuple(str(k.value) for k in kinds)
