"""Train the reference LCM offline: VAE, then a latent diffusion teacher, then LCM distillation.

Stages (each resumable from its last checkpoint in ``OUT/.training``, through
model_build.training):

1. ``vae``: an AutoencoderKL (8x downsampling, 4 latent channels) on the procedural
   renders (decoding posterior means); its latent scaling factor is set from the data
   (1 / std of the latents).
2. ``teacher``: a UNet2DConditionModel without guidance embedding and the CLIP-style text
   encoder, trained together with the epsilon objective (min-SNR weighted) on the VAE's
   latents, captions dropped 10% of the time so classifier-free guidance works.
3. ``distill``: latent consistency distillation (Luo et al., 2023): the student is the
   teacher's UNet plus ``time_cond_proj_dim`` (the guidance-scale embedding, zero-initialised),
   trained so that one step from t_{n+k} lands where the teacher's guided DDIM step to t_n
   and the EMA target then land; the skip/out scalings and the 50-step DDIM grid are those
   of the LCMScheduler it is served with.

The result is a diffusers LatentConsistencyModelPipeline folder with ``reference.json``
(domain, split, recipe, figures). Deterministic for a given seed and thread count.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model_build.errors import BuildError, BuildInputError
from model_build.reference.domain import (
    PALETTE,
    SHAPES,
    Split,
    all_scenes,
    make_split,
    render_dataset,
)
from model_build.reference.evaluate import REFERENCE_JSON
from model_build.tiny import LCM_DREAMSHAPER_V7_SCHEDULER, TIME_COND_PROJ_DIM
from model_build.tokenizer import BOS, EOS, train_clip_bpe
from model_build.training import Checkpoints, train_loop

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = ".training"
STAGES = ("vae", "teacher", "distill")
#: The LCMScheduler's DDIM grid: original_inference_steps=50 over 1000 train timesteps.
_DDIM_STEPS = 50


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the weights (with the thread count)."""

    seed: int = 0
    image_size: int = 64
    per_scene: int = 16
    text_hidden: int = 64
    text_layers: int = 2
    #: Tokens the text encoder sees (its ``max_position_embeddings`` and the tokenizer's
    #: ``model_max_length``, what diffusers and genai pad prompts to). The grammar's longest
    #: caption is 8 tokens with BOS and EOS; CLIP's 77 would make every attention over the
    #: text dearer for padding
    #: (measured: docs/model-build.md#the-reference-model-model_buildreference).
    text_max_length: int = 16
    unet_channels: tuple[int, int] = (32, 64)
    vae_channels: tuple[int, int, int, int] = (16, 32, 64, 64)
    #: The VAE stage runs on this many threads whatever ``--threads`` says, with torch's
    #: default (per-tensor) AdamW: its weights then do not depend on the machine's cores.
    #: These settings gave colour-faithful reconstructions; a 2-thread fused-AdamW run of
    #: the same recipe did not
    #: (measured: docs/model-build.md#the-reference-model-model_buildreference).
    vae_threads: int = 1
    vae_steps: int = 2500
    vae_batch: int = 16
    #: The VAE is convolutional: it trains on random crops of this side (4x cheaper at 32).
    vae_crop: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    teacher_steps: int = 2000
    teacher_batch: int = 64
    teacher_lr: float = 1e-3
    caption_dropout: float = 0.1
    #: Weight of the text encoder's auxiliary loss: its pooled output must name the caption's
    #: colour, shape and background (linear heads, dropped after training), so the UNet has
    #: telling text features from the first steps.
    text_aux_weight: float = 0.1
    #: EMA of the teacher (UNet and text encoder): the weights the later stages use.
    teacher_ema_decay: float = 0.995
    distill_steps: int = 500
    distill_batch: int = 64
    distill_lr: float = 2e-4
    #: Guidance w = guidance_scale - 1 sampled in [w_min, w_max] (the pipeline's convention).
    w_min: float = 1.0
    w_max: float = 7.0
    ema_decay: float = 0.95
    checkpoint_every: int = 250

    def check(self) -> None:
        if self.image_size % 8 or self.image_size < 32:
            raise BuildInputError(
                f"image_size={self.image_size} must be a multiple of 8 and at least 32"
            )
        for name in ("per_scene", "vae_steps", "teacher_steps", "distill_steps"):
            if getattr(self, name) < 1:
                raise BuildInputError(f"{name}={getattr(self, name)} must be at least 1")
        if self.vae_threads < 1:
            raise BuildInputError(f"vae_threads={self.vae_threads} must be at least 1")
        if self.text_max_length < 2:
            raise BuildInputError(
                f"text_max_length={self.text_max_length} must be at least 2 (BOS and EOS)"
            )
        if not 0 <= self.caption_dropout < 1:
            raise BuildInputError(f"caption_dropout={self.caption_dropout} must be in [0, 1)")
        if not 0 <= self.w_min <= self.w_max:
            raise BuildInputError(
                f"w_min={self.w_min}, w_max={self.w_max}: need 0 <= w_min <= w_max"
            )

    def steps(self, stage: str) -> int:
        return int(getattr(self, f"{stage}_steps"))


