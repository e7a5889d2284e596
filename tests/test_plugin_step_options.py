"""The step options of SPARKE (issue 13's trade-off candidates): noise-level schedule, smoothed step, median
bandwidth; each against a slow definition or an exact relation to the default step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparke.core import Bank
from sparke.core.defaults import SIGMA_IMAGE
from sparke.guidance import SPARKE, Update
from sparke.guidance.filters import lowpass
from sparke.guidance.spaces import centred, noise_share
from sparke.guidance.update import median_distance
from tiny_pipelines import call_kwargs, tiny_sd

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("torch_one_thread")]

SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# -- noise share -------------------------------------------------------------------------------------------------


def test_noise_share_of_each_scheduler_family():
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
    )

    ddim = DDIMScheduler(**SD_BETAS)
    euler = EulerDiscreteScheduler(**SD_BETAS)
    dpm = DPMSolverMultistepScheduler(**SD_BETAS)
    for s in (ddim, euler, dpm):
        s.set_timesteps(6)
    abar = ddim.alphas_cumprod
    shares = []
    for i, t in enumerate(ddim.timesteps):
        expected = math.sqrt(1 - float(abar[int(t)]))
        assert noise_share(ddim, t) == pytest.approx(expected, rel=1e-6)
        # Euler's sample is x0 + sigma eps (not variance preserving)
        euler._step_index = i
        sigma = float(euler.sigmas[i])
        assert noise_share(euler, euler.timesteps[i]) == pytest.approx(sigma / math.hypot(1, sigma), rel=1e-6)
        dpm._step_index = i
        alpha, sigma = dpm._sigma_to_alpha_sigma_t(dpm.sigmas[i])
        assert noise_share(dpm, dpm.timesteps[i]) == pytest.approx(
            float(sigma / (alpha**2 + sigma**2) ** 0.5)
        )
        shares.append(noise_share(ddim, t))
    assert all(a > b for a, b in zip(shares, shares[1:], strict=False))  # noise falls along the trajectory
    assert 0.98 < shares[0] <= 1.0 and shares[-1] < 0.5

    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(5)
    for i in range(5):
        flow._step_index = i
        s = float(flow.sigmas[i])
        assert noise_share(flow, flow.timesteps[i]) == pytest.approx(s / math.hypot(1 - s, s))


# -- low-pass --------------------------------------------------------------------------------------------------


def _slow_blur(g: np.ndarray, std: float, radius: int) -> np.ndarray:
    """Separable Gaussian with reflected edges, one output pixel at a time."""
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / std) ** 2)
    taps /= taps.sum()
    h, w = g.shape[-2:]

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    out = np.zeros_like(g)
    for y in range(h):
        for x in range(w):
            acc = 0.0
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    weight = taps[dy + radius] * taps[dx + radius]
                    acc = acc + weight * g[..., reflect(y + dy, h), reflect(x + dx, w)]
            out[..., y, x] = acc
    return out


def test_lowpass_matches_a_slow_gaussian_blur():
    g = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for std in (0.7, 1.0, 2.0):
        radius = max(1, min(math.ceil(3 * std), 5))
        np.testing.assert_allclose(lowpass(g, std).numpy(), _slow_blur(g.numpy(), std, radius), atol=1e-12)
    const = torch.full((1, 4, 8, 8), 3.0)
    torch.testing.assert_close(lowpass(const, 1.5), const)  # a normalised kernel keeps flat fields
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1.0
    assert lowpass(checker.expand(1, 1, 8, 8), 1.0).abs().max() < 0.1  # the highest frequency is damped
    with pytest.raises(ValueError, match="B, C, H, W"):
        lowpass(torch.zeros(2, 16, 8), 1.0)


# -- median bandwidth ------------------------------------------------------------------------------------------


def test_median_distance_is_the_median_over_bank_and_batch_pairs():
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(3, 5, generator=gen), dim=1)
    rows = torch.nn.functional.normalize(torch.randn(7, 5, generator=gen), dim=1)
    bank = Bank()
    bank.add(rows, None)
    pairs = [float((a - b).norm()) for a in x for b in rows]
    pairs += [float((x[i] - x[j]).norm()) for i in range(3) for j in range(i + 1, 3)]
    assert median_distance(x, bank) == pytest.approx(float(torch.tensor(pairs).median()), rel=1e-6)
    assert median_distance(x[:1], Bank()) == SIGMA_IMAGE  # no pair: the fixed default
    # a large bank is read at evenly spaced rows only
    assert median_distance(x, bank, max_rows=7) == median_distance(x, bank)
    assert 0 < median_distance(x, bank, max_rows=2) <= 2


def test_median_bandwidth_keeps_an_exact_bank():
    """An index is built for one bandwidth: a median one changes every step, so "auto" is an exact bank (an
    AutoBank past its crossover would rebuild its whole index at every guided step) and "indexed" is refused."""
    from sparke.core.auto import AutoBank

    assert type(SPARKE(sigma_image="median").bank) is Bank
    assert type(SPARKE(sigma_image="median", bank="exact").bank) is Bank
    assert isinstance(SPARKE(sigma_image=0.5).bank, AutoBank)
    with pytest.raises(ValueError, match="median"):
        SPARKE(sigma_image="median", bank="indexed")


# -- the options inside SPARKE on a tiny SD ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd():
    from diffusers import DDIMScheduler

    return tiny_sd(DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1))


def _first_step(guide: SPARKE, sd):
    """(latents before, latents after) of the first guided step, and that step's noise share."""
    seen = []
    original = guide.on_step

    def spy(step):
        new = original(step)
        if new is not None and not seen:
            seen.append((step.latents.clone(), new.clone(), noise_share(step.scheduler, step.timestep)))
        return new

    guide.on_step = spy
    guide(sd, **call_kwargs(sd, prompt=["a cat", "a dog", "a cat"], steps=3, seed=0))
    return seen[0]


