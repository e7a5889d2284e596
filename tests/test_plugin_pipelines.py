"""SPARKE on tiny random-weight SD, SDXL, PixArt-Sigma, SD3, Flux, DiT and ControlNet-SD pipelines (offline)."""

from __future__ import annotations

import functools

import pytest
import torch

from sparke.core import Bank
from sparke.guidance import SPARKE, attach
from tiny_pipelines import NAMES, build, call_kwargs, final_latents, pipeline_state, same_state

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("torch_one_thread")]


PROMPTS = ["a photo of a cat", "a photo of a dog"]  # similar prompts: the prompt kernel pairs them
PER = 2  # images per prompt: B = 4
SEEDS = (0, 1, 2)


@functools.cache
def _pipe(name: str):
    return build(name)


def _run(pipe, guide=None, seed=0, **extra):
    kw = call_kwargs(pipe, PROMPTS, num_images_per_prompt=PER, seed=seed, **extra)
    with attach(pipe) as run:  # records the final latents, for every pipeline (DiT always decodes)
        out = guide(pipe, **kw) if guide is not None else pipe(**kw)
    return out, run.final_latents[: len(PROMPTS) * PER].float()


def _spread(z: torch.Tensor) -> float:
    """Mean pairwise distance of unit-norm flattened rows (a radial blow-up cannot fake it)."""
    u = torch.nn.functional.normalize(z.flatten(1), dim=1)
    return torch.pdist(u).mean().item()


@pytest.mark.parametrize("name", NAMES)
def test_scale_zero_is_exactly_unguided(name):
    pipe = _pipe(name)
    vanilla, _ = _run(pipe)
    guide = SPARKE(scale=0.0, every=1)
    out, _ = _run(pipe, guide)
    assert type(out) is type(vanilla)
    assert torch.equal(final_latents(out), final_latents(vanilla))
    assert len(guide.bank) == len(PROMPTS) * PER
    assert guide.stats.guided == 0


@pytest.mark.parametrize("space", [{}, {"space": "latent", "centre": False}], ids=["default", "paper-latent"])
@pytest.mark.parametrize("name", NAMES)
def test_guidance_changes_images_and_raises_spread(name, space):
    pipe = _pipe(name)
    base, guided = [], []
    for seed in SEEDS:
        out_v, z_v = _run(pipe, seed=seed)
        guide = SPARKE(scale=0.3, every=1, **space)
        out_g, z_g = _run(pipe, guide, seed=seed)
        assert not torch.equal(final_latents(out_g), final_latents(out_v))
        assert guide.stats.guided == guide.stats.steps == 3
        assert len(guide.bank) == len(PROMPTS) * PER
        base.append(_spread(z_v))
        guided.append(_spread(z_g))
    assert sum(guided) / len(guided) > sum(base) / len(base)


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_left_as_found_after_call_and_after_raise(name):
    pipe = _pipe(name)
    sched = pipe.scheduler
    # an unguided call first: the pipeline itself sets its scheduler's timesteps, so "as found" is the state a
    # plain call leaves (whatever test used this cached pipeline before, in whatever order)
    _run(pipe)
    before = pipeline_state(pipe)
    guide = SPARKE(scale=0.3, every=1)
    _run(pipe, guide)
    assert pipe.scheduler is sched
    assert same_state(pipeline_state(pipe), before)

    # an exception from inside the denoiser, on the second step
    calls = {"n": 0}

    def boom(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")

    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    handle = denoiser.register_forward_pre_hook(boom, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            guide(pipe, **call_kwargs(pipe, PROMPTS, num_images_per_prompt=PER))
    finally:
        handle.remove()
    assert pipe.scheduler is sched
    assert "step" not in vars(sched)
    assert same_state(pipeline_state(pipe), before)
    assert len(guide.bank) == len(PROMPTS) * PER  # the failed call added nothing


@pytest.mark.parametrize("name", NAMES)
def test_bank_save_load_continue(name, tmp_path):
    pipe = _pipe(name)
    guide = SPARKE(scale=0.2, every=1)
    _run(pipe, guide, seed=0)
    path = tmp_path / "bank.safetensors"
    guide.bank.save(path)
    loaded = Bank.load(path)
    assert len(loaded) == len(PROMPTS) * PER
    assert torch.equal(loaded.x, guide.bank.x)
    again = SPARKE(scale=0.2, every=1, bank=loaded)
    _, z_resumed = _run(pipe, again, seed=1)
    assert len(again.bank) == 2 * len(PROMPTS) * PER
    # the resumed guide repels the loaded rows: its result differs from a guide with an empty bank
    _, z_fresh = _run(pipe, SPARKE(scale=0.2, every=1), seed=1)
    assert not torch.equal(z_resumed, z_fresh)