@dataclass
class TrainResult:
    out_dir: Path
    durations_s: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    resumed_from: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------- model parts


def _text_encoder(recipe: Recipe, vocab: dict[str, int]) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config: dict[str, Any] = dict(
        vocab_size=len(vocab),
        hidden_size=recipe.text_hidden,
        intermediate_size=recipe.text_hidden * 2,
        projection_dim=recipe.text_hidden,
        num_hidden_layers=recipe.text_layers,
        num_attention_heads=4,
        max_position_embeddings=recipe.text_max_length,
        hidden_act="quick_gelu",
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
    return CLIPTextModel(CLIPTextConfig(**config))


def _unet(recipe: Recipe, time_cond_proj_dim: int | None) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=recipe.image_size // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=recipe.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=recipe.text_hidden,
        attention_head_dim=8,
        norm_num_groups=16,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def _vae(recipe: Recipe) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=recipe.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=recipe.image_size,
        scaling_factor=1.0,
        # Fully convolutional (no attention in the middle block), so what it learns on
        # crops holds on whole images.
        mid_block_add_attention=False,
    )


def guidance_embedding(w: Any, dim: int = TIME_COND_PROJ_DIM) -> Any:
    """The sinusoidal embedding of w that LatentConsistencyModelPipeline feeds the UNet."""
    import torch

    w = w * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def boundary_scalings(t: Any, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> Any:
    """LCMScheduler's c_skip and c_out at integer timesteps ``t``."""
    scaled = t.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def _adamw(params: Any, lr: float) -> Any:
    """AdamW with torch's fused CPU kernel: one call per step instead of one per tensor."""
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)


def _ema_update(ema_params: list[Any], params: list[Any], decay: float) -> None:
    """ema = decay * ema + (1 - decay) * param, for all tensors in one call."""
    import torch

    with torch.no_grad():
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)


# ---------------------------------------------------------------------------- stages


@dataclass
class _Data:
    images: Any  # N x 3 x H x W float in [-1, 1]
    scene_of: Any  # N long: index into captions
    captions: list[str]
    split: Split
    attributes: Any  # captions x 3 long: colour, shape and background indices


