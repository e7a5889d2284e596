"""``motion_component``: the part of a step that moves an image's content, against a slow per-pixel least-squares
fit, on exact motions, and where nothing can move."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparke import Update
from sparke.guidance.filters import (
    _gradients,
    displacement,
    first_order_warp,
    layout_component,
    lowpass,
    motion_component,
    warp,
)


def _smooth_image(shape=(2, 3, 12, 10), seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return lowpass(torch.randn(*shape, generator=gen, dtype=torch.float64), 1.5) * 10


def _slow_motion(g: np.ndarray, image: np.ndarray, std: float, ridge: float) -> np.ndarray:
    """Per pixel, the 2-vector v minimising sum_q w(q) sum_c (g_c(q) + dx_c(q) vx + dy_c(q) vy)^2 + lam |v|^2,
    w the (reflected-edge) Gaussian window around the pixel; then -(dx vx + dy vy)."""
    dx, dy = (t.numpy() for t in _gradients(torch.from_numpy(image)))
    b, c, h, w = g.shape
    radius = max(1, min(math.ceil(3 * std), min(h, w) - 1))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / std) ** 2)
    taps /= taps.sum()

    def reflect(i, n):
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    out = np.zeros_like(g)
    for s in range(b):
        energy = (dx[s] ** 2).sum(0) + (dy[s] ** 2).sum(0)
        lam = ridge * energy.mean() / 2
        for y in range(h):
            for x in range(w):
                a = np.eye(2) * lam
                rhs = np.zeros(2)
                for oy in range(-radius, radius + 1):
                    for ox in range(-radius, radius + 1):
                        q = (reflect(y + oy, h), reflect(x + ox, w))
                        wq = taps[oy + radius] * taps[ox + radius]
                        j = np.stack([dx[s][:, q[0], q[1]], dy[s][:, q[0], q[1]]], 1)  # (C, 2)
                        a += wq * j.T @ j
                        rhs -= wq * j.T @ g[s][:, q[0], q[1]]
                v = np.linalg.solve(a, rhs)
                out[s, :, y, x] = -(dx[s][:, y, x] * v[0] + dy[s][:, y, x] * v[1])
    return out


@pytest.mark.parametrize("std", [0.8, 2.0])
def test_motion_component_matches_a_slow_least_squares_fit(std):
    image = _smooth_image()
    g = torch.randn(image.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast = motion_component(g, image, std, ridge=0.05)
    # float64 throughout; the two differ only in summation order (~1e-15 relative)
    np.testing.assert_allclose(fast.numpy(), _slow_motion(g.numpy(), image.numpy(), std, 0.05), atol=1e-9)


def test_a_step_that_is_a_motion_is_kept_whole():
    """g = -(grad image . v) for one displacement v everywhere: every window's fit is v, so g comes back."""
    image = _smooth_image()
    dx, dy = _gradients(image)
    g = -(0.3 * dx - 0.2 * dy)
    # ridge 0: the exact least-squares solution; float64 rounding of 2x2 solves ~1e-12
    torch.testing.assert_close(motion_component(g, image, 1.5, ridge=0.0), g, atol=1e-10, rtol=0)
    # the default ridge shrinks it a little and never flips it
    kept = motion_component(g, image, 1.5)
    assert 0.9 < float((kept * g).sum() / (g * g).sum()) <= 1.0


def test_nothing_is_painted_where_the_image_is_flat():
    image = torch.zeros(1, 3, 16, 16, dtype=torch.float64)
    image[..., 4:8, 4:8] = 1.0  # a square; flat everywhere more than a pixel away from its edges
    g = torch.randn(image.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = motion_component(g, image, 2.0)
    dx, dy = _gradients(image)
    flat = (dx.abs().sum(1) + dy.abs().sum(1)) == 0  # (1, H, W)
    assert flat.sum() > 150 and torch.equal(
        out.permute(1, 0, 2, 3)[:, flat], torch.zeros(3, int(flat.sum()), dtype=out.dtype)
    )
    assert out.norm() < 0.5 * g.norm()  # white noise is mostly not a motion
    assert torch.equal(motion_component(g, torch.zeros_like(image), 2.0), torch.zeros_like(g))


def test_motion_component_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="^motion: needs"):
        motion_component(torch.zeros(2, 16, 8), torch.zeros(2, 16, 8), 1.0)
    with pytest.raises(ValueError, match="^motion: the step"):
        motion_component(torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 8, 8), 1.0)


