"""PNG encoding with the job's parameters in text chunks (readable by any PNG tool)."""

from __future__ import annotations

import io
import json
from typing import Any

METADATA_KEY = "lcm_fleet"


def image_metadata(
    *,
    job_id: str,
    index: int,
    prompt: str,
    seed: int,
    steps: int,
    guidance_scale: float,
    width: int,
    height: int,
    model_manifest_sha256: str,
) -> dict[str, str]:
    """The text chunks of one image: each parameter on its own, and all of them as JSON."""
    fields: dict[str, Any] = {
        "job_id": job_id,
        "image_index": index,
        "prompt": prompt,
        "seed": seed,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "width": width,
        "height": height,
        "model_manifest_sha256": model_manifest_sha256,
    }
    chunks = {key: str(value) for key, value in fields.items()}
    chunks[METADATA_KEY] = json.dumps(fields, sort_keys=True)
    return chunks


def encode_png(pixels: Any, metadata: dict[str, str]) -> bytes:
    """Encode H x W x 3 uint8 pixels; deterministic for the same pixels and metadata."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", pnginfo=info, compress_level=6)
    return buffer.getvalue()


def read_png_metadata(data: bytes) -> dict[str, str]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        text = getattr(image, "text", {})
        return {str(k): str(v) for k, v in text.items()}
