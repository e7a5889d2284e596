"""Guidance interval (``sparke.methods.interval``) on tiny pipelines: exact limits and the noise-level mapping."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from sparke.guidance import attach
from sparke.guidance.spaces import step_sigma
from sparke.methods import METHODS, make
from sparke.methods.interval import IntervalGuidance
from tiny_pipelines import build, call_kwargs

pytestmark = pytest.mark.usefixtures("torch_one_thread")

STEPS = 5
PROMPTS = ["a photo of a cat", "a red car"]


@functools.cache
def _pipe(name: str):
    return build(name)


def _latents(pipe, guide=None, cfg=5.0, seed=0):
    kw = call_kwargs(pipe, PROMPTS, steps=STEPS, seed=seed, guidance_scale=cfg)
    with attach(pipe) as run:
        guide(pipe, **kw) if guide is not None else pipe(**kw)
    return run.final_latents[: len(PROMPTS)].float()


@pytest.mark.parametrize("name", ["sd", "sdxl", "sd3", "pixart", "dit"])
def test_interval_limits_are_exact(name):
    pipe = _pipe(name)
    vanilla = _latents(pipe)
    # every step inside: the pipeline's own guidance, bit for bit
    assert torch.equal(_latents(pipe, IntervalGuidance(lo=0.0, hi=math.inf)), vanilla)
    assert torch.equal(_latents(pipe, IntervalGuidance(scale=0.0, lo=1e3, hi=1e4)), vanilla)
    # every step outside: the conditional prediction, i.e. the call without classifier-free guidance
    # (equal up to float32 rounding: the model sees a batch of 2B rows instead of B)
    outside = IntervalGuidance(lo=1e3, hi=1e4)
    limited = _latents(pipe, outside)
    assert outside.stats.guided == STEPS
    torch.testing.assert_close(limited, _latents(pipe, cfg=1.0), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(limited, vanilla, atol=1e-3)


def test_default_interval_changes_the_images_and_guides_the_middle():
    pipe = _pipe("sd")
    guide = make("interval")
    assert isinstance(guide, IntervalGuidance) and (guide.lo, guide.hi) == (0.28, 5.42)
    z = _latents(pipe, guide)
    assert not torch.equal(z, _latents(pipe))
    inside = [guide.lo < s <= guide.hi for s in guide.sigmas]
    assert len(guide.sigmas) == STEPS and guide.stats.guided == inside.count(False) > 0
    assert guide.sigmas == sorted(guide.sigmas, reverse=True)  # noise decreases along the trajectory


def test_no_unconditional_batch_is_left_alone():
    pipe = _pipe("sd")
    guide = IntervalGuidance(lo=1e3, hi=1e4)
    assert torch.equal(_latents(pipe, guide, cfg=1.0), _latents(pipe, cfg=1.0))
    assert guide.stats.guided == 0


def test_step_sigma_maps_each_family_to_edm_sigma():
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        HeunDiscreteScheduler,
    )

    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ddim = DDIMScheduler(**betas)
    ddim.set_timesteps(4)
    abar = ddim.alphas_cumprod[ddim.timesteps]
    want = ((1 - abar) / abar).sqrt()
    got = torch.tensor([step_sigma(ddim, i) for i in range(4)])
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=0)  # float64 -> float32 rounding
    for cls in (EulerDiscreteScheduler, DPMSolverMultistepScheduler):
        sched = cls(**betas)
        sched.set_timesteps(4)
        abar = sched.alphas_cumprod[sched.timesteps.long()]
        got = torch.tensor([step_sigma(sched, i) for i in range(4)])
        # both store EDM's sigma; Euler interpolates it between integer timesteps
        torch.testing.assert_close(got, ((1 - abar) / abar).sqrt().float(), rtol=2e-2, atol=0)
    heun = HeunDiscreteScheduler(**betas)
    heun.set_timesteps(4)
    euler = EulerDiscreteScheduler(**betas)
    euler.set_timesteps(4)
    assert [step_sigma(heun, i) for i in range(4)] == [step_sigma(euler, i) for i in range(4)]
    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(4)
    s = [float(v) for v in flow.sigmas[:4]]
    assert [step_sigma(flow, i) for i in range(4)] == [math.inf if v >= 1 else v / (1 - v) for v in s]


def test_interval_is_a_method_with_checked_settings():
    assert "interval" in METHODS and METHODS["interval"].defaults == {"lo": 0.28, "hi": 5.42}
    with pytest.raises(ValueError, match="^scale"):
        IntervalGuidance(scale=1.5)
    with pytest.raises(ValueError, match="^lo, hi"):
        IntervalGuidance(lo=5.0, hi=1.0)
