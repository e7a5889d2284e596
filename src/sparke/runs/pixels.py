"""Pixels to model inputs without torchvision: the resize, crop and normalisation of CLIP / DINOv2 inputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def preprocessor_settings(
    spec: str, size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[int, Any, Any]:
    """Input size, mean and std from the model's preprocessor_config.json when it is a local folder."""
    file = Path(spec) / "preprocessor_config.json"
    if not file.is_file():
        return size, mean, std
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError):
        return size, mean, std
    crop = cfg.get("crop_size") or cfg.get("size")
    if isinstance(crop, dict):
        crop = crop.get("height") or crop.get("shortest_edge")
    if isinstance(crop, int):
        size = crop
    return size, cfg.get("image_mean", mean), cfg.get("image_std", std)


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, size, size): shorter side to ``size`` (bicubic, antialiased), centre crop."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size].clamp(0, 1)
