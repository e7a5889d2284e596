"""SPARKE on tiny random-weight SD, SDXL, PixArt-Sigma, SD3, Flux, DiT and ControlNet-SD pipelines (offline)."""

from __future__ import annotations

import functools

import pytest
import torch

from sparke.core import Bank
from sparke.guidance import SPARKE, Update, attach
from sparke.guidance.filters import displacement, first_order_warp, layout_component, motion_component, warp
from sparke.guidance.update import cfg_direction
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


@pytest.mark.parametrize(
    "space",
    [{"motion": 0}, {"space": "latent", "centre": False, "motion": 0}],
    ids=["x0-centred", "paper-latent"],
)
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


class _Recording(SPARKE):
    """SPARKE that keeps, per guided step, its move (new - old latents, (b, D)), the latents' norms (b,) and that
    step's CFG line."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.moves: list[torch.Tensor] = []
        self.lines: list[torch.Tensor | None] = []
        self.norms: list[torch.Tensor] = []

    def on_step(self, step):
        new = super().on_step(step)
        if new is not None:
            b = new.shape[0] // 2 if step.latents.shape[0] != self.batch else new.shape[0]
            self.moves.append((new[:b].float() - step.latents[:b].float()).flatten(1))
            self.lines.append(cfg_direction(self._denoised, step.latents[:b]))
            self.norms.append(step.latents[:b].float().flatten(1).norm(dim=1))
        return new


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.mark.parametrize("name", NAMES)
def test_orthogonal_step_has_no_component_along_the_cfg_direction(name):
    """Every sample's move is orthogonal to its step's cond - uncond; Flux runs no CFG batch: the plain step."""
    pipe = _pipe(name)
    plain = _Recording(
        scale=0.3, every=1, motion=0
    )  # the plain gradient step, then without its CFG component
    ortho = _Recording(scale=0.3, every=1, motion=0, orthogonal=True)
    out_p, _ = _run(pipe, plain)
    out_o, _ = _run(pipe, ortho)
    assert ortho.stats.guided == 3 and len(ortho.moves) == 3
    if name == "flux":  # guidance-distilled: one conditional batch, nothing to project on
        assert all(line is None for line in ortho.lines)
        assert torch.equal(final_latents(out_o), final_latents(out_p))
        return
    moved = 0
    for move, line in zip(ortho.moves, ortho.lines, strict=True):
        assert line is not None and (line.norm(dim=1) > 0).all()
        rows = move.norm(dim=1) > 0  # DiT's class labels are far apart: a sample may have nothing to repel
        moved += int(rows.sum())
        # float32 rounding of a projection over D <= 4,096 entries: |cos| ~ 1e-6 at most, not the plain
        # step's (checked below) of order 1e-2 and more
        assert _cosines(move[rows], line[rows]).abs().max() < 1e-4
    assert moved > 0
    plain_cos = [
        _cosines(m[m.norm(dim=1) > 0], c[m.norm(dim=1) > 0]).abs().max()
        for m, c in zip(plain.moves, ortho.lines, strict=True)
    ]
    assert max(plain_cos) > 1e-3  # the plain step does have a CFG component: the projection removed something
    assert not torch.equal(final_latents(out_o), final_latents(out_p))


def test_orthogonal_falls_back_to_the_plain_step_without_cfg():
    """guidance_scale 1: SD runs the conditional batch only; orthogonal=True is then exactly the plain step."""
    pipe = _pipe("sd")
    out_p, _ = _run(pipe, SPARKE(scale=0.3, every=1, update=Update(motion=0)), guidance_scale=1.0)
    ortho = _Recording(scale=0.3, every=1, motion=0, orthogonal=True)
    out_o, _ = _run(pipe, ortho, guidance_scale=1.0)
    assert ortho.lines and all(line is None for line in ortho.lines)
    assert torch.equal(final_latents(out_o), final_latents(out_p))


@pytest.mark.parametrize(
    "option",
    [
        {"centre": 0.5},
        {"crowding": 0.5},
        {"motion": 1.0},
        {"motion": "global"},
        {"motion": 1.0, "warp": True},
    ],
    ids=["centre-0.5", "crowding", "motion", "motion-global", "motion-warp"],
)
@pytest.mark.parametrize("name", NAMES)
def test_step_options_run_on_every_pipeline(name, option):
    """Each option guides every step of every tiny pipeline; crowding leaves the first call (empty bank)
    exactly unguided and moves the second, whose bank holds the first call's images of the same prompts."""
    pipe = _pipe(name)
    guide = SPARKE(scale=0.3, every=1, **option)
    out_1, _ = _run(pipe, guide, seed=0)
    vanilla_1, _ = _run(pipe, seed=0)
    assert guide.stats.guided == guide.stats.steps == 3
    crowding = "crowding" in option
    assert torch.equal(final_latents(out_1), final_latents(vanilla_1)) == crowding
    out_2, _ = _run(pipe, guide, seed=1)
    vanilla_2, _ = _run(pipe, seed=1)
    assert not torch.equal(final_latents(out_2), final_latents(vanilla_2))
    assert len(guide.bank) == 2 * len(PROMPTS) * PER


@pytest.mark.parametrize("warped", [False, True], ids=["first-order", "warp"])
@pytest.mark.parametrize("motion", [1.5, "global"])
@pytest.mark.parametrize("name", ["sd", "flux"])
def test_motion_step_is_the_motion_component_of_the_plain_gradient(name, motion, warped, monkeypatch):
    """Each guided move is scale * |z| times the unit motion (or layout) component of that step's gradient
    against the clean estimate, read in (B, C, H, W) (Flux: unpacked) and put back in the latents' layout; with
    warp=True, the clean estimate warped by the same displacement times that factor, minus itself."""
    import sparke.guidance.plugin as plugin

    calls = []

    def spy(g, image, how):
        v = displacement(g, image, how)
        calls.append((g, image, how, v))
        return v

    monkeypatch.setattr(plugin, "displacement", spy)
    pipe = _pipe(name)
    guide = _Recording(scale=0.3, every=1, motion=motion, warp=warped)
    _run(pipe, guide)
    assert guide.stats.guided == 3 and len(calls) == 3 == len(guide.moves)
    for (g, image, how, v), move, norms in zip(calls, guide.moves, guide.norms, strict=True):
        assert how == motion and g.ndim == image.ndim == 4 and g.shape == image.shape
        component = layout_component(g, image) if motion == "global" else motion_component(g, image, 1.5)
        # float32, the same operations in another order
        torch.testing.assert_close(first_order_warp(image, v), component, rtol=1e-4, atol=1e-6)
        factor = 0.3 * norms / component.flatten(1).norm(dim=1)
        expected = (
            warp(image, factor.view(-1, 1, 1, 1) * v) - image
            if warped
            else component * factor.view(-1, 1, 1, 1)
        )
        if name == "flux":  # the move is in the packed layout: pack the filter's output the pipeline's way
            expected = pipe._pack_latents(expected, *expected.shape)
        # float32 latents of norm ~10 moved by ~3: their difference keeps ~1e-6 of |z|
        torch.testing.assert_close(move, expected.flatten(1), rtol=0, atol=1e-4 * norms.max().item())
        if warped:  # not the first-order move: a real warp of a step this long differs from it
            first = (component * factor.view(-1, 1, 1, 1)).flatten(1)
            if name == "flux":
                first = pipe._pack_latents(component * factor.view(-1, 1, 1, 1), *component.shape).flatten(1)
            assert ((move - first).norm(dim=1) > 1e-3 * norms).all()