def test_flat_latents_take_the_plain_step():
    """The 2-D mixture pipeline's (B, 2) points have no spatial axes: motion changes nothing there."""
    from sparke.bench.mixture import Denoiser, MixturePipeline
    from sparke.guidance import SPARKE

    torch.manual_seed(0)
    pipe = MixturePipeline(Denoiser())
    outs = []
    for motion in (0.0, 2.0):
        guide = SPARKE(scale=0.3, every=1, space="latent", update=Update(centre=False, motion=motion))
        for seed in (0, 1):  # the second call has a bank to push from
            out = guide(
                pipe,
                prompt=["group 0", "group 1"],
                num_images_per_prompt=2,
                num_inference_steps=4,
                generator=torch.Generator().manual_seed(seed),
            )
        assert guide.stats.guided == 4
        outs.append(out.images)
    assert torch.equal(outs[0], outs[1])


def test_layout_component_keeps_a_shift_and_zoom_whole_and_drops_the_rest():
    """g = -(grad image . v) for v = t + s (p - centre): recovered exactly (ridge 0); its residual is orthogonal
    to the three motions (least squares); a flat image gives 0."""
    image = _smooth_image(shape=(2, 3, 12, 10))
    dx, dy = _gradients(image)
    h, w = 12, 10
    ys = ((torch.arange(h, dtype=torch.float64) - (h - 1) / 2) / 6).view(h, 1)
    xs = ((torch.arange(w, dtype=torch.float64) - (w - 1) / 2) / 6).view(1, w)
    t = torch.tensor([[0.4, -0.2, 0.3], [-0.1, 0.5, -0.6]], dtype=torch.float64)  # (tx, ty, s) per sample
    v_x = t[:, 0].view(2, 1, 1, 1) + t[:, 2].view(2, 1, 1, 1) * xs
    v_y = t[:, 1].view(2, 1, 1, 1) + t[:, 2].view(2, 1, 1, 1) * ys
    g = -(dx * v_x + dy * v_y)
    # float64 3x3 solves: ~1e-13
    torch.testing.assert_close(layout_component(g, image, ridge=0.0), g, atol=1e-10, rtol=0)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kept = layout_component(noise, image, ridge=0.0)
    residual = (noise - kept).flatten(1)
    for basis in (-dx, -dy, -(dx * xs + dy * ys)):
        # the normal equations' residual is orthogonal to each basis field, to float64 rounding
        torch.testing.assert_close(
            (residual * basis.flatten(1)).sum(1), torch.zeros(2, dtype=torch.float64), atol=1e-9, rtol=0
        )
    assert kept.norm() < 0.5 * noise.norm()
    assert torch.equal(layout_component(noise, torch.zeros_like(image)), torch.zeros_like(noise))
    with pytest.raises(ValueError, match="^motion: needs"):
        layout_component(torch.zeros(2, 16, 8), torch.zeros(2, 16, 8))


