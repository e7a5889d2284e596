"""The guidance direction against dense float64 autograd of its definition, and its bad-input errors."""

from __future__ import annotations

import pytest
import torch

import sparke
from sparke.core.kernels import kernel_matrix
from sparke.core.scores import von_neumann_entropy

OBJECTIVES = ["rke", "cond-rke", "vendi", "cond-vendi"]


def dense_log_score(x, y, objective, kernel, sigma_x, sigma_y):
    """log S of the rows x (with prompts y) straight from the definitions, differentiable."""
    n = x.shape[0]
    k = kernel_matrix(x, kernel, sigma_x)
    k_y = kernel_matrix(y, kernel, sigma_y) if objective.startswith("cond-") else None
    joint = k if k_y is None else k * k_y
    if objective.endswith("rke"):
        value = -torch.log(((joint / n) ** 2).sum())
        return value if k_y is None else value + torch.log(((k_y / n) ** 2).sum())
    value = von_neumann_entropy(torch.linalg.eigvalsh(joint / n))
    return value if k_y is None else value - von_neumann_entropy(torch.linalg.eigvalsh(k_y / n))


def reference(x, y, bank_x, bank_y, objective, kernel, sigma_x, sigma_y):
    batch = x.clone().requires_grad_(True)
    all_y = torch.cat([bank_y, y]) if y is not None else None
    value = dense_log_score(torch.cat([bank_x, batch]), all_y, objective, kernel, sigma_x, sigma_y)
    (grad,) = torch.autograd.grad(value, batch)
    return grad


