"""A contact sheet a person can look at: reference | candidate | amplified difference, captioned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_build.compare import ImageScore

CELL_MAX = 256
CAPTION_H = 34
AMPLIFY = 8


def _cell(pixels: Any, size: tuple[int, int]) -> Any:
    from PIL import Image

    return Image.fromarray(pixels, mode="RGB").resize(size, Image.Resampling.NEAREST)


def write_contact_sheet(
    pairs: list[tuple[Any, Any]], scores: list[ImageScore], out: Path, title: str
) -> Path:
    import numpy as np
    from PIL import Image, ImageDraw

    if not pairs:
        raise ValueError("no images for the contact sheet")
    h, w = pairs[0][0].shape[:2]
    scale = min(1.0, CELL_MAX / max(h, w))
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    pad = 4
    header = 24
    width = 3 * cw + 4 * pad
    height = header + len(pairs) * (ch + CAPTION_H + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (pad, 6),
        f"{title}   columns: reference | candidate | |difference| x{AMPLIFY}",
        fill="black",
    )
    y = header
    for (ref, cand), s in zip(pairs, scores, strict=True):
        diff = np.clip(np.abs(ref.astype(np.int16) - cand.astype(np.int16)) * AMPLIFY, 0, 255)
        for col, pixels in enumerate((ref, cand, diff.astype(np.uint8))):
            sheet.paste(_cell(pixels, (cw, ch)), (pad + col * (cw + pad), y))
        prompt = s.prompt if len(s.prompt) <= 90 else s.prompt[:87] + "..."
        draw.text((pad, y + ch + 2), prompt, fill="black")
        draw.text(
            (pad, y + ch + 16),
            f"seed {s.seed}   PSNR {s.psnr_db} dB   SSIM {s.ssim}   mean |diff| {s.mean_abs_diff}",
            fill="dimgray",
        )
        y += ch + CAPTION_H + pad
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out
