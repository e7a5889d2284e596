"""``KernelSpec``: the score a bank computes, checked once and passed down whole (issue 17)."""

from __future__ import annotations

import pytest
import torch

import sparke
from sparke import Update
from sparke.core.spec import KernelSpec, as_spec


def rows(n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)


def test_checked_once_when_made():
    with pytest.raises(ValueError, match="objective"):
        KernelSpec(objective="entropy")
    with pytest.raises(ValueError, match="kernel"):
        KernelSpec(kernel="laplace")
    with pytest.raises(ValueError, match="sigma_image"):
        KernelSpec(sigma_image=0)
    with pytest.raises(ValueError, match="sigma_prompt"):
        KernelSpec().replace(sigma_prompt=float("nan"))
    spec = KernelSpec(sigma_image=1, sigma_prompt="0.5")
    assert spec.sigma_image == 1.0 and isinstance(spec.sigma_image, float) and spec.sigma_prompt == 0.5
    with pytest.raises(AttributeError):
        spec.kernel = "cosine"  # frozen: what was checked stays checked


def test_indexable_is_the_order2_gaussian_score_with_a_fixed_bandwidth():
    assert KernelSpec().indexable and KernelSpec(objective="rke").indexable
    assert not KernelSpec(kernel="cosine").indexable
    assert not KernelSpec(objective="cond-vendi").indexable
    assert not KernelSpec(sigma_image="median").indexable


def test_a_spec_or_its_keywords_give_the_same_direction():
    x, y, bx, by = rows(3, 8, 1), rows(3, 4, 2), rows(20, 8, 3), rows(20, 4, 4)
    spec = KernelSpec(objective="cond-rke", kernel="gaussian", sigma_image=0.6, sigma_prompt=0.4)
    for make in (sparke.Bank, lambda: sparke.AutoBank(crossover=10, neighbors=4, samples=4)):
        a, b = make(), make()
        a.add(bx, by)
        b.add(bx, by)
        assert torch.equal(a.direction(x, y, spec), b.direction(x, y, sigma_image=0.6, sigma_prompt=0.4))
    indexed = sparke.IndexedBank(8, 4, sigma_image=0.6, sigma_prompt=0.4, neighbors=4, samples=0)
    indexed.add(bx, by)
    assert torch.equal(indexed.direction(x, y, spec), indexed.direction(x, y))
    with pytest.raises(ValueError, match="sigma_image"):
        indexed.direction(x, y, spec.replace(sigma_image=0.7))


def test_spec_and_keywords_together_are_refused():
    with pytest.raises(TypeError, match="not both"):
        as_spec(KernelSpec(), {"kernel": "cosine"})
    with pytest.raises(TypeError, match="unexpected keyword"):
        as_spec(None, {"sigma": 0.5})
    assert as_spec(None, {"kernel": "cosine", "objective": None}) == KernelSpec(kernel="cosine")


def test_the_guide_keeps_one_spec_and_its_attributes_follow_it():
    guide = sparke.SPARKE(update=Update(kernel="cosine"), sigma_prompt=0.2)
    assert guide.spec == KernelSpec(kernel="cosine", sigma_prompt=0.2, on_nonfinite="skip")
    assert type(guide.bank) is sparke.Bank  # no index answers the cosine kernel: an exact bank from the start
    guide.sigma_image = 0.5
    assert guide.spec.sigma_image == 0.5 and guide.sigma_image == 0.5
    with pytest.raises(ValueError, match="sigma_image"):
        guide.sigma_image = -1