def _tokenize(tokenizer: Any, captions: list[str]) -> Any:
    """Token ids padded to the tokenizer's length; a caption that does not fit is an error."""
    length = int(tokenizer.model_max_length)
    for caption in captions:
        n = len(tokenizer(caption).input_ids)
        if n > length:
            raise BuildInputError(
                f"caption {caption!r} is {n} tokens with BOS and EOS, text_max_length={length}: "
                "raise text_max_length in the recipe"
            )
    return tokenizer(
        captions,
        padding="max_length",
        max_length=length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _stage_vae(
    recipe: Recipe, data: _Data, ck: Checkpoints, progress: bool, result: TrainResult
) -> Any:
    import torch

    vae = _vae(recipe)
    done = ck.load("vae", done=True)
    if done is not None:
        vae.load_state_dict(done["vae"])
        return vae.eval()
    torch.manual_seed(recipe.seed + 10)
    vae = _vae(recipe)
    gen = torch.Generator().manual_seed(recipe.seed + 11)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    n, side = data.images.shape[0], data.images.shape[-1]
    crop = min(recipe.vae_crop, side)

    def step() -> Any:
        idx = torch.randint(0, n, (recipe.vae_batch,), generator=gen)
        top, left = torch.randint(0, side - crop + 1, (2,), generator=gen).tolist()
        x = data.images[idx, :, top : top + crop, left : left + crop]
        posterior = vae.encode(x).latent_dist
        # Decoding the posterior mean (the KL term only keeps the latents bounded): sampled
        # latents blur the decoder, and the diffusion stages train on the means too.
        recon = vae.decode(posterior.mean).sample
        kl = posterior.kl().mean()
        return (
            torch.nn.functional.mse_loss(recon, x)
            + torch.nn.functional.l1_loss(recon, x)
            + recipe.vae_kl_weight * kl
        )

    t0 = time.perf_counter()
    vae.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.vae_threads)
    try:
        result.losses["vae"] = train_loop(
            "vae",
            recipe.steps("vae"),
            recipe.checkpoint_every,
            ck,
            {"vae": vae},
            optimizer,
            gen,
            step,
            None,
            progress,
            result.resumed_from,
        )
    finally:
        torch.set_num_threads(threads)
    vae.eval()
    result.durations_s["vae"] = round(time.perf_counter() - t0, 1)
    ck.save("vae", {"vae": vae.state_dict()}, done=True)
    return vae


#: Above this, the VAE's colour error inside shapes (RGB levels) makes renders fragile: the
#: INT8 UNet's small errors then move shape colours across to the next palette colour.
VAE_COLOUR_ERROR_WARN = 25.0


def vae_colour_error(
    vae: Any, data: _Data, scenes: list[Any], limit: int = 512
) -> dict[str, float]:
    """How far the VAE's reconstructions miss each palette colour inside the shapes.

    For up to ``limit`` training renders, the mean reconstructed colour over the pixels that
    are exactly the shape's colour, against that colour: the largest channel error in RGB
    levels, averaged per colour. Uses no random numbers (training continues unchanged).
    """
    import torch

    errors: dict[str, list[float]] = {}
    step = max(1, data.images.shape[0] // limit)
    images = data.images[::step][:limit]
    index = data.scene_of[::step][:limit]
    with torch.no_grad():
        recon = torch.cat(
            [vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in images.split(64)]
        ).clamp(-1, 1)
    for image, rec, scene_i in zip(images, recon, index.tolist(), strict=True):
        colour = scenes[scene_i].colour
        target = torch.tensor(PALETTE[colour], dtype=torch.float32) / 127.5 - 1.0
        mask = (image - target.view(3, 1, 1)).abs().sum(0) < 1e-3
        if bool(mask.any()):
            miss = (rec[:, mask].mean(1) - target).abs().max() * 127.5
            errors.setdefault(colour, []).append(float(miss))
    return {c: round(sum(v) / len(v), 1) for c, v in sorted(errors.items())}


def _encode_latents(vae: Any, images: Any) -> Any:
    """The posterior mean of every image (what the teacher and the distillation train on)."""
    import torch

    with torch.no_grad():
        return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(256)])


def _alphas_cumprod() -> Any:
    import torch

    cfg = LCM_DREAMSHAPER_V7_SCHEDULER
    betas = (
        torch.linspace(
            cfg["beta_start"] ** 0.5,
            cfg["beta_end"] ** 0.5,
            cfg["num_train_timesteps"],
            dtype=torch.float64,
        )
        ** 2
    )
    return torch.cumprod(1.0 - betas, dim=0).float()


def _latents(mean: Any, idx: Any, scale: float) -> Any:
    """The scaled latents (posterior means) of the images ``idx``."""
    return mean[idx] * scale


