"""Filters of a guidance step g (B, C, H, W) in the latents' layout: what the step is allowed to change.

``lowpass`` blurs it (no high-frequency noise). ``motion_component`` keeps only the part of it that moves the
content of an image, so the step displaces what the estimate already shows instead of painting something new;
``layout_component`` keeps only one shift and one zoom of the whole image, which cannot bend a shape.
``displacement`` gives the displacement field behind either, and ``warp`` moves an image by such a field for real
(resampling), where the components add only its first-order change.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["displacement", "first_order_warp", "layout_component", "lowpass", "motion_component", "warp"]

LOCAL_RIDGE = 1e-2  # x the sample's mean edge energy: flat regions get no motion
LAYOUT_RIDGE = 1e-6  # x the mean diagonal of the 3x3 normal matrix: keeps a nearly flat image's fit bounded


def _spatial(g: torch.Tensor, option: str, hint: str = "") -> None:
    if g.ndim != 4:
        raise ValueError(f"{option}: needs (B, C, H, W) latents, got shape {tuple(g.shape)}{hint}")


def _step_and_image(g: torch.Tensor, image: torch.Tensor) -> None:
    _spatial(g, "motion")
    if g.shape != image.shape:
        raise ValueError(
            f"motion: the step {tuple(g.shape)} and the image {tuple(image.shape)} differ in shape"
        )


def lowpass(g: torch.Tensor, std: float) -> torch.Tensor:
    """(B, C, H, W) -> the same, blurred over H and W by a Gaussian of ``std`` pixels (reflected edges)."""
    _spatial(g, "smooth", " (packed latents: use smooth=0)")
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


def _local_field(
    g: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, std: float, ridge: float
) -> torch.Tensor:
    """The Lucas-Kanade field (B, 2, H, W) of ``motion_component`` from the image's gradients dx, dy."""
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
    return torch.cat([vx, vy], 1)


def motion_component(
    g: torch.Tensor, image: torch.Tensor, std: float, ridge: float = LOCAL_RIDGE
) -> torch.Tensor:
    """The part of the step g (B, C, H, W) that moves the content of ``image`` (same shape): -(grad image . v).

    v (B, 2, H, W) is the displacement field, in pixels per unit step, that best explains g to first order
    (moving the content by v changes the image by -(grad image . v)): least squares over a Gaussian window of
    ``std`` pixels around each pixel (the Lucas-Kanade normal equations, summed over channels), with a ridge
    of ``ridge`` times the sample's mean edge energy so that flat regions, where nothing can move, get v = 0.
    Where the image is flat the result is 0: the step cannot paint new content there.
    """
    _step_and_image(g, image)
    dx, dy = _gradients(image.to(g.dtype))
    return _first_order(dx, dy, _local_field(g, dx, dy, std, ridge))


def _layout_fields(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The fields of a unit x shift, y shift and zoom (3, 2, H, W), coordinates in units of half the larger side
    about the centre."""
    half = max(h, w) / 2
    ys = ((torch.arange(h, device=device, dtype=dtype) - (h - 1) / 2) / half).view(h, 1).expand(h, w)
    xs = ((torch.arange(w, device=device, dtype=dtype) - (w - 1) / 2) / half).view(1, w).expand(h, w)
    one, zero = torch.ones_like(xs), torch.zeros_like(xs)
    return torch.stack([torch.stack([one, zero]), torch.stack([zero, one]), torch.stack([xs, ys])])


def _layout_field(g: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, ridge: float) -> torch.Tensor:
    """The shift + zoom field (B, 2, H, W) of ``layout_component`` from the image's gradients dx, dy:
    v(p) = t + s (p - centre), least squares."""
    fields = _layout_fields(*g.shape[-2:], g.device, g.dtype)
    # (B, 3, C*H*W): the first-order change of the image under each unit field
    basis = -(dx[:, None] * fields[None, :, :1] + dy[:, None] * fields[None, :, 1:]).flatten(2)
    normal = basis @ basis.transpose(1, 2)  # (B, 3, 3)
    scale = normal.diagonal(dim1=1, dim2=2).mean(1)  # (B,)
    eye = torch.eye(3, device=g.device, dtype=g.dtype)
    lam = (ridge * scale).clamp_min(torch.finfo(g.dtype).tiny)
    coef = torch.linalg.solve(
        normal + lam[:, None, None] * eye, basis @ g.flatten(1)[:, :, None]
    )  # (B, 3, 1)
    coef = torch.where((scale > 0)[:, None, None], coef, torch.zeros_like(coef))  # a flat image: no move
    return (coef[..., None, None] * fields).sum(1)


def layout_component(g: torch.Tensor, image: torch.Tensor, ridge: float = LAYOUT_RIDGE) -> torch.Tensor:
    """The part of the step g (B, C, H, W) that shifts and zooms the whole of ``image`` (same shape).

    Per sample, the least-squares fit of g by -(grad image . v) with v(p) = t + s (p - centre): one translation
    t (2 numbers) and one isotropic zoom s about the image centre, coordinates in units of half the larger
    side. Shapes, counts and colours stay as they are to first order; only where things are and how large.
    ``ridge`` (times the mean diagonal of the 3x3 normal matrix) keeps a nearly flat image's fit bounded; a
    flat image gives 0.
    """
    _step_and_image(g, image)
    dx, dy = _gradients(image.to(g.dtype))
    return _first_order(dx, dy, _layout_field(g, dx, dy, ridge))


def displacement(g: torch.Tensor, image: torch.Tensor, motion: float | str) -> torch.Tensor:
    """The displacement field v (B, 2, H, W; x then y, pixels per unit step) behind ``motion_component``
    (``motion`` a window width) or ``layout_component`` (``motion="global"``) of the step g against ``image``:
    that component is -(grad image . v)."""
    _step_and_image(g, image)
    dx, dy = _gradients(image.to(g.dtype))
    if motion == "global":
        return _layout_field(g, dx, dy, LAYOUT_RIDGE)
    return _local_field(g, dx, dy, float(motion), LOCAL_RIDGE)


def _first_order(dx: torch.Tensor, dy: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return -(dx * v[:, :1] + dy * v[:, 1:])


def first_order_warp(image: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The first-order change -(grad image . v) (B, C, H, W) of ``image`` moved by the field v (B, 2, H, W)."""
    return _first_order(*_gradients(image), v)


def warp(image: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``image`` (B, C, H, W) with its content moved by the field v (B, 2, H, W; x then y, in pixels):
    out(p) = image(p - v(p)), bilinear, edges extended. To first order, image - (grad image . v)."""
    _spatial(image, "warp")
    b, _, h, w = image.shape
    if v.shape != (b, 2, h, w):
        raise ValueError(f"warp: the field must be {(b, 2, h, w)}, got {tuple(v.shape)}")
    ys = torch.arange(h, device=image.device, dtype=image.dtype).view(h, 1).expand(h, w)
    xs = torch.arange(w, device=image.device, dtype=image.dtype).view(1, w).expand(h, w)
    src_x = xs - v[:, 0].to(image.dtype)
    src_y = ys - v[:, 1].to(image.dtype)
    # grid_sample's coordinates: -1 and 1 are the centres of the corner pixels (align_corners=True)
    grid = torch.stack([2 * src_x / max(w - 1, 1) - 1, 2 * src_y / max(h - 1, 1) - 1], -1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