def data(n, batch, d=5, e=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    return rand(batch, d) * 0.5, rand(batch, e) * 0.3, rand(n, d) * 0.5, rand(n, e) * 0.3


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
@pytest.mark.parametrize(("n", "batch"), [(0, 1), (0, 3), (9, 1), (20, 4)])
def test_matches_dense_autograd(objective, kernel, n, batch):
    x, y, bank_x, bank_y = data(n, batch)
    kw = dict(objective=objective, kernel=kernel, sigma_image=0.8, sigma_prompt=0.6)
    expected = reference(x, y, bank_x, bank_y, objective, kernel, 0.8, 0.6)
    got = sparke.diversity_direction(x, y, bank_x, bank_y, **kw)
    assert got.shape == x.shape
    if batch == 1 and n == 0:
        assert torch.allclose(got, torch.zeros_like(got), atol=1e-12)
        return
    assert torch.linalg.norm(got - expected) <= 1e-6 * torch.linalg.norm(expected)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_bank_object_matches_dense_autograd(objective):
    x, y, bank_x, bank_y = data(30, 3, seed=4)
    bank = sparke.Bank(dtype=torch.float64)
    conditional = objective.startswith("cond-")
    bank.add(bank_x[:11], bank_y[:11] if conditional else None)
    bank.add(bank_x[11:], bank_y[11:] if conditional else None)
    got = bank.direction(x, y, objective=objective, sigma_image=0.8, sigma_prompt=0.6)
    expected = reference(x, y, bank_x, bank_y, objective, "gaussian", 0.8, 0.6)
    assert torch.linalg.norm(got - expected) <= 1e-6 * torch.linalg.norm(expected)


def test_kept_normaliser_survives_eviction():
    x, y, bank_x, bank_y = data(40, 2, seed=5)
    bank = sparke.Bank(capacity=16, dtype=torch.float64)
    bank.add(bank_x[:10], bank_y[:10])
    bank.direction(x, y, sigma_image=0.8, sigma_prompt=0.6)  # starts keeping the pair sum
    for start in range(10, 40, 7):
        bank.add(bank_x[start : start + 7], bank_y[start : start + 7])
    got = bank.direction(x, y, sigma_image=0.8, sigma_prompt=0.6)
    expected = reference(x, y, bank_x[-16:], bank_y[-16:], "cond-rke", "gaussian", 0.8, 0.6)
    assert torch.linalg.norm(got - expected) <= 1e-9 * torch.linalg.norm(expected)


def test_estimated_normaliser_keeps_the_direction(monkeypatch):
    import sparke.core.direction as direction

    x, y, bank_x, bank_y = data(200, 3, seed=6)
    exact = sparke.diversity_direction(x, y, bank_x, bank_y, sigma_image=0.8, sigma_prompt=0.6)
    monkeypatch.setattr(direction, "EXACT_PAIR_SUM_BUDGET", 10)
    with pytest.warns(UserWarning, match="estimated"):
        estimate = sparke.diversity_direction(x, y, bank_x, bank_y, sigma_image=0.8, sigma_prompt=0.6)
    cosine = torch.nn.functional.cosine_similarity(exact.flatten(), estimate.flatten(), dim=0)
    assert cosine > 1 - 1e-12
    assert torch.linalg.norm(estimate) == pytest.approx(float(torch.linalg.norm(exact)), rel=0.05)


def test_ascending_the_direction_raises_the_score():
    x, y, bank_x, bank_y = data(25, 4, seed=7)
    before = sparke.cond_rke(
        torch.cat([bank_x, x]), torch.cat([bank_y, y]), sigma_image=0.8, sigma_prompt=0.6
    )
    step = sparke.diversity_direction(x, y, bank_x, bank_y, sigma_image=0.8, sigma_prompt=0.6)
    after = sparke.cond_rke(
        torch.cat([bank_x, x + 1e-3 * step]), torch.cat([bank_y, y]), sigma_image=0.8, sigma_prompt=0.6
    )
    assert after > before


def test_float16_bank_float32_batch():
    x, y, bank_x, bank_y = data(50, 2, seed=8)
    exact = sparke.diversity_direction(x, y, bank_x, bank_y, sigma_image=0.8, sigma_prompt=0.6)
    half = sparke.diversity_direction(
        x.float(), y.float(), bank_x.half(), bank_y.half(), sigma_image=0.8, sigma_prompt=0.6
    )
    assert half.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(exact.flatten().float(), half.flatten(), dim=0) > 0.999


def test_novelty_pushes_away_from_reference():
    gen = torch.Generator().manual_seed(9)
    reference_rows = torch.randn(10, 4, generator=gen, dtype=torch.float64) * 0.2
    x = torch.randn(3, 4, generator=gen, dtype=torch.float64) * 0.2
    step = sparke.novelty_direction(x, None, reference_rows, None, sigma_image=0.5)
    before = torch.cdist(x, reference_rows).min(1).values
    after = torch.cdist(x + 1e-2 * step, reference_rows).mean(1)
    assert (after > torch.cdist(x, reference_rows).mean(1)).all()
    assert before.shape == (3,)


BAD = [
    (dict(x=torch.zeros(4)), "x"),
    (dict(x=torch.zeros(0, 5)), "x"),
    (dict(x=torch.full((2, 5), float("nan"))), "x"),
    (dict(y=torch.zeros(3, 3)), "y"),
    (dict(y=None), "y"),
    (dict(bank_x=torch.zeros(4, 6)), "bank_x"),
    (dict(bank_y=torch.zeros(3, 3)), "bank_y"),
    (dict(bank_y=None), "bank_y"),
    (dict(bank_y=torch.zeros(4, 2)), "bank_y"),
    (dict(bank_x=torch.full((4, 5), float("inf"))), "bank_x"),
    (dict(bank_y=torch.full((4, 3), float("nan"))), "bank_y"),
    (dict(sigma_image=0.0), "sigma_image"),
    (dict(sigma_prompt=-2.0), "sigma_prompt"),
    (dict(kernel="rbf"), "kernel"),
    (dict(objective="entropy"), "objective"),
]


@pytest.mark.parametrize(("override", "name"), BAD)
def test_bad_input_names_the_argument(override, name):
    args = dict(x=torch.zeros(2, 5), y=torch.zeros(2, 3), bank_x=torch.ones(4, 5), bank_y=torch.ones(4, 3))
    kwargs = {}
    for key, value in override.items():
        (args if key in args else kwargs)[key] = value
    with pytest.raises(ValueError, match=rf"^{name}:"):
        sparke.diversity_direction(args["x"], args["y"], args["bank_x"], args["bank_y"], **kwargs)


@pytest.mark.parametrize("objective", ["cond-rke", "cond-vendi"])
def test_skip_mode_equals_raise_mode_and_zeroes_a_nan_row(objective):
    x, y, bank_x, bank_y = data(30, 3, seed=11)
    kw = dict(objective=objective, sigma_image=0.8, sigma_prompt=0.6)
    raised = sparke.diversity_direction(x, y, bank_x, bank_y, **kw)
    skipped = torch.zeros((), dtype=torch.int64)
    got = sparke.diversity_direction(x, y, bank_x, bank_y, on_nonfinite="skip", skipped=skipped, **kw)
    assert torch.equal(got, raised) and int(skipped) == 0
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="^x:"):
        sparke.diversity_direction(bad, y, bank_x, bank_y, **kw)
    if objective == "cond-rke":  # order 2 is per row: the NaN row poisons only itself (Vendi: every row)
        got = sparke.diversity_direction(bad, y, bank_x, bank_y, on_nonfinite="skip", skipped=skipped, **kw)
        assert torch.equal(got[1], torch.zeros_like(got[1])) and int(skipped) == 1
        assert torch.isfinite(got).all() and (got[[0, 2]] != 0).all()
        clean = sparke.diversity_direction(x[[0, 2]], y[[0, 2]], bank_x, bank_y, **kw)
        torch.testing.assert_close(got[[0, 2]], clean, rtol=1e-12, atol=1e-14)
    else:
        got = sparke.diversity_direction(bad, y, bank_x, bank_y, on_nonfinite="skip", skipped=skipped, **kw)
        assert torch.equal(got, torch.zeros_like(got)) and int(skipped) == 3
    with pytest.raises(ValueError, match="^on_nonfinite:"):
        sparke.diversity_direction(x, y, bank_x, bank_y, on_nonfinite="ignore", **kw)


