"""Render one evaluation set with a reference and a candidate artifact, and compare them.

Quality: both render the same prompts and seeds through the worker's own pipeline class
(:class:`worker.render.pipeline.GenaiPipeline`: openvino.genai, ``CppStdGenerator`` seeds)
with f32 inference, so every difference is the candidate's own (quantization or
precision). Per image: PSNR and SSIM (scikit-image) against the reference, and the mean
absolute pixel difference.

Speed: both are compiled again by the same class at the device's default precision (what
a worker runs) and timed in the same run: UNet, VAE decoder and whole-pipeline time per image,
medians over ``speed_runs`` renders after one warm-up render.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lcm_fleet.artifact.kinds import InferencePrecision
from worker.render.pipeline import CompileOptions, GenaiPipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSpec:
    width: int
    height: int
    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 4
    guidance_scale: float = 8.0
    speed_runs: int = 3


@dataclass(frozen=True)
class ImageScore:
    prompt: str
    seed: int
    psnr_db: float
    ssim: float
    mean_abs_diff: float


@dataclass(frozen=True)
class Speed:
    unet_s: float
    pipeline_s: float
    vae_s: float = 0.0


@dataclass
class Comparison:
    scores: list[ImageScore]
    reference_speed: Speed
    candidate_speed: Speed
    #: Pixels of the renders (reference, candidate), for the contact sheet.
    pixels: list[tuple[Any, Any]] = field(default_factory=list, repr=False)

    def aggregate(self) -> dict[str, float]:
        finite = [s.psnr_db for s in self.scores if math.isfinite(s.psnr_db)]
        return {
            "images": len(self.scores),
            "psnr_db_mean": round(statistics.fmean(finite), 3) if finite else math.inf,
            "psnr_db_min": round(min(finite), 3) if finite else math.inf,
            "ssim_mean": round(statistics.fmean(s.ssim for s in self.scores), 5),
            "ssim_min": round(min(s.ssim for s in self.scores), 5),
            "mean_abs_diff_mean": round(statistics.fmean(s.mean_abs_diff for s in self.scores), 4),
            "mean_abs_diff_max": round(max(s.mean_abs_diff for s in self.scores), 4),
        }

    def speed(self) -> dict[str, Any]:
        ref, cand = self.reference_speed, self.candidate_speed
        return {
            "precision_hint": "device default",
            "reference": asdict(ref),
            "candidate": asdict(cand),
            "unet_speedup": round(ref.unet_s / cand.unet_s, 3) if cand.unet_s else None,
            "vae_speedup": round(ref.vae_s / cand.vae_s, 3) if cand.vae_s else None,
            "pipeline_speedup": round(ref.pipeline_s / cand.pipeline_s, 3)
            if cand.pipeline_s
            else None,
        }


def score(reference: Any, candidate: Any, prompt: str, seed: int) -> ImageScore:
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if np.array_equal(reference, candidate):
        psnr = math.inf
    else:
        psnr = float(peak_signal_noise_ratio(reference, candidate, data_range=255))
    ssim = float(structural_similarity(reference, candidate, channel_axis=2, data_range=255))
    mad = float(np.mean(np.abs(reference.astype(np.int16) - candidate.astype(np.int16))))
    return ImageScore(
        prompt=prompt,
        seed=seed,
        psnr_db=round(psnr, 3),
        ssim=round(ssim, 5),
        mean_abs_diff=round(mad, 4),
    )


def _pipeline(artifact: Path, spec: EvalSpec, precision: InferencePrecision) -> GenaiPipeline:
    """The worker's pipeline class on ``artifact`` (which may have no manifest yet)."""
    options = CompileOptions(precision=precision)
    return GenaiPipeline.for_folder(
        artifact, spec.width, spec.height, spec.guidance_scale, options=options
    )


def render_set(artifact: Path, spec: EvalSpec, label: str, progress: bool = True) -> list[Any]:
    """The evaluation set's images (f32 inference), in prompt-major, seed-minor order."""
    from tqdm import tqdm

    pipe = _pipeline(artifact, spec, InferencePrecision.F32)
    jobs = [(p, s) for p in spec.prompts for s in spec.seeds]
    images = []
    for prompt, seed in tqdm(jobs, desc=f"evaluate {label}", unit="image", disable=not progress):
        pixels, _ = pipe.generate(prompt, seed, spec.steps, spec.guidance_scale)
        images.append(pixels)
    return images


def measure_speed(artifact: Path, spec: EvalSpec, label: str, progress: bool = True) -> Speed:
    """Median UNet, VAE and pipeline seconds per image at the device's default precision."""
    from tqdm import tqdm

    pipe = _pipeline(artifact, spec, InferencePrecision.DEFAULT)
    # Warm-up: the first generate is slower.
    pipe.generate(spec.prompts[0], 0, spec.steps, spec.guidance_scale)
    unet, vae, total = [], [], []
    for run in tqdm(
        range(spec.speed_runs), desc=f"time {label}", unit="image", disable=not progress
    ):
        prompt = spec.prompts[run % len(spec.prompts)]
        _, times = pipe.generate(prompt, run, spec.steps, spec.guidance_scale)
        total.append(times.total_s)
        unet.append(times.unet_s)
        vae.append(times.vae_s)
    return Speed(
        unet_s=round(statistics.median(unet), 4),
        pipeline_s=round(statistics.median(total), 4),
        vae_s=round(statistics.median(vae), 4),
    )


def compare_artifacts(
    reference: Path, candidate: Path, spec: EvalSpec, progress: bool = True
) -> Comparison:
    ref = render_set(reference, spec, "reference", progress)
    cand = render_set(candidate, spec, "candidate", progress)
    jobs = [(p, s) for p in spec.prompts for s in spec.seeds]
    scores = [score(r, c, p, s) for (p, s), r, c in zip(jobs, ref, cand, strict=True)]
    comparison = Comparison(
        scores=scores,
        reference_speed=measure_speed(reference, spec, "reference", progress),
        candidate_speed=measure_speed(candidate, spec, "candidate", progress),
        pixels=list(zip(ref, cand, strict=True)),
    )
    logger.info("candidate vs reference: %s; speed %s", comparison.aggregate(), comparison.speed())
    return comparison
