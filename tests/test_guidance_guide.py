"""The guide base class and SPARKE's first contact: schedules, warnings, bank placement, the method table."""

from __future__ import annotations

import functools
import os
import warnings

import pytest
import torch

from sparke.core import Bank
from sparke.core.defaults import SIGMA_IMAGE, SIGMA_PROMPT
from sparke.guidance import SPARKE, Schedule, Update
from sparke.guidance import bank as guide_bank
from sparke.methods import METHODS, NAMES, make
from tiny_pipelines import call_kwargs, final_latents, tiny_sd

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@functools.cache
def _sd():
    return tiny_sd()


class SpyBank(Bank):
    """A Bank that records where it was asked to move, and stays on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[object, object]] = []

    def to(self, device=None, dtype=None):
        self.moves.append((torch.device(device) if device is not None else None, dtype))
        return self


@pytest.mark.parametrize(
    ("every", "window", "steps"), [(1, (0.0, 1.0), 4), (2, (0.0, 1.0), 5), (1, (0.0, 0.5), 5)]
)
def test_schedule_count_matches_the_guided_steps(every, window, steps):
    pipe = _sd()
    guide = SPARKE(scale=0.1, every=every, window=window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guide(pipe, **call_kwargs(pipe, steps=steps))
    assert guide.stats.guided == Schedule(every, window).count(steps)


def test_schedule_refuses_bad_values():
    for every, window in ((0, (0, 1)), (1.5, (0, 1)), (True, (0, 1)), (1, (0.7, 0.2)), (1, "ab")):
        with pytest.raises(ValueError, match=r"^(every|window):"):
            Schedule(every, window)


def test_weak_guidance_warns_once_naming_every():
    pipe = _sd()
    guide = SPARKE(scale=0.1, every=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guide(pipe, **call_kwargs(pipe, steps=5))
        guide(pipe, **call_kwargs(pipe, steps=5))
    weak = [w for w in caught if "denoising steps" in str(w.message)]
    assert len(weak) == 1 and "every" in str(weak[0].message) and "1 of 5" in str(weak[0].message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SPARKE(scale=0.0, every=10)(pipe, **call_kwargs(pipe, steps=5))  # unguided: nothing to warn about
    assert not [w for w in caught if "denoising steps" in str(w.message)]


@pytest.mark.parametrize("bank", ["bank.safetensors", os.path.join("runs", "x", "bank.safetensors")])
def test_a_path_is_refused_as_a_bank_with_a_hint(bank, tmp_path):
    with pytest.raises(ValueError, match=r"^bank: .*Bank\.load"):
        SPARKE(bank=bank)
    from pathlib import Path

    with pytest.raises(ValueError, match=r"^bank: .*Bank\.load"):
        SPARKE(bank=Path(tmp_path) / "b.safetensors")
    with pytest.raises(ValueError, match=r"^bank: a int lacks"):
        SPARKE(bank=3)


def test_first_contact_errors_at_construction():
    for kw, name in (
        (dict(sigma_image=float("inf")), "sigma_image"),
        (dict(sigma_prompt=0), "sigma_prompt"),
        (dict(scale=float("nan")), "scale"),
        (dict(scale=True), "scale"),
        (dict(kernel="laplace"), "kernel"),
        (dict(objective="dpp"), "objective"),
    ):
        with pytest.raises(ValueError, match=rf"^{name}"):
            SPARKE(**kw)


def test_default_bank_follows_the_pipeline(monkeypatch):
    pipe = _sd()
    guide = SPARKE(scale=0.1, every=1)
    assert guide.follows_pipeline and len(guide.bank) == 0
    guide(pipe, **call_kwargs(pipe))
    assert guide.bank.device == torch.device("cpu") and guide.bank.dtype == torch.float32
    # on CUDA the bank goes to the pipeline's device in half precision (the move itself is spied on)
    monkeypatch.setattr(guide_bank, "execution_device", lambda pipe: torch.device("cuda", 0))
    spy = SPARKE(scale=0.1, every=1)
    spy.bank = SpyBank()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spy(pipe, **call_kwargs(pipe))
    assert spy.bank.moves == [(torch.device("cuda", 0), torch.float16)]
    assert not [w for w in caught if "bank is on" in str(w.message)]


def test_a_users_bank_stays_and_a_device_mismatch_warns_once(monkeypatch):
    pipe = _sd()
    monkeypatch.setattr(guide_bank, "execution_device", lambda pipe: torch.device("cuda", 0))
    bank = SpyBank()
    guide = SPARKE(scale=0.1, every=1, bank=bank)
    assert not guide.follows_pipeline
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guide(pipe, **call_kwargs(pipe))
        guide(pipe, **call_kwargs(pipe, seed=1))
    mismatch = [w for w in caught if "bank is on" in str(w.message)]
    assert len(mismatch) == 1 and "bank.to('cuda:0')" in str(mismatch[0].message)
    assert bank.moves == [] and len(bank) == 4


def test_a_non_finite_sample_keeps_its_latents_and_the_others_move():
    pipe = _sd()
    kw = dict(prompt=["a photo of a cat", "a red car"], steps=3)
    vanilla = final_latents(pipe(**call_kwargs(pipe, **kw)))
    bank = Bank()

    def half_nan(x, y=None, **options):
        d = torch.ones_like(x)
        d[0] = float("nan")
        return d

    bank.direction = half_nan
    guide = SPARKE(scale=0.3, every=1, bank=bank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = final_latents(guide(pipe, **call_kwargs(pipe, **kw)))
    assert torch.equal(out[0], vanilla[0]) and not torch.equal(out[1], vanilla[1])
    assert guide.stats.skipped == 3 and guide.stats.guided == 3
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 1


def test_one_method_table_and_none_means_the_same_everywhere():
    assert NAMES == tuple(METHODS) == ("none", "sparke", "rke", "vendi", "cads", "pg", "interval", "spell")
    none = make("none")
    assert isinstance(none, SPARKE) and none.scale == 0.0 and len(none.bank) == 0
    pipe = _sd()
    vanilla = final_latents(pipe(**call_kwargs(pipe)))
    assert torch.equal(final_latents(none(pipe, **call_kwargs(pipe))), vanilla)
    assert len(none.bank) == 2  # it records, so a guided run can start from it
    with pytest.raises(ValueError, match="scale"):
        make("none", scale=0.1)
    # every default has one home: the constructor
    spec = METHODS["sparke"]
    guide = make("sparke")
    assert spec.default_scale == guide.scale
    assert spec.defaults["sigma_image"] == guide.sigma_image == SIGMA_IMAGE
    assert spec.defaults["sigma_prompt"] == guide.sigma_prompt == SIGMA_PROMPT
    assert spec.defaults["every"] == guide.every and tuple(spec.defaults["window"]) == guide.window
    for name in NAMES:
        assert METHODS[name].make().scale == METHODS[name].default_scale


def test_sparsity_gate_limits_guidance_to_samples_near_a_similar_image():
    pipe = _sd()
    kw = call_kwargs(pipe, ["a photo of a cat", "a photo of a dog"], num_images_per_prompt=2, steps=3)
    runs = {}
    for label, gate in (("off", 0.0), ("wide", 4.0), ("shut", 1e-6)):
        guide = SPARKE(scale=0.3, every=1, update=Update(gate=gate))
        out = []
        for seed in (0, 1):  # the second call has a bank
            kw["generator"] = torch.Generator().manual_seed(seed)
            out.append(final_latents(guide(pipe, **kw)))
        runs[label] = out
    kw["generator"] = torch.Generator().manual_seed(1)
    vanilla = final_latents(pipe(**kw))
    # unit features are at most 2 apart: a gate of 4 is always open, one of 1e-6 never
    assert all(torch.equal(a, b) for a, b in zip(runs["wide"], runs["off"], strict=True))
    assert torch.equal(runs["shut"][1], vanilla) and not torch.equal(runs["off"][1], vanilla)
    with pytest.raises(ValueError, match="^gate:"):
        SPARKE(update=Update(gate=-1.0))


def test_a_bank_from_another_feature_space_of_the_same_width_is_refused():
    """The latents and x0 of one model have the same width: the bank's own record of its space decides."""
    pipe = _sd()
    latent = SPARKE(scale=0.1, every=1, space="latent", update=Update.paper())
    latent(pipe, **call_kwargs(pipe))
    assert latent.bank.metadata["space"] == "latent"
    guide = SPARKE(scale=0.1, every=1, bank=latent.bank)  # x0, centred
    with pytest.raises(
        ValueError, match=r"^bank: bank in feature space 'latent', but this run guides in 'x0-centred'"
    ):
        guide(pipe, **call_kwargs(pipe, seed=1))
    same = SPARKE(scale=0.1, every=1, space="latent", update=Update.paper(), bank=latent.bank)
    same(pipe, **call_kwargs(pipe, seed=1))
    assert len(latent.bank) == 4
