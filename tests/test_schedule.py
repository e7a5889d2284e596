"""The step schedules (``sparke.guidance.schedule``): ``every="span"`` by noise level, against hand-computed values,
its invariants (no cliff, a fine schedule adds up to ``bins`` full steps), and on tiny pipelines."""

from __future__ import annotations

import math

import pytest
import torch

from sparke.guidance import SPARKE, Host, Schedule
from sparke.guidance.schedule import SPAN_BAND, SPAN_BINS, auto_every, log_snr, span_factors
from tiny_pipelines import build, call_kwargs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _dpm(steps: int) -> list[float]:
    """lambda of each step of DPM-Solver++ on linear betas (the embedded model's scheduler)."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear")
    scheduler.set_timesteps(steps)
    return log_snr(scheduler, steps)


def _auto_factors(steps: int) -> list[float]:
    k = auto_every(steps)
    return [1.0 if i % k == 0 else 0.0 for i in range(steps)]


def test_span_factors_by_hand():
    # band (-4, 0.5), bin width 0.9. Step 1 (lambda -3, bin 1) covers -3 to -1: weight 2 / 4.5; step 2
    # (lambda -1, bin 3) covers -1 to the band's end 0.5: 1.5 / 4.5. Steps 0 (-5) and 3 (1) lie outside.
    lam = [-5.0, -3.0, -1.0, 1.0]
    assert span_factors(lam, bins=1) == pytest.approx([0.0, 3.5 / 4.5, 0.0, 0.0], abs=1e-12)
    # five bins: each step is the first of its own bin, 5 w capped at 1
    assert span_factors(lam, bins=5) == [0.0, 1.0, 1.0, 0.0]
    # two bins of 2.25: steps 0 and 1 share bin 0 (weights 0.9 / 4.5 + 2 / 4.5, 2 w capped at 1), step 2 has
    # bin 1 to itself (2 * 1.5 / 4.5)
    assert span_factors([-3.9, -3.0, -1.0], bins=2) == pytest.approx([1.0, 0.0, 2 * 1.5 / 4.5], abs=1e-12)


def test_a_fine_schedule_adds_up_to_bins_full_steps_wherever_the_band_falls():
    for lo in (-9.0, -6.0, -4.5):  # the schedule starts below the band and runs past its end
        lam = [lo + (3.0 - lo) * i / 999 for i in range(1000)]
        f = span_factors(lam)
        assert sum(v > 0 for v in f) == SPAN_BINS
        # each bin's summed weight is 1/bins minus at most one grid spacing (its first step starts after
        # the bin's edge): the total is within bins * spacing * bins / width of SPAN_BINS
        spacing = (3.0 - lo) / 999
        assert SPAN_BINS - SPAN_BINS**2 * spacing / (SPAN_BAND[1] - SPAN_BAND[0]) <= sum(f) <= SPAN_BINS


def test_span_has_no_cliff_where_auto_has_one():
    """From one step count to the next, span's guided steps change by at most one and their summed move by
    at most one full step; auto's jump from 5 guided steps at 19 to 2 at 20."""
    counts, totals = [], []
    for n in range(1, 121):
        f = span_factors(_dpm(n))
        counts.append(sum(v > 0 for v in f))
        totals.append(sum(f))
    assert max(abs(a - b) for a, b in zip(counts, counts[1:], strict=False)) <= 1
    assert max(abs(a - b) for a, b in zip(totals, totals[1:], strict=False)) <= 1.0
    assert max(counts) == SPAN_BINS and totals[-1] > 4.5
    auto = [sum(_auto_factors(n)) for n in (19, 20)]
    assert auto == [5.0, 2.0]


def test_span_skips_the_steps_where_the_clean_estimate_is_noise():
    # at 4 steps DPM-Solver++ starts at lambda -5.06 (< -4): step 0 is left alone, the others guided
    f = span_factors(_dpm(4))
    assert f[0] == 0 and all(v > 0 for v in f[1:])
    # flow matching starts at sigma = 1: lambda = -inf
    from diffusers import FlowMatchEulerDiscreteScheduler

    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(4)
    lam = log_snr(flow, 4)
    assert lam[0] == -math.inf
    s = float(flow.sigmas[1])  # the sample (1 - s) x0 + s eps: lambda = log((1 - s) / s)
    assert lam[1] == pytest.approx(math.log((1 - s) / s), rel=1e-6)  # float32 sigmas
    assert span_factors(lam)[0] == 0


