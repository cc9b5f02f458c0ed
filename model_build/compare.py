"""Render the same prompts and seeds with two artifacts and measure how far apart they are.

Both run through openvino.genai (the worker's runtime) with f32 inference and the same
``CppStdGenerator`` seeds, so the difference is the candidate's own (quantization).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Prompts of the build-time check (different from the calibration set).
CHECK_PROMPTS = (
    "a lighthouse on a rocky coast at sunset, oil painting",
    "close-up portrait of a smiling elderly woman, natural window light",
    "a bowl of ramen with steam rising, food photography",
    "a futuristic city skyline at night with neon reflections on wet streets",
)


@dataclass(frozen=True)
class Comparison:
    images: int
    mean_abs_diff: float
    psnr_db: float
    min_psnr_db: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def render_set(
    artifact: Path,
    width: int,
    height: int,
    steps: int,
    guidance_scale: float,
    prompts: tuple[str, ...],
    seeds: tuple[int, ...],
    label: str = "",
    progress: bool = True,
) -> list[Any]:
    import numpy as np
    import openvino_genai as ov_genai
    from tqdm import tqdm

    pipe = ov_genai.Text2ImagePipeline(str(artifact))
    pipe.reshape(1, height, width, guidance_scale)
    pipe.compile("CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    images = []
    for prompt, seed in tqdm(
        jobs, desc=f"check renders {label}", unit="image", disable=not progress
    ):
        out = pipe.generate(
            prompt,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=ov_genai.CppStdGenerator(seed),
        )
        images.append(np.array(out.data[0], copy=True))
    return images


def compare_artifacts(
    reference: Path,
    candidate: Path,
    width: int,
    height: int,
    steps: int = 4,
    guidance_scale: float = 8.0,
    prompts: tuple[str, ...] = CHECK_PROMPTS,
    seeds: tuple[int, ...] = (0, 1),
    progress: bool = True,
) -> Comparison:
    import numpy as np

    ref = render_set(
        reference, width, height, steps, guidance_scale, prompts, seeds, "(reference)", progress
    )
    cand = render_set(
        candidate, width, height, steps, guidance_scale, prompts, seeds, "(candidate)", progress
    )
    diffs = [
        float(np.mean(np.abs(r.astype(np.int16) - c.astype(np.int16))))
        for r, c in zip(ref, cand, strict=True)
    ]
    psnrs = [psnr(r, c) for r, c in zip(ref, cand, strict=True)]
    finite = [p for p in psnrs if math.isfinite(p)]
    mean_psnr = sum(finite) / len(finite) if finite else math.inf
    result = Comparison(
        images=len(ref),
        mean_abs_diff=round(sum(diffs) / len(diffs), 4),
        psnr_db=round(mean_psnr, 3) if math.isfinite(mean_psnr) else 999.0,
        min_psnr_db=round(min(finite), 3) if finite else 999.0,
    )
    logger.info("candidate vs reference: %s", result)
    return result
