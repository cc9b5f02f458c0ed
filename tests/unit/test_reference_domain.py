"""The reference domain and its scorer: grammar, held-out split, reading renders back."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from model_build.reference.domain import (
    PALETTE,
    SHAPES,
    Scene,
    all_scenes,
    make_split,
    parse_caption,
    render_scene,
)
from model_build.reference.scorer import read_image, score_renders


def test_every_caption_parses_back_to_its_scene() -> None:
    scenes = all_scenes()
    assert len(scenes) == len(PALETTE) * len(SHAPES) * (len(PALETTE) - 1)
    for scene in scenes:
        assert parse_caption(scene.caption) == scene


@pytest.mark.parametrize(
    "caption",
    [
        "a large red circle on a blue background",  # a word too many
        "a red circle on a red background",  # same colours
        "a teal circle on a blue background",  # unknown colour
        "a red hexagon on a blue background",
    ],
)
def test_captions_outside_the_grammar_are_refused_with_the_grammar(caption: str) -> None:
    with pytest.raises(ValueError, match="reference grammar") as info:
        parse_caption(caption)
    assert repr(caption) in str(info.value)


def test_split_holds_out_a_fifth_of_combinations_but_no_word() -> None:
    split = make_split(0)
    combos = {s.combination for s in all_scenes()}
    assert len(split.held_out) == round(0.2 * len(combos))
    train = split.train_scenes()
    assert not {s.combination for s in train} & split.held_out
    assert {s.colour for s in train} == set(PALETTE)
    assert {s.shape for s in train} == set(SHAPES)
    assert {s.background for s in train} == set(PALETTE)
    assert make_split(0) == split
    assert make_split(1).held_out != split.held_out


def test_eval_scenes_mix_held_out_and_seen() -> None:
    split = make_split(0)
    scenes = split.eval_scenes()
    assert len(scenes) == len(set(scenes)) == 112
    held = sum(split.is_held_out(s) for s in scenes)
    assert held == len(split.held_out) == 56
    assert split.eval_scenes() == scenes


def test_renders_are_deterministic_and_vary_in_position() -> None:
    scene = Scene("red", "circle", "blue")
    a = render_scene(scene, 64, random.Random(3))
    assert np.array_equal(a, render_scene(scene, 64, random.Random(3)))
    assert not np.array_equal(a, render_scene(scene, 64, random.Random(4)))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8


@pytest.mark.parametrize("size", [64, 128])
def test_scorer_reads_every_ground_truth_scene(size: int) -> None:
    rng = random.Random(0)
    renders = [(scene, render_scene(scene, size, rng)) for scene in all_scenes()]
    report = score_renders(renders, make_split(0).held_out)
    assert report.adherence_pct == 100.0, report.failures[:3]
    assert report.held_out["images"] + report.seen["images"] == len(renders)


def test_scorer_survives_blur_and_noise() -> None:
    rng = random.Random(1)
    noise = np.random.default_rng(1)
    renders = []
    for scene in all_scenes()[::3]:
        image = Image.fromarray(render_scene(scene, 64, rng)).filter(ImageFilter.GaussianBlur(1))
        noisy = np.asarray(image, dtype=np.float64) + noise.normal(0, 8, (64, 64, 3))
        renders.append((scene, np.clip(noisy, 0, 255).astype(np.uint8)))
    assert score_renders(renders, frozenset()).adherence_pct >= 97.0


def test_scorer_says_no_to_the_wrong_caption() -> None:
    rng = random.Random(2)
    scene = Scene("yellow", "triangle", "purple")
    pixels = render_scene(scene, 64, rng)
    wrong = [
        Scene("cyan", "triangle", "purple"),
        Scene("yellow", "diamond", "purple"),
        Scene("yellow", "triangle", "blue"),
    ]
    report = score_renders([(w, pixels) for w in wrong], frozenset())
    assert report.adherence_pct == 0.0
    assert report.attribute_pct == {"shape": 66.67, "colour": 66.67, "background": 66.67}


def test_a_flat_image_has_no_shape() -> None:
    reading = read_image(np.full((64, 64, 3), PALETTE["green"], dtype=np.uint8))
    assert reading.shape == "none" and reading.background == "green"


def test_a_region_of_no_domain_shape_is_no_shape() -> None:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:] = PALETTE["blue"]
    pixels[28:36, 10:54] = PALETTE["red"]  # a bar
    reading = read_image(pixels)
    assert (reading.shape, reading.colour, reading.background) == ("none", "red", "blue")
    pixels[:] = PALETTE["blue"]
    pixels[8:56, 8:56] = PALETTE["red"]  # a square, but far larger than the domain's
    assert read_image(pixels).shape == "none"