def test_warp_moves_content_for_real_and_agrees_with_its_first_order_change_on_a_ramp():
    h, w = 9, 11
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    ramp = torch.stack([0.7 * xs - 0.2 * ys + 1, -0.3 * xs + 0.5 * ys])[
        None
    ]  # (1, 2, H, W), linear in x and y
    v = torch.empty(1, 2, h, w, dtype=torch.float64)
    v[:, 0], v[:, 1] = 0.4, -0.25  # a fractional move: bilinear resampling is exact on a linear image
    inner = (..., slice(1, -1), slice(1, -1))  # the edges are extended, not extrapolated
    moved = warp(ramp, v)
    expected = torch.stack([0.7 * (xs - 0.4) - 0.2 * (ys + 0.25) + 1, -0.3 * (xs - 0.4) + 0.5 * (ys + 0.25)])[
        None
    ]
    # float64; grid_sample's normalised coordinates round at ~1e-16 relative
    torch.testing.assert_close(moved[inner], expected[inner], rtol=0, atol=1e-12)
    torch.testing.assert_close((ramp + first_order_warp(ramp, v))[inner], expected[inner], rtol=0, atol=1e-12)
    torch.testing.assert_close(warp(ramp, torch.zeros_like(v)), ramp, rtol=0, atol=1e-12)


def test_warp_by_whole_pixels_shifts_and_extends_the_edge():
    image = torch.arange(2 * 3 * 5 * 6, dtype=torch.float64).view(2, 3, 5, 6)
    v = torch.zeros(2, 2, 5, 6, dtype=torch.float64)
    v[0, 0] = 1.0  # sample 0: one pixel right
    v[1, 1] = -2.0  # sample 1: two pixels up
    moved = warp(image, v)
    torch.testing.assert_close(moved[0, :, :, 1:], image[0, :, :, :-1], rtol=0, atol=1e-9)
    torch.testing.assert_close(moved[0, :, :, 0], image[0, :, :, 0], rtol=0, atol=1e-9)
    torch.testing.assert_close(moved[1, :, :-2], image[1, :, 2:], rtol=0, atol=1e-9)
    torch.testing.assert_close(moved[1, :, -2:], image[1, :, -1:].expand(-1, 2, -1), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match=r"^warp: the field must be \(2, 2, 5, 6\)"):
        warp(image, v[:, :1])


@pytest.mark.parametrize("motion", [1.5, "global"])
def test_displacement_is_the_field_behind_each_component(motion):
    image = _smooth_image()
    g = torch.randn(image.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v = displacement(g, image, motion)
    assert v.shape == (image.shape[0], 2, *image.shape[-2:])
    component = layout_component(g, image) if motion == "global" else motion_component(g, image, motion)
    # float64, the same sums in another order
    torch.testing.assert_close(first_order_warp(image, v), component, rtol=0, atol=1e-10)
    if motion == "global":  # one shift and one zoom: v(p) = t + s (p - centre) is affine and isotropic
        dvx = v[:, 0, :, 1:] - v[:, 0, :, :-1]
        dvy = v[:, 1, 1:] - v[:, 1, :-1]
        torch.testing.assert_close(dvx, dvx[:, :1, :1].expand_as(dvx), rtol=0, atol=1e-12)
        torch.testing.assert_close(dvy, dvx[:, :1, :1].expand_as(dvy), rtol=0, atol=1e-12)


def test_warp_setting_is_checked():
    from sparke.guidance import SPARKE

    assert (
        SPARKE(update=Update(motion=2, warp=True)).warp is True
        and SPARKE(update=Update(motion=2, warp=False)).warp is False
    )
    # the defaults warp; "auto" (the default) warps wherever motion is on and nothing changes the step after the fit
    assert (
        SPARKE().motion == 2.0
        and SPARKE().warp is True
        and SPARKE(update=Update(motion="global")).warp is True
    )
    assert not any(
        SPARKE(update=Update(**options)).warp
        for options in (dict(motion=0), dict(smooth=1), dict(orthogonal=True))
    )
    for bad in (
        dict(warp=True, motion=0),
        dict(warp=True, motion=2, smooth=1),
        dict(warp=True, motion=2, orthogonal=True),
    ):
        with pytest.raises(ValueError, match="^warp: moves by the fitted displacement of `motion`"):
            Update(**bad)
    with pytest.raises(ValueError, match="^warp: must be True, False or 'auto'"):
        SPARKE(update=Update(motion=2, warp=1))
