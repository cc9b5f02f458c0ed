"""Render reference-domain captions with a model and score their prompt adherence.

A model is any of: a diffusers folder (PyTorch, fp32), an OpenVINO artifact folder
(rendered by the worker's own pipeline class, openvino.genai), or a folder of PNGs the
fleet wrote (their captions come from the PNG text chunks). The split (which combinations
training held out) comes from the model's ``reference.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_build.errors import BuildInputError
from model_build.reference.domain import Scene, Split, make_split, parse_caption
from model_build.reference.scorer import ATTRIBUTES, AdherenceReport, score_renders
from worker.render.pipeline import CompileOptions, GenaiPipeline

logger = logging.getLogger(__name__)

REFERENCE_JSON = "reference.json"
#: The bar's evaluation: 112 captions (every held-out combination and as many seen) x 2 seeds.
DEFAULT_COUNT = 112
DEFAULT_SEEDS = (0, 1)


@dataclass(frozen=True)
class EvalSettings:
    steps: int = 4
    guidance_scale: float = 8.0
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    #: openvino.genai inference precision: "f32" (full precision) or "default" (as served).
    precision: str = "f32"


def reference_record(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / REFERENCE_JSON
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return record


def split_of(folder: Path) -> Split:
    """The model's held-out split (from reference.json), or the default split for seed 0."""
    record = reference_record(folder)
    if record is None:
        return make_split(0)
    held = frozenset(tuple(c.split(" ")) for c in record["split"]["held_out"])
    return Split(seed=int(record["split"]["seed"]), held_out=held)


def load_captions(path: Path) -> list[Scene]:
    """Captions from a text file, one per line; every line must be of the grammar."""
    scenes = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            scenes.append(parse_caption(line))
        except ValueError as e:
            raise BuildInputError(f"{path}:{number}: {e}") from e
    if not scenes:
        raise BuildInputError(f"captions file {path} has no captions")
    return scenes


def render_diffusers(
    model_dir: Path, scenes: list[Scene], settings: EvalSettings, batch: int = 32
) -> list[tuple[Scene, Any]]:
    """PyTorch fp32 renders through diffusers' LatentConsistencyModelPipeline."""
    import numpy as np
    import torch
    from diffusers import LatentConsistencyModelPipeline

    pipe: Any = LatentConsistencyModelPipeline.from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    jobs = [(scene, seed) for scene in scenes for seed in settings.seeds]
    out: list[tuple[Scene, Any]] = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        images = pipe(
            prompt=[scene.caption for scene, _ in chunk],
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            generator=[torch.Generator().manual_seed(seed) for _, seed in chunk],
            output_type="np",
        ).images
        for (scene, _), image in zip(chunk, images, strict=True):
            out.append((scene, (np.clip(image, 0, 1) * 255).round().astype(np.uint8)))
    return out


def render_genai(
    artifact: Path, scenes: list[Scene], settings: EvalSettings, size: int | None = None
) -> list[tuple[Scene, Any]]:
    """Renders through the worker's own pipeline class (openvino.genai, CppStdGenerator
    seeds), at ``size`` or else the shape in the artifact's manifest."""
    if size is None:
        from lcm_fleet.artifact.manifest import read_manifest

        shape = read_manifest(artifact).shape
        if shape is None or not shape.width or not shape.height:
            raise BuildInputError(f"{artifact}/manifest.json has no shape: pass a size")
        width, height = shape.width, shape.height
    else:
        width = height = size
    pipe = GenaiPipeline.for_folder(
        Path(artifact),
        width,
        height,
        settings.guidance_scale,
        options=CompileOptions(precision=settings.precision),
    )
    out = []
    for scene in scenes:
        for seed in settings.seeds:
            pixels, _ = pipe.generate(scene.caption, seed, settings.steps, settings.guidance_scale)
            out.append((scene, pixels))
    return out


def read_pngs(folder: Path) -> list[tuple[Scene, Any]]:
    """PNGs the fleet stored, with the caption from their ``prompt`` text chunk."""
    import numpy as np
    from PIL import Image

    out = []
    for path in sorted(Path(folder).rglob("*.png")):
        with Image.open(path) as image:
            prompt = image.info.get("prompt")
            if prompt is None:
                raise BuildInputError(
                    f"{path} has no 'prompt' text chunk: score PNGs written by lcm-fleet workers"
                )
            try:
                scene = parse_caption(str(prompt))
            except ValueError as e:
                raise BuildInputError(f"{path}: {e}") from e
            out.append((scene, np.asarray(image.convert("RGB"))))
    if not out:
        raise BuildInputError(f"no PNG files under {folder}")
    return out


