"""Train a tiny decoder of the TAESD architecture for a model: ``lcm-build train-decoder``.

The decoder is diffusers' ``AutoencoderTiny`` decoder (TAESD), distilled from the model's
own VAE decoder on latents the model itself produces: its pipeline renders prompts of its
domain (``output_type="latent"``, several step counts and seeds), and for a model of the
reference domain the VAE's latents of the domain's drawings are added. The target of every
latent is what the model's VAE decoder makes of it, so the tiny decoder learns to stand in
for exactly that decoder (genai feeds both the same final latents).

Stages (checkpoints in ``OUT/.training``, through model_build.training):

1. check the inputs (the model's folder and configs, the recipe, OUT and ``--resume``);
2. prepare OUT (a new folder, or the run it holds when resuming);
3. the data: render the latents and decode them with the model's VAE (kept as a checkpoint,
   so a resumed run does not render again);
4. train the decoder (resumable every ``checkpoint_every`` steps);
5. measure it against the VAE decoder on renders of other prompts and seeds;
6. write OUT: an ``AutoencoderTiny`` folder (``--taesd OUT`` takes it) and
   ``train-decoder.json`` (recipe, model, figures, durations); the checkpoints go.

Deterministic: the same model, recipe, seed and thread count give the same weights, byte for
byte, also after a resume. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lcm_fleet.artifact.manifest import artifact_files, sha256_file
from model_build.errors import BuildInputError
from model_build.training import Checkpoints, train_loop
from model_build.vae_decoder import MODEL_TAESD_DIR

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = ".training"
RECORD_NAME = "train-decoder.json"
STAGE = "decoder"
#: TAESD's own decoder (madebyollin/taesd, diffusers' AutoencoderTiny defaults).
TAESD_CHANNELS = 64
TAESD_BLOCKS = (3, 3, 3, 1)
#: A VAE no wider than this (the reference and tiny models) gets the small decoder.
SMALL_VAE_MAX_CHANNELS = 64
#: Latent crop sides for training: a full-size VAE's decoder sees 128x128 pixel pieces.
FULL_CROP = 16
SMALL_CROP = 8
#: The encoder is not trained (``--vae-decoder taesd`` uses only the decoder): the smallest
#: one AutoencoderTiny allows, so the folder stays small.
ENCODER_CHANNELS = 8


@dataclass(frozen=True)
class DecoderRecipe:
    """Everything that determines the weights (with the model and the thread count)."""

    seed: int = 0
    steps: int = 1600
    batch: int = 8
    lr: float = 4e-3
    #: Weight of the L1 term beside the MSE (sharper flat colours and edges).
    l1_weight: float = 0.5
    #: Decoder width; None: from the model (see :func:`architecture`).
    channels: int | None = None
    #: AutoencoderTiny blocks per decoder stage; None: from the model.
    blocks: tuple[int, ...] | None = None
    #: Renders per prompt, each with its own seed; the step counts cycle over the seeds.
    seeds_per_prompt: int = 4
    render_steps: tuple[int, ...] = (1, 2, 4, 8)
    #: None: the model's served default (8.0 with a guidance embedding, else 1.0).
    guidance_scale: float | None = None
    #: Reference-domain models: drawings per training scene encoded by the VAE (0: none).
    encoded_per_scene: int = 2
    #: Latent crop side for training (the decoder is convolutional); None: from the model,
    #: 16 for a full-size VAE (128x128 pieces of a 512x512 image), 8 for a small one (the
    #: reference model's whole 64x64 image).
    crop: int | None = None
    #: Evaluation renders per evaluation prompt (seeds not used for the training data).
    eval_seeds: int = 2
    checkpoint_every: int = 250

    def check(self) -> None:
        for name in ("steps", "batch", "seeds_per_prompt", "eval_seeds"):
            if getattr(self, name) < 1:
                raise BuildInputError(f"{name}={getattr(self, name)} must be at least 1")
        if self.checkpoint_every < 1:
            raise BuildInputError(f"checkpoint_every={self.checkpoint_every} must be at least 1")
        if not self.lr > 0:
            raise BuildInputError(f"lr={self.lr} must be above 0")
        if self.l1_weight < 0:
            raise BuildInputError(f"l1_weight={self.l1_weight} must be at least 0")
        if not self.render_steps or min(self.render_steps) < 1:
            raise BuildInputError(
                f"render_steps={self.render_steps} must be one or more step counts of at least 1"
            )
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise BuildInputError(f"guidance_scale={self.guidance_scale} must be at least 0")
        if self.encoded_per_scene < 0:
            raise BuildInputError(f"encoded_per_scene={self.encoded_per_scene} must be >= 0")
        if self.crop is not None and self.crop < 1:
            raise BuildInputError(f"crop={self.crop} must be at least 1")
        if self.channels is not None and self.channels < 1:
            raise BuildInputError(f"channels={self.channels} must be at least 1")
        if self.blocks is not None and (not self.blocks or min(self.blocks) < 0):
            raise BuildInputError(
                f"blocks={self.blocks} must give a block count (0 or more) for every stage"
            )


@dataclass(frozen=True)
class ModelFacts:
    """What the model's folder says (stage 1)."""

    model_dir: Path
    #: The VAE's latent channels, image/latent scale factor and latent scaling/shift.
    latent_channels: int
    scale_factor: int
    stages: int
    scaling_factor: float
    shift_factor: float
    vae_channels: tuple[int, ...]
    image_size: int
    guidance_scale: float
    #: Training prompts and evaluation prompts, and how the record names them.
    prompts: tuple[str, ...]
    eval_prompts: tuple[str, ...]
    prompts_name: str
    #: A reference-domain model (its reference.json): its drawings can be encoded.
    reference: bool