def test_noise_schedule_scales_the_step_by_the_noise_share(sd):
    before, constant, _ = _first_step(SPARKE(scale=0.1, every=1, update=Update(motion=0)), sd)
    before2, noisy, share = _first_step(
        SPARKE(scale=0.1, every=1, update=Update(motion=0, step_schedule="noise")), sd
    )
    assert torch.equal(before, before2)
    assert 0.5 < share < 1.0
    torch.testing.assert_close(noisy - before, share * (constant - before), rtol=1e-4, atol=1e-6)


def test_smooth_step_is_the_blurred_step_at_the_same_length(sd):
    before, plain, _ = _first_step(SPARKE(scale=0.1, every=1, update=Update(motion=0)), sd)
    _, smooth, _ = _first_step(SPARKE(scale=0.1, every=1, update=Update(motion=0, smooth=1.0)), sd)
    step, smoothed = plain - before, smooth - before
    expected = lowpass(step, 1.0)
    for a, b in zip(smoothed, expected, strict=True):
        torch.testing.assert_close(a / a.norm(), b / b.norm(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        smoothed.flatten(1).norm(dim=1), step.flatten(1).norm(dim=1), rtol=1e-4, atol=0
    )


def test_median_bandwidth_equals_the_fixed_bandwidth_it_computes():
    gen = torch.Generator().manual_seed(2)
    x = torch.nn.functional.normalize(torch.randn(3, 6, generator=gen), dim=1)
    y = torch.nn.functional.normalize(torch.randn(3, 4, generator=gen), dim=1)
    median = SPARKE(sigma_image="median")
    median.bank.add(
        torch.nn.functional.normalize(torch.randn(5, 6, generator=gen), dim=1), y[[0, 1, 2, 0, 1]]
    )
    fixed = SPARKE(sigma_image=median_distance(x, median.bank), bank=median.bank)

    def direction(guide):
        return guide.bank.direction(x, y, spec=guide.step_spec(x))

    assert fixed.step_spec(x) == median.step_spec(x).replace(on_nonfinite="skip")
    torch.testing.assert_close(direction(median), direction(fixed))
    assert not torch.allclose(direction(median), direction(SPARKE(bank=median.bank)))


def test_centred_removes_each_channels_spatial_mean():
    z = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(4)) + torch.arange(4.0).view(
        1, 4, 1, 1
    )
    c = centred(z)
    torch.testing.assert_close(c.mean(dim=(2, 3)), torch.zeros(2, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(z - c, z.mean(dim=(2, 3), keepdim=True).expand_as(z))
    packed = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(5)) + 3
    torch.testing.assert_close(centred(packed).mean(dim=1), torch.zeros(2, 16), atol=1e-6, rtol=0)
    flat = torch.randn(2, 8)
    assert centred(flat) is flat  # no spatial axis: nothing to centre
    with pytest.raises(ValueError, match="centre"):
        centred(torch.zeros(2, 3, 4, 5, 6))


def test_centred_guidance_never_moves_a_channels_mean(sd):
    """The features see only the centred latents, so the gradient (and the plain step) has zero channel means
    (the motion step moves content instead, and its resampling at the edges shifts a mean slightly)."""
    before, plain, _ = _first_step(
        SPARKE(scale=0.1, every=1, update=Update(motion=0, centre=False), space="latent"), sd
    )
    assert (plain - before).double().mean(dim=(2, 3)).abs().max() > 1e-3 * (plain - before).abs().max()
    for space in ("latent", "x0"):  # x0 = (z - sigma eps) / alpha: its gradient is the latent one over alpha
        guide = SPARKE(scale=0.1, every=1, update=Update(motion=0, centre=True), space=space)
        before2, moved, _ = _first_step(guide, sd)
        assert torch.equal(before, before2)
        step = (moved - before).double()
        assert step.norm() > 0
        assert step.mean(dim=(2, 3)).abs().max() < 1e-6 * step.abs().max()
        assert guide.bank.metadata["space"] == f"{space}-centred"
        # the bank holds centred final latents: unit rows whose channel means are 0
        rows = guide.bank.x.view(len(guide.bank), *moved.shape[1:])
        torch.testing.assert_close(rows.mean(dim=(2, 3)), torch.zeros(len(guide.bank), 4), atol=1e-6, rtol=0)


def test_step_options_are_checked():
    for kw in (
        dict(step_schedule="cosine"),
        dict(smooth=-1.0),
        dict(smooth=True),
        dict(smooth=float("inf")),
        dict(sigma_image="mean"),
        dict(centre="yes"),
    ):
        with pytest.raises(ValueError):
            SPARKE(**kw)
    assert "step_schedule='noise'" in repr(SPARKE(update=Update(step_schedule="noise", smooth=2)))
    assert SPARKE().centre and SPARKE().space == "x0"  # the defaults: the benchmark's best trade-off
    assert not SPARKE(space=lambda images: images.flatten(1)).centre  # an encoder's features stay as they are
