"""``SPARKE()`` with no arguments on few-step, distilled-style schedules of tiny pipelines (offline).

LCM (4 and 8 steps, guidance 1: no unconditional batch), turbo-style SDXL (Euler ancestral with "trailing" spacing,
1 and 2 steps, guidance 0) and schnell-style Flux (flow-match Euler, 4 steps, guidance 0).
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from sparke.guidance import SPARKE, attach
from sparke.guidance.options import DEFAULTS
from sparke.guidance.schedule import Schedule, auto_every
from tiny_pipelines import build, call_kwargs, final_latents

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPTS = ["a photo of a cat", "a photo of a dog"]
PER = 2


def _lcm():
    from diffusers import LCMScheduler

    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _turbo():
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing"
    )


def _flow():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler()


SCHEDULERS = {"lcm": _lcm, "turbo": _turbo, "flow": _flow}
# (id, pipeline, scheduler, steps, classifier-free guidance scale)
CASES = [
    ("sd-lcm-4", "sd", "lcm", 4, 1.0),
    ("sd-lcm-8", "sd", "lcm", 8, 1.0),
    ("sdxl-turbo-1", "sdxl", "turbo", 1, 0.0),
    ("sdxl-turbo-2", "sdxl", "turbo", 2, 0.0),
    ("flux-schnell-4", "flux", "flow", 4, 0.0),
]


@functools.cache
def _pipe(name: str, scheduler: str):
    return build(name, SCHEDULERS[scheduler]())


def _pipe_of(case):
    return _pipe(case[1], case[2])


def _run(pipe, guide, steps, cfg, seed):
    kw = call_kwargs(pipe, PROMPTS, num_images_per_prompt=PER, steps=steps, seed=seed, guidance_scale=cfg)
    with attach(pipe) as run:
        out = guide(pipe, **kw) if guide is not None else pipe(**kw)
    return out, run.final_latents


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_defaults_guide_a_few_step_run_and_warn_of_nothing(case):
    _, _, _, steps, cfg = case
    pipe = _pipe_of(case)
    guide = SPARKE()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(pipe, guide, steps, cfg, seed=0)
        out, z = _run(pipe, guide, steps, cfg, seed=1)
    ours = [w for w in caught if "sparke" in (w.filename or "").lower() or "SPARKE" in str(w.message)]
    assert not ours, [str(w.message) for w in ours]
    _, z_vanilla = _run(pipe, None, steps, cfg, seed=1)
    b = len(PROMPTS) * PER
    assert z.shape[0] == b  # no unconditional batch at guidance 0 or 1
    assert torch.isfinite(z).all()
    assert not torch.equal(z, z_vanilla)
    assert len(guide.bank) == 2 * b
    # the steps the default schedule names, read at each step of a vanilla call of the same schedule
    assert guide.stats.guided == _due_steps(pipe, steps, cfg) >= 1


def _due_steps(pipe, steps: int, cfg: float) -> int:
    schedule, due = Schedule(DEFAULTS["every"]), []

    def record(step):
        due.append(schedule.factor(step) > 0)

    with attach(pipe, record):
        pipe(**call_kwargs(pipe, PROMPTS, num_images_per_prompt=PER, steps=steps, seed=0, guidance_scale=cfg))
    assert len(due) == steps
    return sum(due)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_scale_zero_is_bit_identical_on_few_step_schedules(case):
    _, _, _, steps, cfg = case
    pipe = _pipe_of(case)
    vanilla, _ = _run(pipe, None, steps, cfg, seed=0)
    guide = SPARKE(scale=0.0)
    out, _ = _run(pipe, guide, steps, cfg, seed=0)
    assert torch.equal(final_latents(out), final_latents(vanilla))
    assert len(guide.bank) == len(PROMPTS) * PER


def test_auto_every_keeps_long_runs_and_guides_short_ones():
    assert [auto_every(n) for n in (1, 2, 4, 5, 6, 8, 10, 19)] == [1, 1, 1, 1, 2, 2, 2, 4]
    for n in (20, 25, 50, 1000):  # what every=10 always did
        assert auto_every(n) == 10
        assert Schedule("auto").count(n) == Schedule(10).count(n)
    # at least 2 guided steps (or the one step there is) for every run length
    assert all(Schedule("auto").count(n) >= min(2, n) for n in range(1, 200))
    with pytest.raises(ValueError, match="^every:"):
        Schedule("sometimes")
