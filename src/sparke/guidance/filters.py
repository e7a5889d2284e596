"""Filters of a guidance step g (B, C, H, W) in the latents' layout: what the step is allowed to change.

``lowpass`` blurs it (no high-frequency noise). ``motion_component`` keeps only the part of it that moves the
content of an image, so the step displaces what the estimate already shows instead of painting something new.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["lowpass", "motion_component"]


def _spatial(g: torch.Tensor, option: str) -> None:
    if g.ndim != 4:
        raise ValueError(
            f"{option}: needs (B, C, H, W) latents, got shape {tuple(g.shape)} (packed latents: use {option}=0)"
        )


def lowpass(g: torch.Tensor, std: float) -> torch.Tensor:
    """(B, C, H, W) -> the same, blurred over H and W by a Gaussian of ``std`` pixels (reflected edges)."""
    _spatial(g, "smooth")
    radius = max(1, min(math.ceil(3 * std), min(g.shape[-2:]) - 1))
    taps = torch.arange(-radius, radius + 1, device=g.device, dtype=g.dtype)
    kernel = torch.exp(-0.5 * (taps / std) ** 2)
    kernel = kernel / kernel.sum()
    c = g.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    cols = kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    out = F.conv2d(F.pad(g, (0, 0, radius, radius), mode="reflect"), rows, groups=c)
    return F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), cols, groups=c)


def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences of (B, C, H, W) along W and H (one-sided at the edges), each (B, C, H, W)."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return dx, dy


def motion_component(g: torch.Tensor, image: torch.Tensor, std: float, ridge: float = 1e-2) -> torch.Tensor:
    """The part of the step g (B, C, H, W) that moves the content of ``image`` (same shape): -(grad image . v).

    v (B, 2, H, W) is the displacement field, in pixels per unit step, that best explains g to first order
    (moving the content by v changes the image by -(grad image . v)): least squares over a Gaussian window of
    ``std`` pixels around each pixel (the Lucas-Kanade normal equations, summed over channels), with a ridge
    of ``ridge`` times the sample's mean edge energy so that flat regions, where nothing can move, get v = 0.
    Where the image is flat the result is 0: the step cannot paint new content there.
    """
    _spatial(g, "motion")
    if g.shape != image.shape:
        raise ValueError(
            f"motion: the step {tuple(g.shape)} and the image {tuple(image.shape)} differ in shape"
        )
    dx, dy = _gradients(image.to(g.dtype))
    # per-pixel 2x2 systems A v = b, A and b summed over channels and blurred over the window
    s11, s12, s22 = ((p * q).sum(1, keepdim=True) for p, q in ((dx, dx), (dx, dy), (dy, dy)))
    energy = (s11 + s22).mean(dim=(1, 2, 3), keepdim=True) / 2
    a11, a12, a22 = (lowpass(t, std) for t in (s11, s12, s22))
    b1, b2 = (lowpass(-(t * g).sum(1, keepdim=True), std) for t in (dx, dy))
    a11, a22 = a11 + ridge * energy, a22 + ridge * energy
    det = a11 * a22 - a12 * a12  # > 0 unless the whole window is flat (then b = 0 too, and v = 0)
    safe = torch.where(det > 0, det, torch.ones_like(det))
    vx = torch.where(det > 0, (a22 * b1 - a12 * b2) / safe, torch.zeros_like(det))
    vy = torch.where(det > 0, (a11 * b2 - a12 * b1) / safe, torch.zeros_like(det))
    return -(dx * vx + dy * vy)
