import hashlib
import json

import numpy as np

from worker.results.png import METADATA_KEY, encode_png, image_metadata, read_png_metadata


def _meta(**over):
    fields = dict(
        job_id="j1",
        index=0,
        prompt="a cat, ünïcode",
        seed=7,
        steps=4,
        guidance_scale=8.0,
        width=64,
        height=32,
        model_manifest_sha256="ab" * 32,
    )
    fields.update(over)
    return image_metadata(**fields)


def test_metadata_round_trips_through_png():
    pixels = np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    data = encode_png(pixels, _meta())
    text = read_png_metadata(data)
    assert text["prompt"] == "a cat, ünïcode"
    assert text["seed"] == "7" and text["steps"] == "4" and text["guidance_scale"] == "8.0"
    assert text["width"] == "64" and text["height"] == "32"
    assert text["model_manifest_sha256"] == "ab" * 32
    assert json.loads(text[METADATA_KEY])["seed"] == 7
    import io

    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


def test_encoding_is_deterministic():
    pixels = np.full((16, 16, 3), 100, dtype=np.uint8)
    a, b = encode_png(pixels, _meta()), encode_png(pixels, _meta())
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    assert encode_png(pixels, _meta(seed=8)) != a
