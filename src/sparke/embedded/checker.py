"""Classical attribute checker for 32x32 shapes images (rendered or generated).

Background: median of the border pixels, nearest background colour. Foreground: each
pixel's "alpha" is its projection on the background->object colour line, so anti-aliased
edges count fractionally. Objects: 8-connected components of alpha > 0.5 (tiny specks
dropped). Per object: colour = nearest palette entry to the median of its core pixels;
extents from the column/row profiles of alpha (max over the other axis, summed), which are
exact for anti-aliased edges; shape from the fill ratio area / (width * height) (circle
pi/4, square 1, triangle 1/2); size class from the half-extent; position cell from the
centre of the extents.
A triangle is told from the others by its low centroid (and low fill ratio).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from sparke.embedded import world as W

_PAL = np.asarray([W.PALETTE[c] for c in W.COLOURS], np.float32)
_BGS = np.asarray([W.BACKGROUNDS[c] for c in W.BACKGROUND_NAMES], np.float32)
MIN_AREA = 3.0  # alpha-weighted pixels: smaller blobs are noise
_STRUCT8 = np.ones((3, 3), bool)


def _nearest(rgb: np.ndarray, table: np.ndarray) -> int:
    return int(np.argmin(((table - rgb) ** 2).sum(1)))


def _shape_of(fill: float, skew: float) -> str:
    # A triangle's mass sits low: its centroid is height/6 below the box centre (skew 1/6);
    # circles and squares have skew 0. Fill ratio: triangle 0.5, circle pi/4, square 1.
    if skew > 0.08 or fill < 0.6:
        return "triangle"
    return "circle" if fill < 0.9 else "square"


def _size_of(half_extent: float) -> str:
    # midpoints between the size ranges (2.5-3.5, 4.5-5.5, 7-8.5)
    if half_extent < 4.0:
        return "small"
    return "medium" if half_extent < 6.25 else "large"


def _object(img: np.ndarray, alpha: np.ndarray, component: np.ndarray) -> dict[str, Any] | None:
    """The attributes of one connected component (H, W bool) of the object mask; None when it is too small."""
    h, w = img.shape[:2]
    # grow the component by one pixel so its anti-aliased rim counts too
    region = ndimage.binary_dilation(component, structure=_STRUCT8)
    a = np.where(region, alpha, 0.0)
    area = float(a.sum())
    if area < MIN_AREA:
        return None
    colp, rowp = a.max(0), a.max(1)  # (W,), (H,)
    width, height = float(colp.sum()), float(rowp.sum())
    cx = float((colp * (np.arange(w) + 0.5)).sum() / max(colp.sum(), 1e-6))
    cy = float((rowp * (np.arange(h) + 0.5)).sum() / max(rowp.sum(), 1e-6))
    fill = area / max(width * height, 1e-6)
    ys = np.arange(h, dtype=np.float64)[:, None] + 0.5
    skew = (float((a * ys).sum()) / area - cy) / max(height, 1e-6)
    core = region & (alpha > 0.8)
    rgb = np.median(img[core], axis=0) if core.any() else np.median(img[region], axis=0)
    half = max(width, height) / 2
    return {
        "shape": _shape_of(fill, skew),
        "colour": W.COLOURS[_nearest(rgb, _PAL)],
        "size": _size_of(half),
        "position": W.cell_name(*W.cell_of(cx, cy, w)),
        "cx": cx,
        "cy": cy,
        "half_extent": half,
        "fill": fill,
        "skew": skew,
        "area": area,
    }


def check(image: np.ndarray) -> dict[str, Any]:
    """Detected attributes of an (H, W, 3) uint8 (or float in [0, 1]) image.

    Returns keys ``background``, ``count``, ``objects`` (list of per-object dicts with
    ``shape``, ``colour``, ``size``, ``position``, ``cx``, ``cy``, ``half_extent``, ``fill``,
    ``area``), and, copied from the largest object, ``shape``, ``colour``, ``size``,
    ``position`` (None when no object is found).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    img = img.astype(np.float32)
    h, w = img.shape[:2]
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg_rgb = np.median(border, axis=0)
    bg = _nearest(bg_rgb, _BGS)

    # Object colour guess: the palette entry that the farthest-from-background pixels are closest to.
    diff = img - bg_rgb
    dist = np.sqrt((diff**2).sum(-1))
    result: dict[str, Any] = {"background": W.BACKGROUND_NAMES[bg], "count": 0, "objects": []}
    result.update(shape=None, colour=None, size=None, position=None)
    if dist.max() < 40:  # nothing stands out from the background
        return result
    far = dist > 0.5 * dist.max()
    fg_rgb = np.median(img[far], axis=0)
    col = _nearest(fg_rgb, _PAL)
    axis = _PAL[col] - bg_rgb
    alpha = np.clip((diff @ axis) / float(axis @ axis), 0.0, 1.0)

    labels, n = ndimage.label(alpha > 0.5, structure=_STRUCT8)
    objects = [obj for k in range(1, n + 1) if (obj := _object(img, alpha, labels == k)) is not None]
    objects.sort(key=lambda o: -o["area"])
    result["objects"] = objects
    result["count"] = len(objects)
    if objects:
        for key in ("shape", "colour", "size", "position"):
            result[key] = objects[0][key]
    return result


def _required(req: Any) -> dict[str, Any]:
    if isinstance(req, Mapping):
        return dict(req)
    if hasattr(req, "required"):  # world.Cluster
        return dict(req.required)
    if isinstance(req, W.Scene):
        return req.attributes()
    raise TypeError(f"cannot read required attributes from {type(req).__name__}")


def matches(detected: Mapping[str, Any], required: Any) -> bool:
    """True when ``detected`` (from :func:`check`) agrees with every required attribute.

    ``required`` is a dict, a :class:`world.Cluster` (its ``required``) or a :class:`world.Scene`.
    Shape and colour must hold for every detected object; ``count`` defaults to 1; size is
    compared on the largest object, position on any object, when required.
    """
    req = _required(required)
    if detected.get("count", 0) != int(req.get("count", 1)):
        return False
    for obj in detected["objects"]:
        for key in ("shape", "colour"):
            if key in req and obj[key] != req[key]:
                return False
    for key in ("background", "size"):
        if req.get(key) is not None and detected.get(key) != req[key]:
            return False
    if req.get("position") is not None and all(o["position"] != req["position"] for o in detected["objects"]):
        return False
    return True


def match_rate(images: np.ndarray | list, required: Any | list) -> float:
    """Fraction of images (N, H, W, 3) matching ``required`` (one for all, or one per image)."""
    reqs = required if isinstance(required, list) else [required] * len(images)
    ok = [matches(check(np.asarray(im)), r) for im, r in zip(images, reqs, strict=True)]
    return float(np.mean(ok)) if ok else 0.0
