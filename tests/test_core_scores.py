"""Scores: exact small cases by hand, properties, and comparisons with the slow dense definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sparke
from sparke.core.kernels import kernel_matrix

SCORES = [sparke.rke, sparke.vendi]
COND_SCORES = [sparke.cond_rke, sparke.cond_vendi]


def dense_entropies(k: torch.Tensor) -> tuple[float, float]:
    """(H1, H2) of a kernel matrix by its definition: eigenvalues of K / trace(K)."""
    lam = torch.linalg.eigvalsh(k.double() / torch.trace(k.double())).clamp_min(0)
    h1 = float(-(lam[lam > 0] * lam[lam > 0].log()).sum())
    h2 = float(-torch.log((lam**2).sum()))
    return h1, h2


def test_two_points_by_hand():
    # k(a, b) = exp(-|a-b|^2 / 2) = exp(-2) for two points at distance 2; K~ = [[1, e][e, 1]] / 2
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    e = math.exp(-2.0)
    assert sparke.rke(x, sigma=1.0) == pytest.approx(4.0 / (2 + 2 * e * e), rel=1e-12)
    lam = np.array([(1 + e) / 2, (1 - e) / 2])
    assert sparke.vendi(x, sigma=1.0) == pytest.approx(math.exp(-(lam * np.log(lam)).sum()), rel=1e-12)
    # cosine of orthogonal vectors is 0: two fully distinct samples
    assert sparke.rke(x + torch.tensor([[1.0, 0.0], [0.0, 1.0]]) - x, kernel="cosine") == pytest.approx(2.0)


def test_conditional_by_hand():
    # two images at distance 2, prompts at distance 1: K_y entry exp(-1/2), joint entry exp(-2) exp(-1/2)
    x = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    ky, kx = math.exp(-0.5), math.exp(-2.0)
    expected = (2 + 2 * ky**2) / (2 + 2 * (kx * ky) ** 2)
    assert sparke.cond_rke(x, y, sigma_image=1.0, sigma_prompt=1.0) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
def test_scores_match_dense_definitions(kernel):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    kx, ky = kernel_matrix(x, kernel, 1.3), kernel_matrix(y, kernel, 0.7)
    h1x, h2x = dense_entropies(kx)
    h1y, h2y = dense_entropies(ky)
    h1j, h2j = dense_entropies(kx * ky)
    assert sparke.rke(x, kernel=kernel, sigma=1.3) == pytest.approx(math.exp(h2x), rel=1e-9)
    assert sparke.vendi(x, kernel=kernel, sigma=1.3) == pytest.approx(math.exp(h1x), rel=1e-9)
    kw = dict(kernel=kernel, sigma_image=1.3, sigma_prompt=0.7)
    assert sparke.cond_rke(x, y, **kw) == pytest.approx(math.exp(h2j - h2y), rel=1e-9)
    assert sparke.cond_vendi(x, y, **kw) == pytest.approx(math.exp(h1j - h1y), rel=1e-9)


def test_cosine_cond_vendi_dual_equals_dense():
    # d * e = 6 < n = 50 takes the dual of the outer-product features
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    h1j, _ = dense_entropies(kernel_matrix(x, "cosine", 1) * kernel_matrix(y, "cosine", 1))
    h1y, _ = dense_entropies(kernel_matrix(y, "cosine", 1))
    assert sparke.cond_vendi(x, y, kernel="cosine") == pytest.approx(math.exp(h1j - h1y), rel=1e-9)


def test_blockwise_equals_one_block(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 5, generator=gen, dtype=torch.float64)
    whole = sparke.rke(x)
    import sparke.core.kernels as kernels

    monkeypatch.setattr(kernels, "DEFAULT_BLOCK", 7)
    monkeypatch.setattr(
        kernels.squared_kernel_sum, "__kwdefaults__", {"same": False, "block": 7, "sigma_prompt": 0.3}
    )
    assert sparke.rke(x) == pytest.approx(whole, rel=1e-12)


def test_in_batch_similarity():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    c = 1 / math.sqrt(2)
    assert sparke.in_batch_similarity(x) == pytest.approx((0 + c + c) / 3, rel=1e-6)
    assert sparke.in_batch_similarity(np.ones((4, 3))) == pytest.approx(1.0)


@pytest.mark.parametrize("score", [sparke.rke, sparke.vendi, sparke.in_batch_similarity])
def test_single_sample_gives_one(score):
    assert score(torch.tensor([[0.3, -2.0, 1.0]])) == pytest.approx(1.0)


@pytest.mark.parametrize("score", COND_SCORES)
def test_single_sample_gives_one_conditional(score):
    assert score(torch.tensor([[0.3, 1.0]]), torch.tensor([[1.0]])) == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_any_float_dtype_and_numpy(dtype):
    x = torch.tensor([[0.0, 0.0], [1.0, 0.5], [2.0, -1.0]])
    reference = sparke.rke(x.double(), sigma=0.9)
    assert sparke.rke(x.to(dtype), sigma=0.9) == pytest.approx(reference, rel=1e-5)
    assert sparke.rke(x.numpy(), sigma=0.9) == pytest.approx(reference, rel=1e-6)


finite = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 12), st.integers(1, 4)), elements=finite), st.randoms())
def test_permutation_invariance_and_range(x, rnd):
    order = list(range(x.shape[0]))
    rnd.shuffle(order)
    n = x.shape[0]
    for score in SCORES:
        value = score(x, sigma=0.7)
        assert score(x[order], sigma=0.7) == pytest.approx(value, rel=1e-9)
        assert 1 - 1e-9 <= value <= n + 1e-9


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 10), st.integers(1, 5), st.floats(0.1, 5))
def test_duplicates_give_one_far_points_give_n(n, d, sigma):
    point = torch.randn(1, d, dtype=torch.float64)
    duplicates = point.repeat(n, 1)
    far = torch.eye(n, max(n, d), dtype=torch.float64) * 1e3 * sigma
    for score in SCORES:
        assert score(duplicates, sigma=sigma) == pytest.approx(1.0, rel=1e-9)
        assert score(far, sigma=sigma) == pytest.approx(n, rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 10), st.integers(1, 4)), elements=finite))
def test_same_prompt_everywhere_gives_unconditional(x):
    y = np.ones((x.shape[0], 3))
    assert sparke.cond_rke(x, y, sigma_image=0.8) == pytest.approx(sparke.rke(x, sigma=0.8), rel=1e-9)
    assert sparke.cond_vendi(x, y, sigma_image=0.8) == pytest.approx(sparke.vendi(x, sigma=0.8), rel=1e-7)


def test_unrelated_prompts_do_not_compare():
    # identical images under far-apart prompts: no pair counts, so Cond-RKE is 1 (nothing redundant)
    x = torch.zeros(5, 2, dtype=torch.float64)
    y = torch.eye(5, dtype=torch.float64) * 100
    assert sparke.cond_rke(x, y) == pytest.approx(1.0)
    assert sparke.rke(x) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: sparke.rke(torch.zeros(3)), "x"),
        (lambda: sparke.rke(torch.zeros(0, 3)), "x"),
        (lambda: sparke.rke(torch.tensor([[1.0, float("nan")]])), "x"),
        (lambda: sparke.vendi(torch.tensor([[1.0, float("inf")]])), "x"),
        (lambda: sparke.rke(torch.ones(2, 2), sigma=0), "sigma"),
        (lambda: sparke.rke(torch.ones(2, 2), sigma=-1.0), "sigma"),
        (lambda: sparke.rke(torch.ones(2, 2), kernel="laplace"), "kernel"),
        (lambda: sparke.cond_rke(torch.ones(3, 2), torch.ones(2, 2)), "y"),
        (lambda: sparke.cond_vendi(torch.ones(2, 2), torch.ones(2, 2), sigma_prompt=0), "sigma_prompt"),
        (
            lambda: sparke.cond_rke(torch.ones(2, 2), torch.ones(2, 2), sigma_image=float("nan")),
            "sigma_image",
        ),
        (lambda: sparke.rke(torch.zeros(2, 2), kernel="cosine"), "x"),
        (lambda: sparke.in_batch_similarity(torch.zeros(2, 2)), "x"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


def test_exact_vendi_refuses_beyond_its_limit(monkeypatch):
    import sparke.core.scores as scores

    monkeypatch.setattr(scores, "MAX_DENSE_ROWS", 8)
    x, y = torch.randn(9, 4), torch.randn(9, 3)  # d * e = 12 >= n: the dense 9 x 9 path
    with pytest.raises(ValueError, match="beyond the limit of 8"):
        sparke.vendi(x)
    with pytest.raises(ValueError, match="beyond the limit of 8"):
        sparke.cond_vendi(x, y, kernel="cosine")
    assert sparke.vendi(x, kernel="cosine") > 1  # d x d dual: 4 x 4
