"""The reference domain: one coloured shape on a coloured background, fully named by its caption.

    "a red circle on a blue background"

A caption names the shape, its colour and the background colour; position is the free
variation. Some (colour, shape, background) combinations are held out of training,
so a model that follows prompts must compose what it has seen. Everything
here is deterministic given a seed and imports only Pillow and numpy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import product
from typing import Any

#: Colour names and their sRGB values: far apart, so the scorer can tell them apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "green": (36, 158, 64),
    "blue": (38, 84, 216),
    "yellow": (240, 206, 40),
    "purple": (128, 50, 168),
    "cyan": (40, 190, 210),
    "white": (240, 240, 240),
    "black": (24, 24, 24),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
#: The shape's extent (bounding-box side) as a fraction of the image side.
EXTENT = 0.56
#: Margin kept free around the shape, as a fraction of the image side (the scorer reads the
#: background on the border).
MARGIN = 0.08
#: Fraction of (colour, shape, background) combinations kept out of training.
HELD_OUT_FRACTION = 0.2
#: Supersampling factor for antialiased edges.
_SUPERSAMPLE = 4


@dataclass(frozen=True, order=True)
class Scene:
    """What a caption names."""

    colour: str
    shape: str
    background: str

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.colour, self.shape, self.background)

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def all_scenes() -> list[Scene]:
    return [
        Scene(colour, shape, background)
        for colour, shape, background in product(PALETTE, SHAPES, PALETTE)
        if colour != background
    ]


def parse_caption(caption: str) -> Scene:
    """The scene a caption of this grammar names; ValueError for anything else."""
    words = caption.strip().lower().split()
    if not (
        len(words) == 7
        and words[0] == "a"
        and words[1] in PALETTE
        and words[2] in SHAPES
        and words[3:5] == ["on", "a"]
        and words[5] in PALETTE
        and words[6] == "background"
        and words[1] != words[5]
    ):
        raise ValueError(
            f"caption={caption!r} is not of the reference grammar 'a <colour> <shape> on a "
            f"<colour> background' (colours {', '.join(PALETTE)}; shapes {', '.join(SHAPES)}; "
            "the two colours differ)"
        )
    return Scene(words[1], words[2], words[5])


@dataclass(frozen=True)
class Split:
    """Which combinations training sees, and the evaluation captions."""

    seed: int
    held_out: frozenset[tuple[str, str, str]]

    def is_held_out(self, scene: Scene) -> bool:
        return scene.combination in self.held_out

    def train_scenes(self) -> list[Scene]:
        return [s for s in all_scenes() if not self.is_held_out(s)]

    def held_out_scenes(self) -> list[Scene]:
        return [s for s in all_scenes() if self.is_held_out(s)]

    def eval_scenes(self, count: int = 112, held_out_share: float = 0.5) -> list[Scene]:
        """``count`` evaluation scenes, ``held_out_share`` of them from held-out combinations
        (all of them if there are fewer), the rest seen ones; the same for the same seed."""
        rng = random.Random(self.seed + 1)
        held = self.held_out_scenes()
        seen = self.train_scenes()
        n_held = min(len(held), round(count * held_out_share))
        chosen = rng.sample(held, n_held) + rng.sample(seen, count - n_held)
        return sorted(chosen)

    def record(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "held_out_fraction": HELD_OUT_FRACTION,
            "held_out": sorted(" ".join(c) for c in self.held_out),
        }


def make_split(seed: int = 0) -> Split:
    """Hold out HELD_OUT_FRACTION of the captions' combinations, keeping every word in training."""
    combos = sorted({s.combination for s in all_scenes()})
    rng = random.Random(seed)
    order = combos[:]
    rng.shuffle(order)
    target = round(len(combos) * HELD_OUT_FRACTION)
    held: set[tuple[str, str, str]] = set()
    for combo in order:
        if len(held) == target:
            break
        trial = held | {combo}
        remaining = [c for c in combos if c not in trial]
        # Every colour, shape and background value must still be trained on.
        if (
            {c[0] for c in remaining} == set(PALETTE)
            and {c[1] for c in remaining} == set(SHAPES)
            and {c[2] for c in remaining} == set(PALETTE)
        ):
            held = trial
    return Split(seed=seed, held_out=frozenset(held))


def shape_polygon(shape: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """The outline of a polygonal shape filling ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2, y0 + h / 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "cross":
        a, b = w / 3, h / 3
        return [
            (x0 + a, y0),
            (x1 - a, y0),
            (x1 - a, y0 + b),
            (x1, y0 + b),
            (x1, y1 - b),
            (x1 - a, y1 - b),
            (x1 - a, y1),
            (x0 + a, y1),
            (x0 + a, y1 - b),
            (x0, y1 - b),
            (x0, y0 + b),
            (x0 + a, y0 + b),
        ]
    raise ValueError(f"shape={shape!r} is not one of {', '.join(SHAPES)}")


def draw_shape(draw: Any, shape: str, box: tuple[float, float, float, float], fill: Any) -> None:
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(shape_polygon(shape, box), fill=fill)


def render_scene(scene: Scene, size: int, rng: random.Random) -> Any:
    """The scene as a ``size`` x ``size`` RGB uint8 array, at a position drawn from ``rng``."""
    import numpy as np
    from PIL import Image, ImageDraw

    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), PALETTE[scene.background])
    extent = EXTENT * big
    slack = big - extent - 2 * MARGIN * big
    x0 = MARGIN * big + rng.random() * slack
    y0 = MARGIN * big + rng.random() * slack
    draw_shape(
        ImageDraw.Draw(image),
        scene.shape,
        (x0, y0, x0 + extent, y0 + extent),
        PALETTE[scene.colour],
    )
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def render_dataset(
    scenes: list[Scene], per_scene: int, size: int, seed: int
) -> tuple[Any, list[int]]:
    """``per_scene`` renders of each scene: (N x size x size x 3 uint8, scene index per image)."""
    import numpy as np

    rng = random.Random(seed)
    images, index = [], []
    for i, scene in enumerate(scenes):
        for _ in range(per_scene):
            images.append(render_scene(scene, size, rng))
            index.append(i)
    return np.stack(images), index
