"""Features the nodes read from ComfyUI's own data: prompt rows from CONDITIONING, image rows from IMAGE.

Pure torch: nothing here imports ComfyUI.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["conditioning_entries", "image_rows", "prompt_rows", "repeat_to_batch"]

PIXEL_SIDE = 32  # side of the grid the score node averages an image down to (without an image encoder)


def repeat_to_batch(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """(n, e) rows cycled or cut to (batch, e), as ComfyUI matches a conditioning batch to the latents'."""
    n = rows.shape[0]
    if n == batch:
        return rows
    return rows.repeat(math.ceil(batch / n), 1)[:batch]


def conditioning_entries(conditioning: Any) -> list[Mapping[str, Any]]:
    """A node's CONDITIONING ``[[tokens, {extras}], ...]`` as the sampler's entry dicts
    ``{"cross_attn": tokens, **extras}`` (what a post-CFG function receives as ``cond``)."""
    try:
        return [{"cross_attn": tokens, **extras} for tokens, extras in conditioning]
    except (TypeError, ValueError):
        raise ValueError("conditioning: expected ComfyUI CONDITIONING, a list of [tokens, dict]") from None


def prompt_rows(entries: Iterable[Mapping[str, Any]] | None, batch: int) -> torch.Tensor:
    """Unit prompt features (batch, e) from the sampler's conditioning entries.

    Each entry gives its ``pooled_output`` (n, e) where the model family has one (SDXL, SD3, Flux, and SD1.5
    through CLIPTextEncode), else its token embeddings ``cross_attn`` (n, T, e) averaged over the tokens; rows
    are matched to the batch as ComfyUI does (cycled); several entries (areas, combined prompts) are averaged.
    """
    rows = []
    for entry in entries or ():
        pooled = entry.get("pooled_output")
        if isinstance(pooled, torch.Tensor) and pooled.ndim == 2:
            feats = pooled
        else:
            tokens = entry.get("cross_attn")
            if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
                continue
            feats = tokens.mean(1)
        rows.append(repeat_to_batch(feats.detach().float(), batch))
    if not rows:
        raise ValueError(
            "conditioning: no pooled output and no token embeddings to take prompt features from"
        )
    widths = {r.shape[1] for r in rows}
    if len(widths) > 1:
        raise ValueError(f"conditioning: entries of different widths {sorted(widths)} cannot be averaged")
    return F.normalize(torch.stack(rows).mean(0), dim=1)


def image_rows(images: torch.Tensor, encoder: Any = None) -> torch.Tensor:
    """Unit image features (B, d) of a ComfyUI IMAGE batch (B, H, W, 3) in [0, 1].

    With ``encoder`` (a ComfyUI CLIP_VISION): its ``image_embeds``. Without: the image averaged down to a
    32 x 32 grid with each colour channel's mean removed (layout, not overall colour), flattened.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected an IMAGE batch (B, H, W, 3), got {shape}")
    rgb = images[..., :3].float()
    if encoder is not None:
        x = encoder.encode_image(rgb)["image_embeds"].float()
    else:
        grid = F.adaptive_avg_pool2d(rgb.permute(0, 3, 1, 2), PIXEL_SIDE)
        x = grid - grid.mean(dim=(2, 3), keepdim=True)
    return F.normalize(x.flatten(1).cpu(), dim=1)
