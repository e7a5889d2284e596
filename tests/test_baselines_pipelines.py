"""The baselines (CADS, particle guidance, Vendi guidance, latent RKE) on tiny stock diffusers pipelines."""

from __future__ import annotations

import functools

import pytest
import torch

from sparke.guidance import attach
from sparke.methods import NAMES, make
from tiny_pipelines import build, call_kwargs, final_latents, pipeline_state, same_state

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PROMPTS = ["a photo of a cat", "a photo of a dog"]
PER = 2  # B = 4
PIPES = ("sd", "pixart")
METHODS = ("rke", "vendi", "cads", "pg")
# scales large enough to move the tiny random models' latents visibly
STRONG = {"rke": 0.3, "vendi": 0.3, "cads": 1.0, "pg": 0.5}
EVERY = {"rke": {"every": 1}, "vendi": {"every": 1}, "cads": {}, "pg": {}}


@functools.cache
def _pipe(name: str):
    return build(name)


@functools.cache
def _vanilla(name: str):
    """The unguided output of the shared call (computed once per pipeline)."""
    return final_latents(_run(_pipe(name), make("none"))[0])


def _run(pipe, guide, seed=0, steps=3):
    kw = call_kwargs(pipe, PROMPTS, num_images_per_prompt=PER, seed=seed, steps=steps)
    with attach(pipe) as run:
        out = guide(pipe, **kw)
    return out, run.final_latents[: len(PROMPTS) * PER].float()


@pytest.mark.parametrize("name", ("sd",))
@pytest.mark.parametrize("method", METHODS)
def test_scale_zero_is_exactly_unguided(name, method):
    out, _ = _run(_pipe(name), make(method, scale=0.0))
    assert torch.equal(final_latents(out), _vanilla(name))


@pytest.mark.parametrize("name", PIPES)
@pytest.mark.parametrize("method", METHODS)
def test_guidance_changes_output_and_leaves_pipeline_as_found(name, method):
    pipe = _pipe(name)
    vanilla = _vanilla(name)
    before = pipeline_state(pipe)
    guide = make(method, scale=STRONG[method], **EVERY[method])
    out, z = _run(pipe, guide)
    assert z.shape[0] == len(PROMPTS) * PER and torch.isfinite(z).all()
    assert not torch.equal(final_latents(out), vanilla)
    assert same_state(pipeline_state(pipe), before)


@pytest.mark.parametrize("name", ("sd",))
def test_cads_noises_only_the_conditional_half_and_never_compounds(name):
    pipe = _pipe(name)
    guide = make("cads", scale=0.25)
    clean, seen = [], []
    hook = guide.on_model_input

    def recording(index, args, kwargs):  # what the pipeline passes, and what the denoiser then gets
        clean.append(kwargs["encoder_hidden_states"].detach().clone())
        res = hook(index, args, kwargs)
        seen.append((res or (args, kwargs))[1]["encoder_hidden_states"].detach().clone())
        return res

    guide.on_model_input = recording
    guide(pipe, **call_kwargs(pipe, PROMPTS, num_images_per_prompt=PER, steps=10, output_type="latent"))
    b = len(PROMPTS) * PER
    assert len(seen) == len(clean) == 10
    # the pipeline's own embedding never changes: the noise is not compounded step to step
    assert all(torch.equal(c, clean[0]) for c in clean)
    for step, (y, y0) in enumerate(zip(seen, clean, strict=True)):
        assert torch.equal(y[:b], y0[:b]), "the unconditional half must stay clean"
        if 1 - step / 10 <= 0.6:
            assert torch.equal(y[b:], y0[b:])
            continue
        assert not torch.equal(y[b:], y0[b:])
        # psi = 1: rescaled to each clean row's mean and std
        torch.testing.assert_close(y[b:].flatten(1).mean(1), y0[b:].flatten(1).mean(1), atol=1e-4, rtol=0)
        torch.testing.assert_close(y[b:].flatten(1).std(1), y0[b:].flatten(1).std(1), atol=1e-4, rtol=1e-3)
    # two pure-noise steps (t >= 0.9: gamma = 0) draw different noise
    assert not torch.equal(seen[0][b:], seen[1][b:])


def test_cads_noise_per_image_is_independent_of_the_batch_and_of_earlier_calls():
    """One generator per image (as ``sparke generate`` passes): an image's noise depends on its seed alone."""
    pipe = _pipe("sd")

    def per_image(seeds):
        kw = call_kwargs(pipe, ["a photo of a cat"] * len(seeds), steps=3)
        kw["generator"] = [torch.Generator().manual_seed(s) for s in seeds]
        return kw

    guide = make("cads", scale=1.0)
    first = final_latents(guide(pipe, **per_image([5, 7])))
    again = final_latents(guide(pipe, **per_image([5, 7])))
    assert torch.equal(first, again), "a repeated call must not draw new noise"
    alone = final_latents(make("cads", scale=1.0)(pipe, **per_image([7])))
    torch.testing.assert_close(alone[0], first[1], atol=1e-4, rtol=0)  # batched kernels round differently
    other = final_latents(make("cads", scale=1.0, seed=1)(pipe, **per_image([5, 7])))
    assert not torch.equal(other, first)


def test_cads_schedule():
    from sparke.methods.cads import cads_gamma

    assert cads_gamma(0.3) == cads_gamma(0.6) == 1.0
    assert cads_gamma(0.9) == cads_gamma(1.0) == 0.0
    assert abs(cads_gamma(0.75) - 0.5) < 1e-12


def test_particle_guidance_spreads_the_batch():
    pipe = _pipe("sd")
    spread = {}
    for method, scale in (("none", None), ("pg", 0.5)):
        _, z = _run(pipe, make(method, scale=scale) if method != "none" else make("none"))
        u = torch.nn.functional.normalize(z.flatten(1), dim=1)
        spread[method] = torch.pdist(u).mean().item()
    assert spread["pg"] > spread["none"]


def test_vendi_window_keeps_the_last_rows():
    pipe = _pipe("sd")
    guide = make("vendi", scale=0.1, memory=6, every=1)
    for seed in range(2):
        _run(pipe, guide, seed=seed)
    assert len(guide.bank) == 6  # 2 calls x 4 images, capacity 6
    assert guide.objective == "vendi"


def test_registry_builds_every_baseline_with_its_defaults():
    from sparke.methods import METHODS, resolve_settings

    specs = {name: METHODS[name] for name in ("rke", "vendi", "cads", "pg")}
    for name, spec in specs.items():
        guide = spec.build(spec.default_scale, resolve_settings(spec, {}))
        assert guide.scale == spec.default_scale, name
    vendi = specs["vendi"].build(0.03, resolve_settings(specs["vendi"], {"memory": 7}))
    assert vendi.bank.capacity == 7 and vendi.objective == "vendi"


def test_make_rejects_unknown_method_and_lists_names():
    assert set(NAMES) == {"none", "sparke", "rke", "vendi", "cads", "pg", "interval", "spell"}
    with pytest.raises(ValueError, match="one of"):
        make("dpp")
