"""A tiny, randomly initialised LCM of the LCM_Dreamshaper_v7 family, built in code.

Same architecture family as the real model (SD1.5-style UNet with
``time_cond_proj_dim``, CLIP text encoder, 8x-downsampling KL VAE, the LCMScheduler
of LCM_Dreamshaper_v7) with small widths, so the whole pipeline exports, quantizes
and renders in seconds with no network. Deterministic: the same seed gives
byte-identical files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_build.errors import BuildInputError
from model_build.prompts import load_prompts
from model_build.tokenizer import BOS, EOS, MAX_LENGTH, train_clip_bpe

logger = logging.getLogger(__name__)

#: LCMScheduler settings of SimianLuo/LCM_Dreamshaper_v7.
LCM_DREAMSHAPER_V7_SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}
#: LCM_Dreamshaper_v7's guidance-embedding width.
TIME_COND_PROJ_DIM = 256


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. ``image_size`` must be a multiple of 8 (the VAE factor)."""

    image_size: int = 128
    seed: int = 0
    text_hidden: int = 64
    unet_channels: tuple[int, int] = (32, 64)
    vae_channels: tuple[int, int, int, int] = (16, 32, 32, 32)


@dataclass(frozen=True)
class LcmArchitecture:
    """Sizes of an LCM_Dreamshaper_v7-family pipeline (the fixed parts are the family's)."""

    #: CLIPTextConfig sizes; vocabulary and special tokens come from the tokenizer.
    text: dict[str, Any]
    #: UNet2DConditionModel arguments besides channels and the guidance embedding.
    unet: dict[str, Any]
    #: AutoencoderKL arguments besides channels, latent width and scaling factor.
    vae: dict[str, Any]


