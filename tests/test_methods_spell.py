"""SPELL (``sparke.methods.spell``): the repellency's exact value, its sparsity, the shield, and end to end."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from cli_helpers import cli, one_error_line
from sparke.core import Bank
from sparke.core.auto import AutoBank
from sparke.core.indexed import IndexedBank
from sparke.core.repel import ProjectedSearch, nearest_rows, sparse_repellency
from sparke.guidance import attach
from sparke.methods import METHODS, make
from sparke.methods.spell import SpellGuidance, load_shield
from tiny_pipelines import build, call_kwargs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _slow_push(x: torch.Tensor, refs: torch.Tensor, r: float) -> torch.Tensor:
    """The paper's sum, one term at a time, in float64."""
    out = torch.zeros_like(x, dtype=torch.float64)
    for b in range(x.shape[0]):
        for z in refs[b]:
            diff = x[b].double() - z.double()
            dist = diff.norm().item()
            if dist > 0:
                out[b] += max(r / dist - 1.0, 0.0) * diff
    return out


def test_repellency_equals_the_slow_definition():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=gen)
    refs = x.unsqueeze(1) + 0.6 * torch.randn(5, 9, 7, generator=gen)  # some inside r = 1.5, some not
    got = sparse_repellency(x, refs, 1.5)
    want = _slow_push(x, refs, 1.5)
    assert (want.abs().sum(1) > 0).all()  # every row has a reference inside its ball
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)  # float32 vs float64 sums
    shared = sparse_repellency(x, refs[0], 1.5)  # one (k, d) set for every row
    torch.testing.assert_close(
        shared.double(), _slow_push(x, refs[0].expand(5, -1, -1), 1.5), rtol=1e-5, atol=1e-5
    )


def test_zero_outside_every_ball_and_a_lone_reference_lands_past_the_edge():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=gen)
    far = x.unsqueeze(1) + 3.0 * torch.nn.functional.normalize(torch.randn(4, 5, 6, generator=gen), dim=2)
    # every reference 3 away (up to float32 rounding of the distance): outside a ball of 2.99, exactly 0
    assert torch.equal(sparse_repellency(x, far, 2.99), torch.zeros_like(x))
    assert (sparse_repellency(x, far, 3.1).norm(dim=1) > 0).all()
    assert torch.equal(sparse_repellency(x, x.unsqueeze(1), 1.0), torch.zeros_like(x))  # itself: skipped
    z = x + 0.5 * torch.nn.functional.normalize(torch.randn(4, 6, generator=gen), dim=1)  # d = 0.5 < r = 2
    lam, r, d = 1.6, 2.0, 0.5
    moved = x + lam * sparse_repellency(x, z.unsqueeze(1), r)
    dist = (moved - z).norm(dim=1)
    torch.testing.assert_close(dist, torch.full((4,), r + (lam - 1) * (r - d)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "exact-fp16", "auto", "indexed-flat", "indexed-faiss"])
def test_nearest_rows_match_brute_force(kind):
    gen = torch.Generator().manual_seed(2)
    rows = torch.randn(3000, 32, generator=gen)
    x = rows[:6] + 0.05 * torch.randn(6, 32, generator=gen)
    if kind.startswith("indexed"):
        pytest.importorskip("faiss")
        bank = IndexedBank(32, search="flat" if kind == "indexed-flat" else "faiss", search_dim=32)
    elif kind == "auto":
        bank = AutoBank()
    else:
        bank = Bank(dtype=torch.float16 if kind == "exact-fp16" else torch.float32)
    bank.add(rows)
    stored = bank.x.float()
    dist, near = nearest_rows(bank, x, 5)
    want_d, want_i = torch.cdist(x.double(), stored.double()).topk(5, dim=1, largest=False)
    torch.testing.assert_close(dist.double(), want_d, rtol=1e-4, atol=1e-4)  # cdist's float32 rounding
    torch.testing.assert_close(near, stored[want_i], rtol=0, atol=0)
    empty_d, empty_rows = nearest_rows(Bank(), x, 5)
    assert empty_d.shape == (6, 0) and empty_rows.shape == (6, 0, 32)


@functools.cache
def _sd():
    return build("sd")


def _final(pipe, guide=None, seed=0, steps=4):
    kw = call_kwargs(pipe, ["a photo of a cat", "a red car"], num_images_per_prompt=2, steps=steps, seed=seed)
    with attach(pipe) as run:
        guide(pipe, **kw) if guide is not None else pipe(**kw)
    return run.final_latents[:4].float()


def test_scale_zero_is_vanilla_and_default_changes_the_images():
    pipe = _sd()
    vanilla = _final(pipe)
    zero = SpellGuidance(scale=0.0)
    assert torch.equal(_final(pipe, zero), vanilla) and len(zero.bank) == 4
    guide = make("spell", scale=10.0)  # wider than the random model's spread (~6 per coordinate)
    first = _final(pipe, guide)
    assert not torch.equal(first, vanilla) and guide.pushed > 0
    second = _final(pipe, guide, seed=1)
    assert not torch.equal(second, _final(pipe, seed=1))
    torch.testing.assert_close(guide.bank.x, torch.cat([first, second]).flatten(1))