def evaluate(
    target: Path,
    scenes: list[Scene] | None = None,
    settings: EvalSettings | None = None,
    split: Split | None = None,
    sheet: Path | None = None,
) -> AdherenceReport:
    """Adherence of ``target`` (diffusers folder, OpenVINO artifact, or a folder of PNGs);
    ``sheet``: also write the renders as a captioned grid there."""
    target = Path(target)
    settings = settings or EvalSettings()
    if not target.is_dir():
        raise BuildInputError(f"target={str(target)!r} is not a folder")
    split = split or split_of(target)
    if (
        (target / "model_index.json").is_file()
        and (target / "unet").is_dir()
        and not (target / "unet" / "openvino_model.xml").is_file()
    ):
        renders = render_diffusers(target, scenes or split.eval_scenes(DEFAULT_COUNT), settings)
    elif (target / "manifest.json").is_file():
        renders = render_genai(target, scenes or split.eval_scenes(DEFAULT_COUNT), settings)
    else:
        renders = read_pngs(target)
    report = score_renders(renders, split.held_out)
    if sheet is not None:
        write_sheet(renders, sheet, split.held_out)
    logger.info(
        "adherence of %s: %.1f%% (held-out %.1f%%, seen %.1f%%) over %d images",
        target,
        report.adherence_pct,
        report.held_out.get("adherence_pct", float("nan")),
        report.seen.get("adherence_pct", float("nan")),
        report.images,
    )
    return report


def record_evaluation(model_dir: Path, report: AdherenceReport, settings: EvalSettings) -> None:
    """Store the figures in the model's reference.json (under ``evaluation``)."""
    path = Path(model_dir) / REFERENCE_JSON
    record = reference_record(model_dir) or {}
    summary = report.as_dict()
    summary.pop("failures", None)
    record["evaluation"] = {
        "runtime": "diffusers PyTorch fp32",
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "seeds": list(settings.seeds),
        **summary,
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def print_report(report: AdherenceReport, label: str) -> None:
    def line(name: str, figures: dict[str, float]) -> str:
        attrs = ", ".join(f"{a} {figures[f'{a}_pct']:.1f}%" for a in ATTRIBUTES)
        count = int(figures["images"])
        return f"  {name:<9} {figures['adherence_pct']:5.1f}% of {count} images ({attrs})"

    print(f"prompt adherence of {label}: {report.adherence_pct:.1f}% of {report.images} images")
    if report.held_out.get("images"):
        print(line("held-out", report.held_out))
    if report.seen.get("images"):
        print(line("seen", report.seen))
    for failure in report.failures[:5]:
        read = failure["read"]
        print(
            f"  missed: {failure['caption']!r} read as {read['colour']} {read['shape']} "
            f"on {read['background']}"
        )


def write_sheet(
    renders: list[tuple[Scene, Any]], path: Path, held_out: frozenset[Any], columns: int = 8
) -> Path:
    """The renders in a grid, 3x enlarged, each captioned with what it was asked for and
    whether the scorer read it so (held-out combinations marked *)."""
    from PIL import Image, ImageDraw

    from model_build.reference.scorer import read_image

    if not renders:
        raise BuildInputError("no renders for the sheet")
    columns = min(columns, len(renders))
    h, w = renders[0][1].shape[:2]
    cell_w, cell_h, text_h, pad = w * 3, h * 3, 40, 6
    rows = (len(renders) + columns - 1) // columns
    cell = max(cell_w, 150)
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell_h + text_h + pad) + pad))
    sheet.paste((255, 255, 255), (0, 0, *sheet.size))
    draw = ImageDraw.Draw(sheet)
    for i, (scene, pixels) in enumerate(renders):
        x = pad + (i % columns) * (cell + pad)
        y = pad + (i // columns) * (cell_h + text_h + pad)
        image = Image.fromarray(pixels).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        sheet.paste(image, (x + (cell - cell_w) // 2, y))
        ok = all(read_image(pixels).matches(scene).values())
        mark = "*" if scene.combination in held_out else ""
        draw.text((x, y + cell_h + 2), f"{scene.colour} {scene.shape}{mark}", fill="black")
        draw.text(
            (x, y + cell_h + 16),
            f"on {scene.background}  {'ok' if ok else 'MISSED'}",
            fill="darkgreen" if ok else "red",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path