@dataclass(frozen=True)
class DecoderData:
    """Stage 3: latents (N x C x h x w, float32) and the VAE decoder's images of them
    (N x 3 x H x W, uint8), for training and for the evaluation."""

    latents: Any
    images: Any
    eval_latents: Any
    eval_images: Any
    counts: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class TrainedDecoder:
    """What ``lcm-build train-decoder`` made."""

    out_dir: Path
    config: dict[str, Any]
    figures: dict[str, Any]
    durations_s: dict[str, float] = field(default_factory=dict)
    resumed_from: dict[str, int] = field(default_factory=dict)
    weights_bytes: int = 0


# ---------------------------------------------------------------------------- 1. inputs


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildInputError(f"{path} ({what}) is missing or not JSON: {e}") from e
    return data


def check_model(
    model_dir: Path, prompts: str | Path = "calibration", eval_prompts: str | Path = "eval"
) -> ModelFacts:
    """The model must be a local diffusers text-to-image folder with a VAE and a UNet.

    A reference-domain model renders its training captions and is measured on the gate's
    captions of its domain, unless other prompts are given."""
    from model_build.prompts import load_prompts
    from model_build.reference.quality import reference_prompts

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BuildInputError(
            f"model={str(model_dir)!r} is not a folder; pass a local diffusers pipeline folder "
            "(for a hub model, download it first: huggingface-cli download ID --local-dir DIR)"
        )
    if not (model_dir / "model_index.json").is_file():
        raise BuildInputError(
            f"model={str(model_dir)!r} has no model_index.json; pass a diffusers pipeline "
            "folder (as written by save_pretrained)"
        )
    vae = _read_json(model_dir / "vae" / "config.json", "the model's VAE config")
    unet = _read_json(model_dir / "unet" / "config.json", "the model's UNet config")
    if vae.get("_class_name") != "AutoencoderKL":
        raise BuildInputError(
            f"{model_dir}/vae is a {vae.get('_class_name')!r}; train-decoder distills an "
            "AutoencoderKL decoder"
        )
    channels = tuple(int(c) for c in vae.get("block_out_channels") or ())
    latent = int(vae.get("latent_channels") or 0)
    if not channels or latent < 1:
        raise BuildInputError(
            f"{model_dir}/vae/config.json lacks block_out_channels or latent_channels"
        )
    if int(unet.get("in_channels") or 0) != latent:
        raise BuildInputError(
            f"the UNet makes in_channels={unet.get('in_channels')} latents, the VAE takes "
            f"latent_channels={latent}: not a text-to-image pipeline this can train for"
        )
    scale = 2 ** (len(channels) - 1)
    sample = unet.get("sample_size", 64)
    size = int(sample[0] if isinstance(sample, list) else sample) * scale
    guidance = 8.0 if unet.get("time_cond_proj_dim") else 1.0
    domain = reference_prompts(model_dir)
    if domain is not None and str(prompts) == "calibration":
        train_prompts, name = domain["calibration"], "reference-domain training captions"
    else:
        train_prompts, name = load_prompts(prompts), str(prompts)
    if domain is not None and str(eval_prompts) == "eval":
        measured = domain["eval"]
    else:
        measured = load_prompts(eval_prompts)
    return ModelFacts(
        model_dir=model_dir,
        latent_channels=latent,
        scale_factor=scale,
        stages=len(channels),
        scaling_factor=float(vae.get("scaling_factor") or 1.0),
        shift_factor=float(vae.get("shift_factor") or 0.0),
        vae_channels=channels,
        image_size=size,
        guidance_scale=guidance,
        prompts=tuple(train_prompts),
        eval_prompts=tuple(measured),
        prompts_name=name,
        reference=domain is not None,
    )


