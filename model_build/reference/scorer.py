"""Read a render of the reference domain back into its scene, and score prompt adherence.

Per image: the background colour is the median of the border ring; the shape's colour is
the median of the pixels far from that background; the shape is the largest region nearer
its colour than the background's; its kind is the canonical outline, at the domain's size
and centred on the region's centroid, with the highest IoU. A render adheres to its caption
when all three match. numpy, scipy and Pillow only: no model, no training, so the scorer
cannot learn the generator's mistakes. It reads the training renders themselves perfectly
and mismatched captions never (tested).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from model_build.reference.domain import EXTENT, PALETTE, SHAPES, Scene, draw_shape

#: Border ring (pixels) read as background, as a fraction of the image side.
_BORDER = 0.04
#: RGB distance from the background beyond which a pixel belongs to the shape.
_MASK_DISTANCE = 60.0
#: Below this IoU with every outline, the region is no shape of the domain (training renders
#: score well above it; measured: docs/model-build.md#the-reference-model-model_buildreference).
_MIN_SHAPE_IOU = 0.6
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
def _templates(side: int) -> dict[str, tuple[Any, float, float]]:
    """Each shape's mask at the domain's scale for a ``side``-pixel image, and its centroid."""
    import numpy as np
    from PIL import Image, ImageDraw

    extent = max(2, round(EXTENT * side))
    out = {}
    for shape in SHAPES:
        big = extent * 4
        image = Image.new("L", (big, big), 0)
        draw_shape(ImageDraw.Draw(image), shape, (0, 0, big, big), 255)
        mask = np.asarray(image.resize((extent, extent), Image.Resampling.BOX)) >= 128
        ys, xs = np.nonzero(mask)
        out[shape] = (mask, float(ys.mean()), float(xs.mean()))
    return out


def _iou_at_scale(mask: Any, shape: str) -> float:
    """IoU of ``mask`` with ``shape``'s outline at the domain's size, centred on the mask's
    centroid (best of the 3x3 pixel offsets around it)."""
    import numpy as np

    h, w = mask.shape
    template, ty, tx = _templates(max(h, w))[shape]
    ys, xs = np.nonzero(mask)
    best = 0.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            top = round(ys.mean() - ty) + dy
            left = round(xs.mean() - tx) + dx
            canvas = np.zeros_like(mask)
            th, tw = template.shape
            y0, x0 = max(0, top), max(0, left)
            y1, x1 = min(h, top + th), min(w, left + tw)
            if y1 <= y0 or x1 <= x0:
                continue
            canvas[y0:y1, x0:x1] = template[y0 - top : y1 - top, x0 - left : x1 - left]
            union = (canvas | mask).sum()
            best = max(best, float((canvas & mask).sum() / max(1, union)))
    return best


def read_image(pixels: Any) -> Reading:
    """The scene an H x W x 3 uint8 render shows."""
    import numpy as np
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
    ious = {shape: _iou_at_scale(mask, shape) for shape in SHAPES}
    best = max(ious, key=lambda s: ious[s])
    # Below the floor it is a blob, a bar, two shapes: none of the domain's outlines.
    shape = best if ious[best] >= _MIN_SHAPE_IOU else "none"
    return Reading(shape, colour, background, round(ious[best], 4), round(area, 4))


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