def _stage_teacher(
    recipe: Recipe,
    data: _Data,
    latents: tuple[Any, float],
    tokens: Any,
    vocab: dict[str, int],
    ck: Checkpoints,
    progress: bool,
    result: TrainResult,
) -> tuple[Any, Any]:
    import copy
    import itertools

    import torch

    text_encoder = _text_encoder(recipe, vocab)
    teacher = _unet(recipe, None)
    done = ck.load("teacher", done=True)
    if done is not None:
        text_encoder.load_state_dict(done["text_encoder"])
        teacher.load_state_dict(done["unet"])
        return text_encoder.eval(), teacher.eval()
    torch.manual_seed(recipe.seed + 20)
    text_encoder = _text_encoder(recipe, vocab)
    torch.manual_seed(recipe.seed + 21)
    teacher = _unet(recipe, None)
    gen = torch.Generator().manual_seed(recipe.seed + 22)
    torch.manual_seed(recipe.seed + 23)
    heads = torch.nn.Linear(recipe.text_hidden, len(PALETTE) + len(SHAPES) + len(PALETTE))
    bounds = [0, len(PALETTE), len(PALETTE) + len(SHAPES), 2 * len(PALETTE) + len(SHAPES)]
    ema_unet, ema_text = copy.deepcopy(teacher), copy.deepcopy(text_encoder)
    ema_unet.requires_grad_(False)
    ema_text.requires_grad_(False)
    params = [*teacher.parameters(), *text_encoder.parameters(), *heads.parameters()]
    ema_sources = [*teacher.parameters(), *text_encoder.parameters()]
    optimizer = _adamw(params, recipe.teacher_lr)
    mean, scale = latents
    acp = _alphas_cumprod()
    n = mean.shape[0]
    empty = len(data.captions)  # the last token row is the empty caption

    def step() -> Any:
        idx = torch.randint(0, n, (recipe.teacher_batch,), generator=gen)
        z0 = _latents(mean, idx, scale)
        caption = data.scene_of[idx].clone()
        drop = torch.rand(caption.shape, generator=gen) < recipe.caption_dropout
        caption[drop] = empty
        encoded = text_encoder(tokens[caption])
        hidden = encoded[0]
        t = torch.randint(0, acp.shape[0], (recipe.teacher_batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = teacher(noisy, t, encoder_hidden_states=hidden).sample
        # Min-SNR-5 weighting (Hang et al., 2023): nearly clean steps do not dominate.
        snr = acp[t] / (1 - acp[t])
        weight = snr.clamp(max=5.0) / snr
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        kept = ~drop
        if recipe.text_aux_weight and bool(kept.any()):
            logits = heads(encoded[1][kept])
            target = data.attributes[caption[kept]]
            aux = sum(
                torch.nn.functional.cross_entropy(logits[:, lo:hi], target[:, i])
                for i, (lo, hi) in enumerate(itertools.pairwise(bounds))
            )
            loss = loss + recipe.text_aux_weight * aux
        return loss

    ema_params = [*ema_unet.parameters(), *ema_text.parameters()]

    def ema() -> dict[str, Any]:
        _ema_update(ema_params, ema_sources, recipe.teacher_ema_decay)
        return {}

    t0 = time.perf_counter()
    teacher.train()
    text_encoder.train()
    result.losses["teacher"] = train_loop(
        "teacher",
        recipe.steps("teacher"),
        recipe.checkpoint_every,
        ck,
        {
            "unet": teacher,
            "text_encoder": text_encoder,
            "heads": heads,
            "unet_ema": ema_unet,
            "text_encoder_ema": ema_text,
        },
        optimizer,
        gen,
        step,
        ema,
        progress,
        result.resumed_from,
    )
    result.durations_s["teacher"] = round(time.perf_counter() - t0, 1)
    ck.save(
        "teacher",
        {"unet": ema_unet.state_dict(), "text_encoder": ema_text.state_dict()},
        done=True,
    )
    return ema_text.eval(), ema_unet.eval()


def _stage_distill(
    recipe: Recipe,
    data: _Data,
    latents: tuple[Any, float],
    hidden_all: Any,
    teacher: Any,
    ck: Checkpoints,
    progress: bool,
    result: TrainResult,
) -> Any:
    import copy

    import torch

    student = _unet(recipe, TIME_COND_PROJ_DIM)
    done = ck.load("distill", done=True)
    if done is not None:
        student.load_state_dict(done["unet"])
        return student.eval()
    # The student starts as the teacher; the guidance embedding's projection starts at
    # zero, so before training it adds nothing.
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("time_embedding.cond_proj") for k in missing):
        raise BuildError(f"student/teacher mismatch: missing {missing}, unexpected {unexpected}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    target = copy.deepcopy(student)
    target.requires_grad_(False)
    teacher.requires_grad_(False)
    gen = torch.Generator().manual_seed(recipe.seed + 30)
    optimizer = _adamw(student.parameters(), recipe.distill_lr)
    mean, scale = latents
    acp = _alphas_cumprod()
    step_ratio = acp.shape[0] // _DDIM_STEPS
    grid = torch.arange(1, _DDIM_STEPS + 1) * step_ratio - 1  # 19, 39, ..., 999
    n = mean.shape[0]
    uncond = hidden_all[len(data.captions)]

    def x0_from_eps(x: Any, eps: Any, a: Any) -> Any:
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    def step() -> Any:
        b = recipe.distill_batch
        idx = torch.randint(0, n, (b,), generator=gen)
        z0 = _latents(mean, idx, scale)
        hidden = hidden_all[data.scene_of[idx]]
        k = torch.randint(0, _DDIM_STEPS, (b,), generator=gen)
        t_start = grid[k]
        t_prev = (t_start - step_ratio).clamp(min=0)
        noise = torch.randn(z0.shape, generator=gen)
        a_start = acp[t_start].view(-1, 1, 1, 1)
        a_prev = acp[t_prev].view(-1, 1, 1, 1)
        x_start = a_start.sqrt() * z0 + (1 - a_start).sqrt() * noise
        w = recipe.w_min + (recipe.w_max - recipe.w_min) * torch.rand((b,), generator=gen)
        w_emb = guidance_embedding(w)
        ww = w.view(-1, 1, 1, 1)
        skip_s, out_s = (c.view(-1, 1, 1, 1) for c in boundary_scalings(t_start))
        skip_p, out_p = (c.view(-1, 1, 1, 1) for c in boundary_scalings(t_prev))

        eps = student(x_start, t_start, timestep_cond=w_emb, encoder_hidden_states=hidden).sample
        pred = skip_s * x_start + out_s * x0_from_eps(x_start, eps, a_start)
        with torch.no_grad():
            both = teacher(
                torch.cat([x_start, x_start]),
                torch.cat([t_start, t_start]),
                encoder_hidden_states=torch.cat([hidden, uncond.expand_as(hidden)]),
            ).sample
            eps_c, eps_u = both.chunk(2)
            eps_g = eps_c + ww * (eps_c - eps_u)
            x0_g = x0_from_eps(x_start, eps_g, a_start)
            # The teacher's guided DDIM step from t_start to t_prev.
            x_prev = a_prev.sqrt() * x0_g + (1 - a_prev).sqrt() * eps_g
            eps_t = target(x_prev, t_prev, timestep_cond=w_emb, encoder_hidden_states=hidden).sample
            goal = skip_p * x_prev + out_p * x0_from_eps(x_prev, eps_t, a_prev)
        # Pseudo-Huber loss with c = 0.001, as in the LCM paper.
        return (torch.sqrt((pred - goal) ** 2 + 1e-6) - 1e-3).mean()

    student_params = list(student.parameters())
    target_params = list(target.parameters())

    def ema() -> dict[str, Any]:
        _ema_update(target_params, student_params, recipe.ema_decay)
        return {}

    t0 = time.perf_counter()
    student.train()
    result.losses["distill"] = train_loop(
        "distill",
        recipe.steps("distill"),
        recipe.checkpoint_every,
        ck,
        {"unet": student, "target": target},
        optimizer,
        gen,
        step,
        ema,
        progress,
        result.resumed_from,
    )
    student.eval()
    result.durations_s["distill"] = round(time.perf_counter() - t0, 1)
    ck.save("distill", {"unet": student.state_dict()}, done=True)
    return student


# ---------------------------------------------------------------------------- entry point


def train_reference(
    out_dir: Path,
    recipe: Recipe | None = None,
    *,
    threads: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Generate the domain data and train the reference LCM into ``out_dir`` (resumable)."""
    import torch
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler
    from transformers import CLIPTokenizer

    recipe = recipe or Recipe()
    recipe.check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ck = Checkpoints(out_dir / CHECKPOINT_DIR)
    recipe_file = ck.root / "recipe.json"
    recipe_json = json.dumps(asdict(recipe), sort_keys=True)
    if recipe_file.is_file() and recipe_file.read_text() != recipe_json:
        raise BuildInputError(
            f"{out_dir} holds checkpoints of another recipe ({recipe_file}); use a new OUT "
            "folder or delete its .training folder to start over"
        )
    recipe_file.write_text(recipe_json)
    if threads:
        torch.set_num_threads(threads)
    result = TrainResult(out_dir=out_dir)
    t_all = time.perf_counter()

    split = make_split(recipe.seed)
    train_scenes = split.train_scenes()
    captions = [s.caption for s in train_scenes]
    t0 = time.perf_counter()
    pixels, scene_index = render_dataset(
        train_scenes, recipe.per_scene, recipe.image_size, recipe.seed
    )
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    colours, shapes = list(PALETTE), list(SHAPES)
    attributes = torch.tensor(
        [
            [colours.index(s.colour), shapes.index(s.shape), colours.index(s.background)]
            for s in train_scenes
        ]
    )
    data = _Data(images, torch.tensor(scene_index), captions, split, attributes)
    result.durations_s["data"] = round(time.perf_counter() - t0, 1)
    logger.info("dataset: %d images of %d training scenes", len(scene_index), len(train_scenes))

    tok_dir = out_dir / "tokenizer"
    # Every caption of the grammar uses the training vocabulary; the held-out ones add no word.
    every_caption = [s.caption for s in all_scenes()]
    train_clip_bpe(every_caption, tok_dir, max_length=recipe.text_max_length)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    _tokenize(tokenizer, every_caption)  # the held-out captions must fit as well
    tokens = _tokenize(tokenizer, [*captions, ""])

    vae = _stage_vae(recipe, data, ck, progress, result)
    colour_error = vae_colour_error(vae, data, train_scenes)
    worst = max(colour_error.values())
    (logger.warning if worst > VAE_COLOUR_ERROR_WARN else logger.info)(
        "VAE colour error inside shapes, RGB levels: %s (worst %.1f; above %.0f the renders' "
        "colours are fragile under INT8)",
        colour_error,
        worst,
        VAE_COLOUR_ERROR_WARN,
    )
    mean = _encode_latents(vae, data.images)
    scale = float(1.0 / mean.std())
    latents = (mean, scale)
    text_encoder, teacher = _stage_teacher(
        recipe, data, latents, tokens, tokenizer.get_vocab(), ck, progress, result
    )
    with torch.no_grad():
        hidden_all = text_encoder(tokens)[0]
    student = _stage_distill(recipe, data, latents, hidden_all, teacher, ck, progress, result)

    vae.register_to_config(scaling_factor=round(scale, 6))
    pipe: Any = LatentConsistencyModelPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=student,
        scheduler=LCMScheduler(**LCM_DREAMSHAPER_V7_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    result.durations_s["total"] = round(time.perf_counter() - t_all, 1)
    record = {
        "kind": "lcm-fleet reference",
        "domain": "a <colour> <shape> on a <colour> background",
        "image_size": recipe.image_size,
        "split": split.record(),
        "recipe": asdict(recipe),
        "threads": torch.get_num_threads(),
        "latent_scaling_factor": round(scale, 6),
        "vae_colour_error_rgb": colour_error,
        "training": {"durations_s": result.durations_s, "final_losses": result.losses},
    }
    (out_dir / REFERENCE_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return result