def architecture(recipe: DecoderRecipe, facts: ModelFacts) -> DecoderRecipe:
    """The recipe with the decoder's width and blocks resolved from the model.

    A VAE of full size gets TAESD's own decoder (64 channels, blocks (3, 3, 3, 1)), the one
    madebyollin/taesd publishes. A VAE no wider than 64 channels (the reference and tiny
    models) gets a small one: half the VAE's widest block, one block per stage, trained on
    8x8 latent crops (the reference model's whole 64x64 image); for the
    64x64 reference model that is (measured: docs/model-build.md#a-tiny-decoder-of-our-own)
    as good as the gate needs and cheap to train.
    """
    small = max(facts.vae_channels) <= SMALL_VAE_MAX_CHANNELS
    channels = recipe.channels or (
        max(8, max(facts.vae_channels) // 2) if small else TAESD_CHANNELS
    )
    blocks = recipe.blocks or ((1,) * facts.stages if small else TAESD_BLOCKS)
    if len(blocks) != facts.stages:
        raise BuildInputError(
            f"blocks={blocks} has {len(blocks)} stages, the model's VAE upsamples "
            f"{facts.scale_factor}x in {facts.stages}: give {facts.stages} block counts "
            "(genai derives the scale factor as 2 ** (stages - 1))"
        )
    crop = recipe.crop or (SMALL_CROP if small else FULL_CROP)
    return replace(recipe, channels=channels, blocks=tuple(blocks), crop=crop)


def taesd_kwargs(recipe: DecoderRecipe, facts: ModelFacts) -> dict[str, Any]:
    """AutoencoderTiny's config for the resolved recipe: the model's latent channels and
    stage count (upsampling 2x per stage), so it decodes the model's latents to its size."""
    assert recipe.channels is not None and recipe.blocks is not None
    return dict(
        encoder_block_out_channels=(ENCODER_CHANNELS,) * facts.stages,
        num_encoder_blocks=(1,) * facts.stages,
        decoder_block_out_channels=(recipe.channels,) * facts.stages,
        num_decoder_blocks=recipe.blocks,
        latent_channels=facts.latent_channels,
        upsampling_scaling_factor=2,
    )


def _recipe_json(recipe: DecoderRecipe) -> str:
    return json.dumps(asdict(recipe), sort_keys=True)


def check_out(out_dir: Path, recipe: DecoderRecipe, threads: int, resume: bool) -> None:
    """OUT must be new or empty, or, with ``resume``, hold a run of this recipe and threads."""
    out_dir = Path(out_dir)
    run = out_dir / CHECKPOINT_DIR / "recipe.json"
    if not resume:
        if out_dir.exists() and any(out_dir.iterdir()):
            hint = (
                "it holds a run: pass --resume to continue it, or choose a new folder"
                if run.is_file()
                else "choose a new folder"
            )
            raise BuildInputError(f"output folder {str(out_dir)!r} is not empty; {hint}")
        return
    if not run.is_file():
        raise BuildInputError(
            f"--resume: {str(out_dir)!r} holds no run ({run} is missing); start one without "
            "--resume"
        )
    saved = _read_json(run, "the run's recipe")
    if json.dumps(saved.get("recipe"), sort_keys=True) != _recipe_json(recipe):
        raise BuildInputError(
            f"--resume: {out_dir} holds a run of another recipe ({run}: {saved.get('recipe')}); "
            "resume with the same options, or use a new OUT folder"
        )
    if saved.get("threads") != threads:
        raise BuildInputError(
            f"--resume: {out_dir} was started with threads={saved.get('threads')}, this run has "
            f"threads={threads}; pass --threads {saved.get('threads')} (the weights depend on it)"
        )


# ---------------------------------------------------------------------------- 3. data


def _pipeline(model_dir: Path) -> Any:
    from diffusers import DiffusionPipeline

    pipe: Any = DiffusionPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render_batch(image_size: int) -> int:
    """Renders per pipeline call: many small images, few large ones (memory)."""
    return max(1, min(32, (128 * 128 * 32) // (image_size * image_size)))


def _render_latents(
    pipe: Any,
    jobs: list[tuple[str, int, int]],
    guidance: float,
    batch: int,
    progress: bool,
    desc: str,
) -> Any:
    """Final denoised latents (what genai feeds the decoder) of (prompt, seed, steps) jobs."""
    import torch
    from tqdm import tqdm

    out = []
    groups: dict[int, list[tuple[str, int, int]]] = {}
    for job in jobs:
        groups.setdefault(job[2], []).append(job)
    bar = tqdm(total=len(jobs), desc=desc, unit="render", disable=not progress)
    order = []
    with torch.no_grad():
        for steps, group in sorted(groups.items()):
            for start in range(0, len(group), batch):
                chunk = group[start : start + batch]
                latents = pipe(
                    prompt=[p for p, _, _ in chunk],
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=[torch.Generator().manual_seed(s) for _, s, _ in chunk],
                    output_type="latent",
                ).images
                out.append(latents.float())
                order.extend(chunk)
                bar.update(len(chunk))
    bar.close()
    return torch.cat(out)


def _decode(vae: Any, latents: Any, facts: ModelFacts) -> Any:
    """The VAE decoder's images of final latents as uint8, as genai computes them
    (``latents / scaling + shift`` in, ``clamp(x / 2 + 0.5, 0, 1)`` out, rounded)."""
    import torch

    images = []
    with torch.no_grad():
        for chunk in latents.split(16):
            x = vae.decode(chunk / facts.scaling_factor + facts.shift_factor).sample
            images.append(((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(images)


def _encoded_latents(vae: Any, facts: ModelFacts, per_scene: int, seed: int) -> Any:
    """The VAE's latents (posterior means, scaled as the UNet's) of reference-domain drawings."""
    import torch

    from model_build.reference.domain import render_dataset
    from model_build.reference.evaluate import split_of

    scenes = split_of(facts.model_dir).train_scenes()
    pixels, _ = render_dataset(scenes, per_scene, facts.image_size, seed)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        means = torch.cat([vae.encode(c).latent_dist.mean for c in images.split(64)])
    return (means - facts.shift_factor) * facts.scaling_factor


def make_data(
    facts: ModelFacts, recipe: DecoderRecipe, ck: Checkpoints, progress: bool
) -> DecoderData:
    """Stage 3: render and decode once; a resumed run reads the checkpoint."""
    import torch

    done = ck.load("data", done=True)
    if done is not None:
        return DecoderData(**done, seconds=0.0)
    t0 = time.perf_counter()
    pipe = _pipeline(facts.model_dir)
    guidance = recipe.guidance_scale if recipe.guidance_scale is not None else facts.guidance_scale
    batch = _render_batch(facts.image_size)
    # Seeds: training renders 1000 + i, evaluation renders 0.. (as the gate's seeds), so no
    # evaluation render is a training render.
    steps = recipe.render_steps
    jobs = [
        (prompt, 1000 + p * recipe.seeds_per_prompt + k, steps[k % len(steps)])
        for p, prompt in enumerate(facts.prompts)
        for k in range(recipe.seeds_per_prompt)
    ]
    latents = _render_latents(pipe, jobs, guidance, batch, progress, "render latents")
    counts = {"rendered": int(latents.shape[0])}
    if facts.reference and recipe.encoded_per_scene:
        encoded = _encoded_latents(pipe.vae, facts, recipe.encoded_per_scene, recipe.seed)
        latents = torch.cat([latents, encoded])
        counts["encoded_drawings"] = int(encoded.shape[0])
    eval_jobs = [(p, s, 4) for p in facts.eval_prompts for s in range(recipe.eval_seeds)]
    eval_latents = _render_latents(pipe, eval_jobs, guidance, batch, progress, "render eval")
    counts["evaluation"] = int(eval_latents.shape[0])
    state = {
        "latents": latents,
        "images": _decode(pipe.vae, latents, facts),
        "eval_latents": eval_latents,
        "eval_images": _decode(pipe.vae, eval_latents, facts),
        "counts": counts,
    }
    ck.save("data", state, done=True)
    seconds = round(time.perf_counter() - t0, 1)
    logger.info("data: %s in %.1fs", counts, seconds)
    return DecoderData(**state, seconds=seconds)


# ---------------------------------------------------------------------------- 4. train


def _new_decoder(recipe: DecoderRecipe, facts: ModelFacts) -> Any:
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(recipe.seed)
    return AutoencoderTiny(**taesd_kwargs(recipe, facts))


def train(
    facts: ModelFacts,
    recipe: DecoderRecipe,
    data: DecoderData,
    ck: Checkpoints,
    progress: bool,
    resumed: dict[str, int],
) -> tuple[Any, float, float]:
    """Stage 4: the decoder, its final loss and seconds (the done checkpoint if there is one)."""
    import torch

    from model_build.reference.train import _adamw

    vae = _new_decoder(recipe, facts)
    done = ck.load(STAGE, done=True)
    if done is not None:
        vae.load_state_dict(done["taesd"])
        return vae.eval(), float(done["loss"]), 0.0
    # Channels-last convolutions: 2.4x faster steps at 32 channels on this CPU (measured:
    # docs/model-build.md#a-tiny-decoder-of-our-own).
    decoder = vae.decoder.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    optimizer = _adamw(decoder.parameters(), recipe.lr)
    latents, images = data.latents, data.images
    n, side = latents.shape[0], latents.shape[-1]
    assert recipe.crop is not None
    crop = min(recipe.crop, side)
    f = facts.scale_factor

    def step() -> Any:
        idx = torch.randint(0, n, (recipe.batch,), generator=gen)
        top, left = torch.randint(0, side - crop + 1, (2,), generator=gen).tolist()
        x = latents[idx, :, top : top + crop, left : left + crop]
        x = x.contiguous(memory_format=torch.channels_last)
        target = images[idx, :, top * f : (top + crop) * f, left * f : (left + crop) * f]
        target = target.float() / 127.5 - 1.0
        out = decoder(x)
        diff = out - target
        return (diff**2).mean() + recipe.l1_weight * diff.abs().mean()

    t0 = time.perf_counter()
    decoder.train()
    loss = train_loop(
        STAGE,
        recipe.steps,
        recipe.checkpoint_every,
        ck,
        {"taesd": vae},
        optimizer,
        gen,
        step,
        None,
        progress,
        resumed,
        lr_field="--lr",
    )
    vae.decoder.to(memory_format=torch.contiguous_format)
    vae.eval()
    ck.save(STAGE, {"taesd": vae.state_dict(), "loss": loss}, done=True)
    return vae, loss, round(time.perf_counter() - t0, 1)


# ---------------------------------------------------------------------------- 5. measure


def measure(vae: Any, data: DecoderData) -> dict[str, Any]:
    """Stage 5: the decoder against the VAE decoder on the evaluation renders (uint8 images
    as genai makes them): PSNR (mean, worst), mean |difference| in levels, max difference."""
    import torch

    with torch.no_grad():
        out = vae.decode(data.eval_latents).sample
    pixels = ((out / 2 + 0.5).clamp(0, 1) * 255).round()
    ref = data.eval_images.float()
    mse = ((pixels - ref) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    psnr = 10 * torch.log10(255.0**2 / mse)
    return {
        "against": "the model's VAE decoder, on renders of the evaluation prompts",
        "images": int(ref.shape[0]),
        "psnr_db_mean": round(float(psnr.mean()), 2),
        "psnr_db_min": round(float(psnr.min()), 2),
        "mean_abs_diff": round(float((pixels - ref).abs().mean()), 3),
        "max_abs_diff": int((pixels - ref).abs().max()),
    }


# ---------------------------------------------------------------------------- entry point


def train_decoder(
    model_dir: Path,
    out_dir: Path,
    recipe: DecoderRecipe | None = None,
    *,
    prompts: str | Path = "calibration",
    eval_prompts: str | Path = "eval",
    resume: bool = False,
    threads: int | None = None,
    progress: bool = True,
) -> TrainedDecoder:
    """Train a TAESD-architecture decoder for the model at ``model_dir`` into ``out_dir``."""
    # 1. Check the inputs: the recipe, the model, OUT and --resume (before torch loads).
    recipe = recipe or DecoderRecipe()
    recipe.check()
    if threads is not None and threads < 1:
        raise BuildInputError(f"threads={threads} must be at least 1")
    facts = check_model(model_dir, prompts, eval_prompts)
    recipe = architecture(recipe, facts)
    import torch

    threads = threads or torch.get_num_threads()
    out_dir = Path(out_dir)
    check_out(out_dir, recipe, threads, resume)

    # 2. Prepare OUT: the run's recipe and threads, for a resume to check.
    torch.set_num_threads(threads)
    ck = Checkpoints(out_dir / CHECKPOINT_DIR)
    (ck.root / "recipe.json").write_text(
        json.dumps({"recipe": asdict(recipe), "threads": threads}, sort_keys=True) + "\n"
    )
    t_all = time.perf_counter()
    resumed: dict[str, int] = {}

    # 3. The data: the model's own latents and its VAE decoder's images of them.
    data = make_data(facts, recipe, ck, progress)

    # 4. Train the decoder.
    vae, loss, train_s = train(facts, recipe, data, ck, progress, resumed)

    # 5. Measure it against the VAE decoder.
    figures = measure(vae, data)
    logger.info("decoder vs the VAE decoder: %s", figures)

    # 6. Write the AutoencoderTiny folder and its record.
    vae.save_pretrained(str(out_dir), safe_serialization=True)
    weights = out_dir / "diffusion_pytorch_model.safetensors"
    durations = {"data": data.seconds, "train": train_s}
    durations["total"] = round(time.perf_counter() - t_all, 1)
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    record = {
        "kind": "lcm-fleet train-decoder",
        "architecture": "diffusers AutoencoderTiny (TAESD); decoder distilled, encoder untrained",
        "model": describe_model(facts.model_dir),
        "vae": {
            "latent_channels": facts.latent_channels,
            "scale_factor": facts.scale_factor,
            "scaling_factor": facts.scaling_factor,
            "shift_factor": facts.shift_factor,
            "image_size": facts.image_size,
        },
        "prompts": facts.prompts_name,
        "recipe": asdict(recipe),
        "threads": threads,
        "data": data.counts,
        "final_loss": round(loss, 6),
        "figures": figures,
        "durations_s": durations,
        "resumed_from": resumed,
        "weights_bytes": weights.stat().st_size,
        "versions": {"torch": torch.__version__, "diffusers": _version("diffusers")},
    }
    (out_dir / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    # A finished run has nothing to resume; its checkpoints (the rendered data among them)
    # would only weigh on a model folder that keeps its decoder inside (MODEL/taesd).
    shutil.rmtree(ck.root)
    return TrainedDecoder(
        out_dir=out_dir,
        config=config,
        figures=figures,
        durations_s=durations,
        resumed_from=resumed,
        weights_bytes=weights.stat().st_size,
    )


def describe_model(model_dir: Path) -> dict[str, Any]:
    """The model as ``describe_source`` records a local folder, without its own decoder folder
    (``MODEL/taesd``, where this run may be writing), so the hash is the model's alone."""
    digest = hashlib.sha256()
    for rel in artifact_files(model_dir):
        if rel.split("/", 1)[0] == MODEL_TAESD_DIR:
            continue
        digest.update(rel.encode())
        digest.update(sha256_file(Path(model_dir) / rel).encode())
    return {
        "kind": "local",
        "path": str(Path(model_dir).resolve()),
        "content_sha256": digest.hexdigest(),
        "excludes": f"{MODEL_TAESD_DIR}/",
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