def tiny_architecture(spec: TinySpec) -> LcmArchitecture:
    return LcmArchitecture(
        text=dict(
            hidden_size=spec.text_hidden,
            intermediate_size=spec.text_hidden * 2,
            projection_dim=spec.text_hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        unet=dict(
            sample_size=spec.image_size // 8,
            block_out_channels=spec.unet_channels,
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=spec.text_hidden,
            attention_head_dim=8,
            norm_num_groups=8,
        ),
        vae=dict(
            block_out_channels=spec.vae_channels,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=spec.image_size,
        ),
    )


#: SimianLuo/LCM_Dreamshaper_v7: SD1.5 UNet, CLIP ViT-L/14 text tower, SD's KL VAE.
FULL_SIZE = LcmArchitecture(
    text=dict(
        hidden_size=768,
        intermediate_size=3072,
        projection_dim=768,
        num_hidden_layers=12,
        num_attention_heads=12,
    ),
    unet=dict(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
    vae=dict(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=512,
    ),
)


def write_lcm(out_dir: Path, arch: LcmArchitecture, seed: int) -> Path:
    """Build ``arch`` with random weights (seeded per part) and the offline tokenizer."""
    import torch
    from diffusers import (
        AutoencoderKL,
        LatentConsistencyModelPipeline,
        LCMScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = out_dir / "_tokenizer_build"
    train_clip_bpe(load_prompts("calibration"), tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    vocab = tokenizer.get_vocab()

    torch.manual_seed(seed)
    # A dict: transformers' config stubs take no keyword arguments.
    text_config: dict[str, Any] = dict(
        vocab_size=len(vocab),
        **arch.text,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4, time_cond_proj_dim=TIME_COND_PROJ_DIM, **arch.unet
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        scaling_factor=0.18215,
        **arch.vae,
    )
    pipe: Any = LatentConsistencyModelPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=LCMScheduler(**LCM_DREAMSHAPER_V7_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return out_dir


def build_tiny(out_dir: Path, spec: TinySpec | None = None) -> Path:
    """Write a diffusers ``LatentConsistencyModelPipeline`` folder at ``out_dir``."""
    spec = spec or TinySpec()
    if spec.image_size % 8 or spec.image_size < 64:
        raise BuildInputError(
            f"image_size={spec.image_size} must be a multiple of 8 and at least 64"
        )
    write_lcm(out_dir, tiny_architecture(spec), spec.seed)
    logger.info("tiny LCM (%dx%d) written to %s", spec.image_size, spec.image_size, out_dir)
    return Path(out_dir)


#: PNDMScheduler settings of the Stable Diffusion 1.5 base (stable-diffusion-v1-5).
SD15_SCHEDULER: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
#: The UNet projections an LCM-LoRA (and most SD LoRAs) adapt.
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def build_tiny_sd15(out_dir: Path, spec: TinySpec | None = None) -> Path:
    """Write a tiny diffusers ``StableDiffusionPipeline`` (SD1.5 family) at ``out_dir``.

    The base an LCM-LoRA is fused into: :func:`build_tiny`'s tokenizer, text encoder and
    VAE (the same bytes for the same seed), its UNet architecture without
    ``time_cond_proj_dim`` (plain SD1.5 takes no guidance embedding), and SD1.5's
    PNDMScheduler. Deterministic: the same seed gives byte-identical files.
    """
    spec = spec or TinySpec()
    out_dir = Path(out_dir)
    scratch = out_dir / "_lcm_build"
    # build_tiny checks the spec and makes the shared parts; only the UNet and the
    # scheduler are SD1.5's own.
    build_tiny(scratch, spec)
    import torch
    from diffusers import (
        LatentConsistencyModelPipeline,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    lcm: Any = LatentConsistencyModelPipeline.from_pretrained(str(scratch))
    unet_config = {k: v for k, v in lcm.unet.config.items() if not k.startswith("_")}
    unet_config["time_cond_proj_dim"] = None
    torch.manual_seed(spec.seed + 1)
    unet = UNet2DConditionModel.from_config(unet_config)
    pipe: Any = StableDiffusionPipeline(
        vae=lcm.vae,
        text_encoder=lcm.text_encoder,
        tokenizer=lcm.tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    del lcm, pipe
    # The shared parts are build_tiny's own files: re-saving a loaded model would record
    # the scratch path (``_name_or_path``) in its config and break byte-determinism.
    import shutil

    for part in ("text_encoder", "tokenizer", "vae"):
        shutil.rmtree(out_dir / part)
        (scratch / part).rename(out_dir / part)
    shutil.rmtree(scratch)
    logger.info("tiny SD1.5 (%dx%d) written to %s", spec.image_size, spec.image_size, out_dir)
    return out_dir


def build_tiny_lora(base_dir: Path, out_dir: Path, seed: int = 0, rank: int = 4) -> Path:
    """Write a random LoRA for the UNet of ``base_dir`` (a :func:`build_tiny_sd15` folder).

    The file is ``out_dir/pytorch_lora_weights.safetensors`` in diffusers' LoRA format, as
    ``save_lora_weights`` writes it, adapting the attention projections
    (:data:`LORA_TARGET_MODULES`). Both A and B are drawn from a seeded generator (peft's
    default zero B would make the LoRA a no-op), so the same seed gives the same bytes.
    """
    if rank < 1:
        raise BuildInputError(f"rank={rank} must be at least 1")
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    unet: Any = UNet2DConditionModel.from_pretrained(str(base_dir), subfolder="unet")
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights="gaussian",
            target_modules=list(LORA_TARGET_MODULES),
        )
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(unet.named_parameters()):
            if ".lora_A." in name:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            elif ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out_dir.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(out_dir), unet_lora_layers=layers, weight_name=LORA_WEIGHT_NAME
    )
    logger.info("tiny LoRA (rank %d, %d tensors) written to %s", rank, len(layers), out_dir)
    return out_dir


def build_full_size_random(out_dir: Path, seed: int = 0) -> Path:
    """Write a full-size LatentConsistencyModelPipeline with random weights at ``out_dir``.

    The architecture of SimianLuo/LCM_Dreamshaper_v7 (SD1.5 UNet with the guidance
    embedding ``time_cond_proj_dim=256``, a CLIP ViT-L/14 text encoder, SD's KL VAE, the
    model's LCMScheduler), randomly initialised and built offline, for benchmarks: the
    compute cost does not depend on the weights. The tokenizer is :func:`build_tiny`'s
    offline BPE (its vocabulary is smaller than CLIP's; the embedding lookup costs nothing
    either way). Its images are noise, and may be NaN at reduced precision.
    """
    write_lcm(out_dir, FULL_SIZE, seed)
    logger.info("full-size random LCM (LCM_Dreamshaper_v7 architecture) written to %s", out_dir)
    return Path(out_dir)


#: A small AutoencoderTiny (the TAESD architecture at narrow widths: 4 latent channels, 8x
#: upsampling) for tests of ``--vae-decoder taesd``.
TINY_TAESD: dict[str, Any] = dict(
    encoder_block_out_channels=(16, 16, 16, 16),
    decoder_block_out_channels=(16, 16, 16, 16),
    num_encoder_blocks=(1, 1, 1, 1),
    num_decoder_blocks=(1, 1, 1, 1),
)


def write_taesd(out_dir: Path, config: dict[str, Any], seed: int, spread: bool = False) -> Path:
    """A randomly initialised diffusers ``AutoencoderTiny`` folder (config.json + weights).

    ``spread``: re-draw the weights so that the decoder's images span the 0..255 range
    (He-normal convolutions, zero biases, the last layer centred on mid-grey); diffusers'
    default initialisation shrinks the signal through the decoder's many layers and decodes
    any latents to a nearly black image, which would make comparisons of decodes vacuous.
    """
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    vae: Any = AutoencoderTiny(**config)
    if spread:
        convs = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            for conv in convs:
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                if conv.bias is not None:
                    conv.bias.zero_()
            # The decoder's output is 2 * last - 1: a last layer around 0.5 is mid-grey.
            convs[-1].weight.mul_(0.01)
            if convs[-1].bias is not None:
                convs[-1].bias.fill_(0.5)
    vae.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def build_tiny_taesd(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random TAESD (:data:`TINY_TAESD`) at ``out_dir``; same seed, same bytes.

    Its weights are random (drawn so its decodes span the pixel range): it exercises the
    export and serving path of ``--vae-decoder taesd``, and fails the quality gate.
    """
    write_taesd(out_dir, TINY_TAESD, seed, spread=True)
    logger.info("tiny TAESD written to %s", out_dir)
    return Path(out_dir)


def build_taesd_random(out_dir: Path, seed: int = 0) -> Path:
    """Write a full-size random TAESD at ``out_dir``: diffusers' default ``AutoencoderTiny``
    config is the TAESD architecture (madebyollin/taesd), so its compute is the real one's."""
    write_taesd(out_dir, {}, seed)
    logger.info("full-size random TAESD (AutoencoderTiny defaults) written to %s", out_dir)
    return Path(out_dir)
