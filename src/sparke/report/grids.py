"""The report's image grids: one picture per prompt and run, thumbnails inlined as base64."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .markup import esc as _e

__all__ = ["MAX_THUMBNAILS", "grid_figure", "grid_image", "thumbs_per_prompt"]


MAX_THUMBNAILS = 1_000  # images on one page, all runs together: keeps a page of 50,000 images light
JPEG_FROM = 64  # cells at least this many pixels are photographs: JPEG thumbnails (PNG keeps pixel art exact)
JPEG_QUALITY = 80


def thumbs_per_prompt(max_images: int, grids: int, max_thumbnails: int = MAX_THUMBNAILS) -> int:
    """Images per grid: ``max_images``, fewer (at least 1) when ``grids`` grids of them would pass
    ``max_thumbnails`` images."""
    return max(1, min(max_images, max_thumbnails // max(grids, 1)))


def grid_image(files: Sequence[Path], thumb: int) -> tuple[str, str, int, int, int]:
    """Images tiled in a near-square grid -> (MIME type, base64 data, width, height, cell size in pixels).

    Images larger than ``thumb`` are shrunk to ``thumb`` pixels on their long side (each one as soon as it is
    read: a grid of large images holds thumbnails only) and the grid is a JPEG; smaller ones keep their pixels
    in a PNG (shown enlarged, pixelated, by the page). 16-bit and transparent images are read as
    ``sparke evaluate`` reads them (``runs.imagefolder.pixels_rgb8``).
    """
    from PIL import Image

    from sparke.runs.imagefolder import pixels_rgb8

    images = []
    for file in files:
        with Image.open(file) as im:
            im.draft("RGB", (thumb, thumb))  # JPEG: decode at a reduced scale when the file allows it
            small = Image.fromarray(pixels_rgb8(im))
        if max(small.size) > thumb:
            small.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        images.append(small)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    gap = 1 if cell_w <= 64 else 4
    canvas = Image.new("RGB", (cols * cell_w + (cols - 1) * gap, rows * cell_h + (rows - 1) * gap), "white")
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        canvas.paste(im, (c * (cell_w + gap), r * (cell_h + gap)))
    buffer = io.BytesIO()
    photo = min(cell_w, cell_h) >= JPEG_FROM
    if photo:
        canvas.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        canvas.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return ("image/jpeg" if photo else "image/png"), data, canvas.width, canvas.height, min(cell_w, cell_h)


def grid_figure(info: dict[str, Any], records: Sequence[dict[str, Any]], thumb: int, total: int) -> str:
    """One run's grid of a prompt's images (``records``, of ``total``; or a 'none' box), captioned with the
    run's label (and "k of n" when only a sample is shown)."""
    caption = _e(info["label"]) + (f" ({len(records)} of {total})" if 0 < len(records) < total else "")
    if not records:
        return f"<figure><div class='missing'>none</div><figcaption>{caption}</figcaption></figure>"
    mime, data, w, h, cell = grid_image([info["run"].path / r["file"] for r in records], thumb)
    # small images (the embedded model's 32x32) are shown enlarged to >= 64 px cells, pixelated
    factor = max(1, math.ceil(64 / cell)) if cell < 64 else 1
    cls = "" if cell < 64 else " class='smooth'"
    alt = f"{len(records)} images of {info['label']}"
    return (
        f"<figure><img{cls} src='data:{mime};base64,{data}' width='{w * factor}' "
        f"height='{h * factor}' alt='{_e(alt)}'><figcaption>{caption}</figcaption></figure>"
    )