def test_chunked_pair_estimate_equals_its_definition(monkeypatch):
    import sparke.core.direction as direction

    gen = torch.Generator().manual_seed(3)
    bank_x, bank_y = torch.randn(300, 16, generator=gen) / 3, torch.randn(300, 4, generator=gen) / 2
    # the definition: the same seeded random pairs, every pair gathered at once
    g = torch.Generator().manual_seed(0)
    i = torch.randint(0, 300, (direction.ESTIMATE_PAIRS,), generator=g)
    j = (i + torch.randint(1, 300, (direction.ESTIMATE_PAIRS,), generator=g)) % 300
    terms = torch.exp(-(bank_x[i] - bank_x[j]).pow(2).sum(1) / 0.8**2)
    terms = terms * torch.exp(-(bank_y[i] - bank_y[j]).pow(2).sum(1) / 0.3**2)
    want = 300 + 300 * 299 * float(terms.double().mean())

    sizes = []
    paired = direction._paired_squared_kernel

    def spy(a, b, *args):
        sizes.append(a.shape[0])
        return paired(a, b, *args)

    monkeypatch.setattr(direction, "_paired_squared_kernel", spy)
    monkeypatch.setattr(direction, "PAIR_CHUNK_ELEMENTS", 20 * 50)  # 50 pairs of 16 + 4 columns per chunk
    got, exact = direction.bank_pair_sum(
        bank_x, bank_y, kernel="gaussian", sigma_image=0.8, sigma_prompt=0.3, max_work=0
    )
    assert not exact and got == pytest.approx(want, rel=1e-12)
    assert max(sizes) == 50 and sum(sizes) == 2 * direction.ESTIMATE_PAIRS  # x and y per chunk
