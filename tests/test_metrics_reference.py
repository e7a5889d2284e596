"""Reference-based metrics (PRDC, Fréchet distance) and the order-1/2 scores against the reference packages."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

import sparke
from sparke.core import kernel_matrix
from sparke.metrics import frechet_distance, manifold, prdc

KEYS = ("precision", "recall", "density", "coverage")


def _sets(dtype=np.float64, n_real=120, n_fake=90, d=8, seed=0):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(n_real, d)).astype(dtype)
    fake = (rng.normal(size=(n_fake, d)) * 1.3 + 0.4).astype(dtype)  # overlapping, not equal
    return real, fake


def _reference_prdc(real, fake, k):
    prdc_package = pytest.importorskip("prdc")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the row counts
        return {key: float(v) for key, v in prdc_package.compute_prdc(real, fake, k).items()}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 5])
def test_prdc_equals_the_prdc_package(dtype, k):
    real, fake = _sets(dtype)
    want = _reference_prdc(real, fake, k)
    got = prdc(torch.from_numpy(real), torch.from_numpy(fake), nearest_k=k)
    # counts of strict comparisons: equal unless a distance ties with a radius within rounding (not here)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1  # a case that tells the four apart


def test_prdc_in_small_chunks_equals_one_chunk(monkeypatch):
    real, fake = _sets(n_real=70, n_fake=50)
    whole = prdc(real, fake)
    monkeypatch.setattr(manifold, "CHUNK_ENTRIES", 7 * 70)  # 7 rows a chunk, a ragged last chunk
    assert prdc(real, fake) == whole
    assert whole == pytest.approx(_reference_prdc(real, fake, 5), abs=1e-12)  # density: (1/k) sum vs sum/k


def test_prdc_of_a_set_against_itself():
    real, _ = _sets()
    assert prdc(real, real) == {
        "precision": 1.0,
        "recall": 1.0,
        "density": pytest.approx(1.0, abs=0.5),
        "coverage": 1.0,
    }


@pytest.mark.parametrize(
    "real,fake,k,match",
    [
        (np.zeros((5, 3)), np.zeros((9, 3)), 5, "real: needs more than nearest_k=5"),
        (np.zeros((9, 3)), np.zeros((9, 4)), 5, "fake: has 4 feature columns"),
        (np.zeros((9, 3)), np.zeros((9, 3)), 0, "nearest_k"),
        (np.zeros((9, 3)), np.zeros((9, 3)), 2.5, "nearest_k"),
    ],
)
def test_prdc_bad_input(real, fake, k, match):
    with pytest.raises(ValueError, match=match):
        prdc(real, fake, k)


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
def test_vendi_and_rke_equal_vendi_score(kernel):
    """q = 1 is Vendi, q = 2 is RKE, on the same kernel matrix as the vendi-score package."""
    vendi_package = pytest.importorskip("vendi_score.vendi")
    x = torch.from_numpy(_sets(n_real=60, d=5, seed=3)[0])
    K = kernel_matrix(x, kernel, 0.9).numpy()
    for q, ours in ((1, sparke.vendi), (2, sparke.rke)):
        want = float(vendi_package.score_K(K, q=q))
        # the reference's eigenvalues carry float64 rounding, ~1e-12 relative; 1e-4 as the issue asks
        assert ours(x, kernel=kernel, sigma=0.9) == pytest.approx(want, rel=1e-4)


def test_exact_cosine_vendi_uses_the_dual_beyond_the_dense_limit():
    """n = 20,000 > MAX_DENSE_ROWS: the d x d dual of the cosine kernel still gives the exact score."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 6, generator=g, dtype=torch.float64)
    u = x / x.norm(dim=1, keepdim=True)
    # the primal spectrum: K/n = U U^T / n has the non-zero eigenvalues of U^T U / n
    eig = torch.linalg.eigvalsh(u.T @ u / 20_000)
    want = float(torch.exp(-(eig * eig.log()).sum()))
    assert sparke.vendi(x, kernel="cosine") == pytest.approx(want, rel=1e-10)


def test_frechet_distance_equals_the_closed_form():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    real, fake = _sets()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    s_r, s_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    want = ((mu_r - mu_f) ** 2).sum() + np.trace(s_r + s_f - 2 * scipy_linalg.sqrtm(s_r @ s_f).real)
    # eigvals of S_r S_f against scipy's sqrtm: float64 rounding of an 8 x 8 problem
    assert frechet_distance(real, fake) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_bad_input():
    with pytest.raises(ValueError, match="real: needs at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="fake: has 2 feature columns"):
        frechet_distance(np.ones((4, 3)), np.ones((4, 2)))


# -- the torchmetrics adapter ---------------------------------------------------------------------------------
def test_torchmetrics_prdc_equals_the_prdc_package_and_merges():
    tm = pytest.importorskip("sparke.metrics.torchmetrics")
    real, fake = (torch.from_numpy(a) for a in _sets())
    want = _reference_prdc(real.numpy(), fake.numpy(), 5)
    metric = tm.PRDC(nearest_k=5)
    metric.update(real[:50], real=True)
    metric.update(fake[:40], real=False)
    other = tm.PRDC(nearest_k=5)
    other.update(real[50:], real=True)
    other.update(fake[40:], real=False)
    metric.merge_state(other)
    got = metric.compute()
    assert set(got) == set(KEYS)
    for key in KEYS:
        assert got[key].dtype == torch.float64 and float(got[key]) == pytest.approx(want[key], abs=1e-6)
    with pytest.raises(ValueError, match="incoming_state"):
        metric.merge_state(tm.PRDC(nearest_k=3))


def test_torchmetrics_prdc_reset_and_checks():
    tm = pytest.importorskip("sparke.metrics.torchmetrics")
    real, fake = _sets()
    metric = tm.PRDC(nearest_k=5, reset_real_features=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    first = {k: float(v) for k, v in metric.compute().items()}
    metric.reset()
    with pytest.raises(ValueError, match="fake_rows: no rows yet"):
        metric.compute()
    metric.update(fake, real=False)  # the real rows were kept
    assert {k: float(v) for k, v in metric.compute().items()} == first
    with pytest.raises(ValueError, match="features: has 3 feature columns, the earlier rows had 8"):
        metric.update(np.ones((4, 3)), real=False)
    only_real = tm.PRDC()
    only_real.update(real, real=True)
    with pytest.raises(ValueError, match="features: has 3 feature columns, the real rows had 8"):
        only_real.update(np.ones((4, 3)), real=False)
    with pytest.raises(ValueError, match="nearest_k"):
        tm.PRDC(nearest_k=0)
