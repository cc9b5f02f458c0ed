"""Read a render of the reference domain back into its scene, and score prompt adherence.

Per image: the background colour is the median of the border ring; the shape's colour is
the median of the pixels far from that background; the shape is the largest region nearer
its colour than the background's; its kind is the canonical outline (cropped to the
region's bounding box) with the highest IoU. A render
adheres to its caption when all three match. numpy, scipy and Pillow only: no model, no training,
so the scorer cannot learn the generator's mistakes. It reads the training renders
themselves perfectly (tested).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from model_build.reference.domain import PALETTE, SHAPES, Scene, draw_shape

#: Border ring (pixels) read as background, as a fraction of the image side.
_BORDER = 0.04
#: RGB distance from the background beyond which a pixel belongs to the shape.
_MASK_DISTANCE = 60.0
#: Template side for the shape comparison.
_TEMPLATE = 32
ATTRIBUTES = ("shape", "colour", "background")


@dataclass(frozen=True)
class Reading:
    """What the scorer sees in one image (``shape`` is "none" when no shape stands out)."""

    shape: str
    colour: str
    background: str
    shape_iou: float
    area_fraction: float

    def matches(self, scene: Scene) -> dict[str, bool]:
        return {
            "shape": self.shape == scene.shape,
            "colour": self.colour == scene.colour,
            "background": self.background == scene.background,
        }


def nearest_colour(rgb: Any) -> str:
    import numpy as np

    names = list(PALETTE)
    values = np.array([PALETTE[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((values - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=1)))]


@cache
def _templates() -> dict[str, Any]:
    import numpy as np
    from PIL import Image, ImageDraw

    out = {}
    for shape in SHAPES:
        big = _TEMPLATE * 4
        image = Image.new("L", (big, big), 0)
        draw_shape(ImageDraw.Draw(image), shape, (0, 0, big, big), 255)
        small = image.resize((_TEMPLATE, _TEMPLATE), Image.Resampling.BOX)
        out[shape] = np.asarray(small) >= 128
    return out


def read_image(pixels: Any) -> Reading:
    """The scene an H x W x 3 uint8 render shows."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    image = np.asarray(pixels, dtype=np.float64)
    h, w = image.shape[:2]
    ring = max(1, round(_BORDER * min(h, w)))
    border = np.concatenate(
        [
            image[:ring].reshape(-1, 3),
            image[-ring:].reshape(-1, 3),
            image[:, :ring].reshape(-1, 3),
            image[:, -ring:].reshape(-1, 3),
        ]
    )
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)
    distance = np.sqrt(((image - bg_rgb) ** 2).sum(axis=2))
    mask = distance > _MASK_DISTANCE
    if mask.sum() < 4:
        return Reading("none", "none", background, 0.0, float(mask.mean()))
    # Interior: mask pixels whose 4 neighbours are in the mask too (edges are blended).
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    core = inner if inner.sum() >= 4 else mask
    shape_rgb = np.median(image[core], axis=0)
    colour = nearest_colour(shape_rgb)
    # The shape is what is nearer its own colour than the background's (soft edges neither
    # grow nor shrink it), in one piece: the largest connected region, holes filled.
    to_shape = np.sqrt(((image - shape_rgb) ** 2).sum(axis=2))
    mask = (to_shape < distance) & (distance > _MASK_DISTANCE / 2)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
        mask = labels == 1 + int(np.argmax(sizes))
    mask = ndimage.binary_fill_holes(mask)
    area = float(mask.mean())
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = Image.fromarray((mask[y0:y1, x0:x1] * 255).astype(np.uint8))
    crop_mask = np.asarray(crop.resize((_TEMPLATE, _TEMPLATE), Image.Resampling.BILINEAR)) >= 128
    ious = {
        shape: float((crop_mask & t).sum() / max(1, (crop_mask | t).sum()))
        for shape, t in _templates().items()
    }
    shape = max(ious, key=lambda s: ious[s])
    return Reading(shape, colour, background, round(ious[shape], 4), round(area, 4))


@dataclass
class AdherenceReport:
    """Prompt adherence of a batch of renders, overall and split by held-out or seen."""

    images: int
    adherence_pct: float
    attribute_pct: dict[str, float]
    held_out: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(values: list[bool]) -> float:
    return round(100.0 * statistics.fmean(values), 2) if values else float("nan")


def score_renders(
    renders: list[tuple[Scene, Any]], held_out: set[tuple[str, str, str]] | frozenset[Any]
) -> AdherenceReport:
    """Adherence of (scene, pixels) pairs; ``held_out`` are the combinations training never saw."""
    rows = []
    for scene, pixels in renders:
        reading = read_image(pixels)
        rows.append((scene, reading, reading.matches(scene)))

    def summary(subset: list[Any]) -> dict[str, float]:
        out = {
            "images": float(len(subset)),
            "adherence_pct": _pct([all(m.values()) for *_, m in subset]),
        }
        for attr in ATTRIBUTES:
            out[f"{attr}_pct"] = _pct([m[attr] for *_, m in subset])
        return out

    failures = [
        {"caption": scene.caption, "read": asdict(reading), "index": i}
        for i, (scene, reading, m) in enumerate(rows)
        if not all(m.values())
    ]
    return AdherenceReport(
        images=len(rows),
        adherence_pct=_pct([all(m.values()) for *_, m in rows]),
        attribute_pct={a: _pct([m[a] for *_, m in rows]) for a in ATTRIBUTES},
        held_out=summary([r for r in rows if r[0].combination in held_out]),
        seen=summary([r for r in rows if r[0].combination not in held_out]),
        failures=failures[:50],
    )
