"""Faster VAE decoders for a candidate: INT8 weights, full INT8, or a TAESD tiny decoder.

``lcm-build build|quantize --vae-decoder KIND`` makes the candidate's ``vae_decoder/``
part one of these ways (the rest of the candidate is made by ``--precision``):

- ``sd`` (default): the part as the precision step made it (the export's SD decoder).
- ``int8-weights``: the export's SD decoder with NNCF INT8 weight compression.
- ``int8``: the export's SD decoder, NNCF post-training INT8 (weights and activations),
  calibrated on the decoder inputs of the calibration renders.
- ``taesd``: the decoder of a diffusers ``AutoencoderTiny`` (TAESD architecture; the user
  supplies its weights with ``--taesd SOURCE``), converted to an IR with the I/O of the
  optimum export, so openvino.genai's Text2ImagePipeline loads it in place of the SD
  decoder and the worker does not change.

What genai does with ``vae_decoder/`` (openvino.genai ``AutoencoderKL``, used for every
``vae`` that ``model_index.json`` names ``AutoencoderKL``): it reads
``openvino_model.xml`` and from ``config.json`` the fields ``block_out_channels`` (the
image/latent scale factor is ``2 ** (len - 1)``), ``scaling_factor``, ``shift_factor``,
``in_channels``, ``latent_channels`` and ``out_channels``. It reshapes input 0 to
``[1, C, H/f, W/f]``, feeds it the final denoised latents, and merges into the model
``x / scaling_factor + shift_factor`` before it and ``clamp(x / 2 + 0.5, 0, 1) * 255`` to
u8 NHWC after it: the decoder's own output is an image in [-1, 1], NCHW. A TAESD decoder
already takes the denoised latents as they are (``scaling_factor`` 1.0, shift 0; diffusers'
pipelines call ``vae.decode(latents / 1.0)``) and returns [-1, 1], so only its config's
values and the I/O names and ranks have to match.

The kinds are :class:`lcm_fleet.artifact.kinds.VaeDecoderKind`; this module keeps the
standard library only at the top, heavy imports inside the functions.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lcm_fleet.artifact.kinds import VaeDecoderKind, names
from model_build.errors import BuildError, BuildInputError, QuantizeError
from model_build.sources import describe_source

logger = logging.getLogger(__name__)

#: The kinds' names, for messages and ``--vae-decoder`` choices.
VAE_DECODERS = names(VaeDecoderKind)
PART = "vae_decoder"
XML = "openvino_model.xml"
BIN = "openvino_model.bin"
CONFIG = "config.json"
#: A model folder's own trained TAESD (``lcm-build train-decoder MODEL MODEL/taesd``):
#: ``--vae-decoder taesd`` without ``--taesd`` takes it. The reference model ships one.
MODEL_TAESD_DIR = "taesd"
#: The names and ranks of the optimum export's decoder I/O, which genai is used to.
INPUT_NAME = "latent_sample"
OUTPUT_NAME = "sample"

#: NNCF weight compression of the SD decoder (``int8-weights``).
WEIGHTS_RECIPE: dict[str, Any] = {
    "method": "nncf.compress_weights",
    "mode": "INT8_ASYM",
    "granularity": "per output channel",
}
#: NNCF post-training quantization of the SD decoder (``int8``), chosen by measurement
#: (measured: docs/model-build.md#the-int8-vae-decoder-recipe): TRANSFORMER quantizes only
#: the convolution/matmul inputs, keeping the residual adds in higher precision; MIXED is
#: asymmetric activations; MINMAX activation ranges, because NNCF's default estimator clips
#: outliers, which turned some of the trained reference decoder's images' colours.
#: Bias correction changed nothing measurable and costs time. 7-bit weights in every layer
#: (``overflow_fix``), as for the UNet (model_build/quantize.py): right on CPUs without VNNI.
INT8_RECIPE: dict[str, Any] = {
    "method": "nncf.quantize (post-training)",
    "model_type": "TRANSFORMER",
    "preset": "MIXED",
    "activations_range_estimator": "MINMAX",
    "disable_bias_correction": True,
    "overflow_fix": "ENABLE",
}


@dataclass(frozen=True)
class VaeDecoderOptions:
    kind: str = "sd"
    #: taesd: a diffusers AutoencoderTiny folder or hub id.
    taesd: str | None = None
    taesd_revision: str = "main"
    #: int8: decoder inputs to calibrate on (one per calibration render); None: as many as
    #: the renders the UNet's calibration makes anyway (``ceil(samples / steps)``).
    samples: int | None = None

    def check(self) -> None:
        if self.kind not in VAE_DECODERS:
            raise BuildInputError(
                f"vae_decoder={self.kind!r} is not one of {', '.join(VAE_DECODERS)}"
            )
        if self.kind == "taesd" and not self.taesd:
            raise BuildInputError(
                "--vae-decoder taesd needs --taesd SOURCE (a diffusers AutoencoderTiny folder "
                "or hub id, e.g. madebyollin/taesd) when the model has no trained decoder of "
                f"its own in MODEL/{MODEL_TAESD_DIR}; train one with "
                f"`lcm-build train-decoder MODEL MODEL/{MODEL_TAESD_DIR}`"
            )
        if self.kind != "taesd" and self.taesd:
            raise BuildInputError(
                f"--taesd {self.taesd!r} is only used with --vae-decoder taesd "
                f"(got --vae-decoder {self.kind})"
            )
        if self.samples is not None and self.kind != "int8":
            raise BuildInputError(
                f"--vae-samples {self.samples} is only used with --vae-decoder int8 "
                f"(got --vae-decoder {self.kind})"
            )
        if self.samples is not None and self.samples < 1:
            raise BuildInputError(f"vae_samples={self.samples} must be at least 1")
        if self.taesd:
            path = Path(self.taesd)
            if path.exists() and not (path / CONFIG).is_file():
                raise BuildInputError(
                    f"taesd={self.taesd!r} is a local path without config.json; pass a diffusers "
                    "AutoencoderTiny folder (as written by save_pretrained) or a hub id"
                )
            if not path.exists() and (self.taesd.count("/") != 1 or self.taesd[0] in "/."):
                raise BuildInputError(
                    f"taesd={self.taesd!r} is neither an existing folder nor a hub id of the "
                    "form 'owner/name' (e.g. madebyollin/taesd)"
                )

    @property
    def needs_latents(self) -> bool:
        return self.kind == "int8"

    def with_model_taesd(self, model_dir: Path | None) -> VaeDecoderOptions:
        """``--vae-decoder taesd`` without ``--taesd``: the model folder's own trained decoder
        (``MODEL/taesd``) when it has one; otherwise unchanged (``check`` says what to pass)."""
        if self.kind != "taesd" or self.taesd or model_dir is None:
            return self
        own = Path(model_dir) / MODEL_TAESD_DIR
        if (own / CONFIG).is_file():
            logger.info("--vae-decoder taesd: the model's own trained decoder %s", own)
            return replace(self, taesd=str(own))
        return self


def model_folder_of(ir_dir: Path) -> Path | None:
    """The local model folder an exported IR was made from (its manifest's source), if any."""
    try:
        manifest = json.loads((Path(ir_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    source = manifest.get("source") or {}
    path = source.get("path") if source.get("kind") == "local" else None
    return Path(path) if path and Path(path).is_dir() else None


@dataclass
class VaeDecoderResult:
    """The manifest's ``vae_decoder`` record and the stage's figures."""

    record: dict[str, Any]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def precision_label(base: str, kind: str) -> str:
    """The manifest's ``precision``: e.g. ``int8-unet`` or ``int8-unet+vae-taesd``."""
    return base if kind == "sd" else f"{base}+vae-{kind}"


def read_config(vae_dir: Path) -> dict[str, Any]:
    path = Path(vae_dir) / CONFIG
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildInputError(f"{path} is missing or not JSON: {e}") from e
    return config


def scale_factor(config: dict[str, Any]) -> int:
    """The image/latent size ratio genai derives from a decoder config."""
    return int(2 ** (len(config.get("block_out_channels") or [0]) - 1))


def decoder_inputs(latents: Any, config: dict[str, Any]) -> Any:
    """What genai feeds the decoder IR for final ``latents``: ``latents / scaling + shift``."""
    import numpy as np

    scaling = float(config.get("scaling_factor") or 1.0)
    shift = float(config.get("shift_factor") or 0.0)
    return (np.asarray(latents, dtype=np.float32) / scaling + shift).astype(np.float32)


def io_signature(model: Any) -> dict[str, Any]:
    """Names, ranks and element types of a decoder model's inputs and outputs."""

    def port(p: Any) -> dict[str, Any]:
        return {
            "names": sorted(p.get_names()),
            "rank": p.get_partial_shape().rank.get_length(),
            "element_type": p.get_element_type().get_type_name(),
        }

    return {"inputs": [port(p) for p in model.inputs], "outputs": [port(p) for p in model.outputs]}


def _write_part(out_part: Path, model: Any, config: dict[str, Any]) -> None:
    import openvino as ov

    shutil.rmtree(out_part, ignore_errors=True)
    out_part.mkdir(parents=True)
    ov.save_model(model, str(out_part / XML), compress_to_fp16=False)
    (out_part / CONFIG).write_text(
        json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def _bin_bytes(part: Path) -> int:
    return (part / BIN).stat().st_size


# --- int8-weights ---------------------------------------------------------------------------


def compress_weights(ir_part: Path, out_part: Path) -> dict[str, Any]:
    """NNCF INT8 weight compression of the decoder at ``ir_part``, saved at ``out_part``."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(ir_part / XML))
    try:
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    except Exception as e:
        raise QuantizeError(f"NNCF could not compress the weights of {ir_part}: {e}") from e
    _write_part(out_part, compressed, read_config(ir_part))
    record = {
        **WEIGHTS_RECIPE,
        "weights_bytes": {"fp32": _bin_bytes(ir_part), "int8": _bin_bytes(out_part)},
    }
    if record["weights_bytes"]["int8"] >= record["weights_bytes"]["fp32"]:
        raise QuantizeError(f"NNCF compressed no weight of {ir_part}: nothing was quantized")
    return record


# --- int8 -----------------------------------------------------------------------------------


def quantize(
    ir_part: Path,
    samples: list[Any],
    out_part: Path,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """NNCF INT8 post-training quantization of the decoder, calibrated on ``samples``.

    ``samples`` are decoder inputs (see :func:`decoder_inputs`), one array each; ``recipe``
    defaults to :data:`INT8_RECIPE`.
    """
    import nncf
    import openvino as ov

    from model_build.quantize import count_fake_quantize, nncf_quantize_arguments

    # A given recipe is used as it is (keys it lacks take NNCF's defaults, not ours).
    recipe = {"method": INT8_RECIPE["method"], **(INT8_RECIPE if recipe is None else recipe)}
    if not samples:
        raise QuantizeError("no calibration latents for the VAE decoder: capture at least one")
    model = ov.Core().read_model(str(ir_part / XML))
    input_name = model.inputs[0].get_any_name()
    try:
        quantized = nncf.quantize(
            model,
            nncf.Dataset([{input_name: s} for s in samples]),
            subset_size=len(samples),
            **nncf_quantize_arguments(recipe),
        )
    except Exception as e:
        raise QuantizeError(f"NNCF could not quantize the VAE decoder {ir_part}: {e}") from e
    fq = count_fake_quantize(quantized)
    if fq == 0:
        raise QuantizeError(f"NNCF inserted no FakeQuantize into {ir_part}: nothing was quantized")
    _write_part(out_part, quantized, read_config(ir_part))
    logger.info("VAE decoder quantized: %d FakeQuantize operations -> %s", fq, out_part)
    return {**recipe, "samples": len(samples), "fake_quantize_count": fq}


# --- taesd ----------------------------------------------------------------------------------


def load_taesd(source: str, revision: str = "main") -> Any:
    """A diffusers AutoencoderTiny from a folder or a hub id (like any model of a build)."""
    from diffusers import AutoencoderTiny

    try:
        vae = AutoencoderTiny.from_pretrained(source, revision=revision)
    except Exception as e:
        raise BuildInputError(
            f"taesd={source!r} could not be loaded as a diffusers AutoencoderTiny: {e}. Pass "
            "a folder written by AutoencoderTiny.save_pretrained, or a hub id this machine "
            "can reach"
        ) from e
    return vae.eval()


def taesd_config(vae: Any) -> dict[str, Any]:
    """The decoder's config.json: AutoencoderTiny's own config, which carries every field genai
    reads (``block_out_channels`` is registered by diffusers as the decoder's channels)."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    config = json.loads(json.dumps(config))  # tuples -> lists
    return {"_class_name": "AutoencoderTiny", **config}


def check_taesd_fits(config: dict[str, Any], sd_config: dict[str, Any], unet_in: int) -> None:
    """The tiny decoder must take the UNet's latents and upsample as genai computes it."""
    latent = config.get("latent_channels")
    if latent != unet_in:
        raise BuildInputError(
            f"the TAESD decoder takes latent_channels={latent}, the UNet makes {unet_in}: use "
            "the TAESD of this model family (madebyollin/taesd for SD1.5 and LCM_Dreamshaper)"
        )
    up = config.get("upsampling_scaling_factor", 2)
    blocks = len(config.get("decoder_block_out_channels") or config.get("block_out_channels") or [])
    actual = int(up ** (blocks - 1)) if blocks else 0
    if up != 2 or actual != scale_factor(sd_config) or scale_factor(config) != actual:
        raise BuildInputError(
            f"the TAESD decoder upsamples {actual}x (upsampling_scaling_factor={up}, {blocks} "
            f"blocks), the model's VAE {scale_factor(sd_config)}x; genai derives the factor as "
            "2 ** (len(block_out_channels) - 1), so the decoder must use factor 2 per block"
        )
    if config.get("out_channels") != sd_config.get("out_channels", 3):
        raise BuildInputError(
            f"the TAESD decoder makes out_channels={config.get('out_channels')} images, "
            f"the model's VAE {sd_config.get('out_channels', 3)}"
        )


def convert_taesd(vae: Any, latent_channels: int) -> Any:
    """AutoencoderTiny's decode as an OpenVINO model with the optimum export's I/O."""
    import openvino as ov
    import torch

    class Decode(torch.nn.Module):
        def __init__(self, vae: Any) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample: Any) -> Any:
            return self.vae.decode(latent_sample, return_dict=False)[0]

    try:
        with torch.no_grad():
            model = ov.convert_model(
                Decode(vae),
                example_input=torch.zeros(1, latent_channels, 8, 8),
                input=[(INPUT_NAME, ov.PartialShape([-1, latent_channels, -1, -1]), ov.Type.f32)],
            )
    except Exception as e:
        raise BuildError(f"OpenVINO could not convert the TAESD decoder: {e}") from e
    model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return model


def conversion_error(vae: Any, model: Any, latent_channels: int, seed: int = 0) -> float:
    """Max |IR - PyTorch| of the decoder output (in [-1, 1]) on seeded random latents, f32."""
    import numpy as np
    import openvino as ov
    import torch

    latents = np.random.default_rng(seed).standard_normal((1, latent_channels, 16, 16))
    latents = latents.astype(np.float32)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ir_out = compiled([latents])[0]
    with torch.no_grad():
        torch_out = vae.decode(torch.from_numpy(latents), return_dict=False)[0].numpy()
    return float(np.max(np.abs(ir_out - torch_out)))


def export_taesd(
    source: str, revision: str, ir_part: Path, out_part: Path, unet_in_channels: int
) -> dict[str, Any]:
    """Export a TAESD decoder to ``out_part`` with the I/O of the export's ``ir_part``."""
    import openvino as ov

    vae = load_taesd(source, revision)
    config = taesd_config(vae)
    sd_config = read_config(ir_part)
    check_taesd_fits(config, sd_config, unet_in_channels)
    model = convert_taesd(vae, int(config["latent_channels"]))
    expected = io_signature(ov.Core().read_model(str(ir_part / XML)))
    actual = io_signature(model)
    if actual != expected:
        raise BuildError(
            f"the converted TAESD decoder's I/O {actual} differs from the export's {expected}; "
            "genai would not load it in place of the SD decoder"
        )
    error = conversion_error(vae, model, int(config["latent_channels"]))
    # Outputs are in [-1, 1]; 1e-3 is a quarter of one 8-bit level (2 / 255 / 2 ~ 4e-3).
    if not math.isfinite(error) or error > 1e-3:
        raise BuildError(
            f"the converted TAESD decoder differs from PyTorch by up to {error:.3g} on the same "
            "latents (limit 1e-3)"
        )
    _write_part(out_part, model, config)
    return {
        "architecture": "diffusers AutoencoderTiny (TAESD), decoder only",
        "source": describe_source(source, revision),
        "export": "torch -> openvino.convert_model, fp32, I/O of the optimum export",
        "io": actual,
        "conversion_max_abs_diff": error,
        "config": {
            k: config.get(k)
            for k in (
                "block_out_channels",
                "scaling_factor",
                "shift_factor",
                "latent_channels",
                "out_channels",
            )
        },
        "weights_bytes": _bin_bytes(out_part),
    }


# --- the stage ------------------------------------------------------------------------------


def make_vae_decoder(
    ir_dir: Path,
    out_dir: Path,
    options: VaeDecoderOptions,
    latents: list[Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> VaeDecoderResult:
    """Replace ``out_dir/vae_decoder`` with the decoder ``options`` asks for.

    The source is always the export's SD decoder in ``ir_dir`` (or the TAESD weights).
    ``latents`` are the final denoised latents of the calibration renders (``int8``);
    ``calibration`` describes how they were made, for the manifest.
    """
    import time

    options.check()
    ir_dir, out_dir = Path(ir_dir), Path(out_dir)
    ir_part, out_part = ir_dir / PART, out_dir / PART
    t0 = time.perf_counter()
    if options.kind == "sd":
        return VaeDecoderResult(record={"kind": "sd"})
    if options.kind == "int8-weights":
        details = compress_weights(ir_part, out_part)
    elif options.kind == "int8":
        if not latents:
            raise QuantizeError("--vae-decoder int8 needs calibration latents; none were captured")
        config = read_config(ir_part)
        details = quantize(ir_part, [decoder_inputs(x, config) for x in latents], out_part)
        details["calibration"] = {
            **(calibration or {}),
            "input": "final denoised latents / scaling_factor + shift_factor (as genai feeds)",
        }
    else:
        assert options.taesd is not None
        unet = json.loads((ir_dir / "unet" / "config.json").read_text(encoding="utf-8"))
        details = export_taesd(
            options.taesd, options.taesd_revision, ir_part, out_part, int(unet["in_channels"])
        )
    seconds = round(time.perf_counter() - t0, 3)
    logger.info("VAE decoder %s made in %.1fs -> %s", options.kind, seconds, out_part)
    return VaeDecoderResult(record={"kind": options.kind, **details}, seconds=seconds)