def test_bad_bands_are_refused():
    with pytest.raises(ValueError, match="band"):
        span_factors([0.0], band=(1.0, 0.0))
    with pytest.raises(ValueError, match="every"):
        Schedule("sometimes")
    assert Schedule("span").count(10) is None  # needs the scheduler's noise levels


def test_a_step_factor_is_a_shorter_step():
    """``Host.step_factor`` f at scale s moves the latents exactly as a full step at scale s * f."""
    torch.manual_seed(0)
    z = torch.randn(3, 4, 8, 8)
    y = torch.nn.functional.normalize(torch.randn(3, 6), dim=-1)
    bank_rows = torch.randn(5, 4, 8, 8)
    bank_y = torch.nn.functional.normalize(torch.randn(5, 6), dim=-1)

    def moved(scale: float, factor: float) -> torch.Tensor:
        guide = SPARKE(scale=scale, prompt_encoder="minilm")
        guide.add_to_bank(bank_rows, bank_y)
        return guide.step_latents(z, lambda t: 0.9 * t, y, Host(step_factor=factor))

    assert torch.equal(moved(0.05, 0.5), moved(0.025, 1.0))  # 0.05 * 0.5 and 0.025 are the same double
    assert not torch.equal(moved(0.05, 0.5), moved(0.05, 1.0))


@pytest.mark.parametrize("steps", [4, 10])
def test_span_guides_the_steps_its_factors_name_on_a_pipeline(steps):
    from diffusers import DPMSolverMultistepScheduler

    pipe = build("sd", DPMSolverMultistepScheduler(beta_schedule="linear"))
    guide = SPARKE(every="span")
    kw = call_kwargs(pipe, ["a red circle", "a blue square"], steps=steps, seed=0, guidance_scale=2.0)
    guide(pipe, **kw)
    guide(pipe, **{**kw, "generator": torch.Generator().manual_seed(1)})
    pipe.scheduler.set_timesteps(
        steps
    )  # the schedule the call used (the call leaves the scheduler at its end)
    expected = span_factors(log_snr(pipe.scheduler, steps))
    assert guide.stats.guided == sum(v > 0 for v in expected)
    assert guide.stats.guided == (3 if steps == 4 else 5)


def test_span_warns_when_no_step_lies_in_its_band():
    from diffusers import DPMSolverMultistepScheduler

    pipe = build("sd", DPMSolverMultistepScheduler(beta_schedule="linear"))
    guide = SPARKE(every="span")
    kw = call_kwargs(pipe, ["a red circle"], steps=1, seed=0, guidance_scale=2.0)  # lambda -5.06 only
    with pytest.warns(UserWarning, match="guided none of the 1 denoising steps"):
        guide(pipe, **kw)
    assert guide.stats.guided == 0 and len(guide.bank) == 1


def test_span_factors_follow_a_new_schedule_of_the_same_scheduler():
    """Schedule.factor computes a call's factors once; a new set_timesteps (another step count, or img2img's
    later start) gives that schedule's factors, not the cached ones."""
    from diffusers import DPMSolverMultistepScheduler

    from sparke.guidance.attach import Step

    scheduler, schedule = DPMSolverMultistepScheduler(beta_schedule="linear"), Schedule("span")

    def factors(steps: int) -> list[float]:
        scheduler.set_timesteps(steps)
        return [
            schedule.factor(Step(i, i / max(steps - 1, 1), steps, None, None, t, scheduler, None))
            for i, t in enumerate(scheduler.timesteps)
        ]

    for steps in (10, 4, 10, 50):
        assert factors(steps) == span_factors(log_snr(scheduler, steps))
    assert schedule == Schedule("span")  # the cache is not part of the schedule's value