def test_shield_pushes_away_from_its_rows(tmp_path):
    pipe = _sd()
    vanilla = _final(pipe)
    shield = Bank()
    shield.add(vanilla.flatten(1))
    path = tmp_path / "shield.safetensors"
    shield.save(path)
    alone = SpellGuidance(scale=10.0, batch=False)
    assert torch.equal(_final(pipe, alone), vanilla)  # no batch, empty bank: nothing to push from
    shielded = SpellGuidance(scale=10.0, batch=False, shield=str(path))
    out = _final(pipe, shielded)
    assert shielded.pushed > 0
    d_before = torch.cdist(vanilla.flatten(1), vanilla.flatten(1)).diagonal()
    d_after = (out.flatten(1) - vanilla.flatten(1)).norm(dim=1)
    assert (d_after > d_before).all()  # each image moved away from its own shielded twin


def test_shield_refuses_sparke_banks_and_missing_files(tmp_path):
    unit = Bank()
    unit.add(torch.nn.functional.normalize(torch.randn(4, 8), dim=1))
    unit.save(tmp_path / "unit.safetensors")
    with pytest.raises(ValueError, match="unit-norm"):
        load_shield(tmp_path / "unit.safetensors")
    with pytest.raises(ValueError, match="no such bank file"):
        SpellGuidance(shield=str(tmp_path / "missing.safetensors"))
    assert METHODS["spell"].defaults["overcompensation"] == 1.6 and METHODS["spell"].default_scale == 0.3


@pytest.mark.parametrize("name", ["sdxl", "flux", "pixart"])
def test_spell_on_tiny_pipelines(name):
    pipe = build(name)
    kw = dict(num_images_per_prompt=2, steps=3, seed=0)
    with attach(pipe) as run:
        pipe(**call_kwargs(pipe, ["a photo of a cat"], **kw))
    vanilla = run.final_latents.float()
    guide = SpellGuidance(scale=10.0)
    with attach(pipe) as run:
        guide(pipe, **call_kwargs(pipe, ["a photo of a cat"], **kw))
    assert torch.isfinite(run.final_latents).all() and not torch.equal(run.final_latents.float(), vanilla)
    assert len(guide.bank) == 2


@pytest.mark.slow
def test_cli_spell_and_interval_change_the_embedded_models_images(tmp_path):
    from PIL import Image

    def images(method, *extra, out=None):
        out = out or tmp_path / method
        result = cli("generate", "-p", "a red circle", "-p", "a blue square", "-n", 2, "--steps", 4,
                     "--method", method, *extra, "--out", out)  # fmt: skip
        assert result.exit_code == 0, result.output
        return [np.asarray(Image.open(p)) for p in sorted((out / "images").glob("*.png"))]

    none = images("none")
    made = {}
    for method, extra in (("spell", ["--scale", 1.0]), ("interval", [])):
        made[method] = images(method, *extra)
        assert len(made[method]) == 4
        assert any(not np.array_equal(a, b) for a, b in zip(made[method], none, strict=True))
    bank = Bank.load(tmp_path / "spell" / "bank.safetensors")
    assert len(bank) == 4 and not math.isclose(float(bank.x[0].norm()), 1.0, rel_tol=1e-3)
    shield = tmp_path / "spell" / "bank.safetensors"
    shielded = images("spell", "--shield", shield, "--scale", 1.0, out=tmp_path / "shielded")
    assert any(not np.array_equal(a, b) for a, b in zip(shielded, made["spell"], strict=True))
    refused = cli("generate", "-p", "x", "--method", "spell", "--shield", tmp_path / "nope.safetensors",
                  "--out", tmp_path / "bad")  # fmt: skip
    assert "--shield" in one_error_line(refused) and not (tmp_path / "bad").exists()


def test_projected_search_finds_near_duplicates_and_is_exact_without_projection():
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(4000, 512, generator=gen).half()
    x = rows[:8].float() + 0.05 * torch.randn(8, 512, generator=gen)  # near-duplicates of rows 0..7
    dist, near = ProjectedSearch(rows, dim=32).search(x, 3)
    bank = Bank(dtype=torch.float16)
    bank.add(rows)
    want_d, want_rows = nearest_rows(bank, x, 3)
    torch.testing.assert_close(near[:, 0], rows[:8].float(), rtol=0, atol=0)  # each one's own twin
    # nearest_rows ranks with cdist's matrix-product distances (float32 cancellation, ~1e-4 relative)
    torch.testing.assert_close(dist[:, 0], want_d[:, 0], rtol=2e-4, atol=0)
    narrow = torch.randn(500, 16, generator=gen)  # d <= dim: no projection, an exact scan
    d_exact, r_exact = ProjectedSearch(narrow, dim=64).search(narrow[:4] + 0.3, 5)
    plain = Bank()
    plain.add(narrow)
    torch.testing.assert_close(r_exact, nearest_rows(plain, narrow[:4] + 0.3, 5)[1], rtol=0, atol=0)
