"""The SPARKE guidance direction: the gradient of a log diversity score with respect to a new batch.

For the order-2 scores the gradient is analytic. With F = sum_ij k_x(z_i, z_j)^2 w_ij over the bank and the
batch together (w_ij = k_y(y_i, y_j)^2 for Cond-RKE, 1 for RKE), log S = const - log F, and for a batch row b

    grad_b log S = -grad_b F / F,    grad_b F = 4 sum_j w_bj k_bj grad_b k_bj,

so only the kernel rows that touch the batch are needed: one pass over the bank for the kernel rows and one
for their weighted sum, O((n + B) d) time. The constant F_bank = sum over bank pairs enters only as the
normaliser: a ``Bank`` keeps it up to date as rows arrive (``Bank.direction``); given raw bank tensors it is
computed exactly when that is cheap and otherwise estimated from random pairs, which rescales every row of
the direction by the same factor and never changes where it points.

The order-1 objectives (Vendi, Cond-Vendi) are the paper's O(n^3) baselines: autograd through an
eigendecomposition of the whole (n + B) x (n + B) kernel matrix.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ._checks import (
    as_features,
    check_kernel,
    check_nonzero_rows,
    check_objective,
    check_rows_match,
    check_sigma,
)
from .fast import order2_direction
from .kernels import kernel_matrix, squared_distances, squared_kernel_sum, unit_rows
from .scores import von_neumann_entropy

Array = torch.Tensor | np.ndarray

# Bank rows read per chunk: bounds the extra memory to a B x CHUNK kernel block.
CHUNK = 8192
# Above this many multiply-adds, the bank's own pair sum is estimated rather than computed (see module doc).
EXACT_PAIR_SUM_BUDGET = 2**36
ESTIMATE_PAIRS = 2**16


def _bank_rows(value, name: str, like: torch.Tensor, columns: int) -> torch.Tensor:
    """A bank tensor as given (no copy, no dtype change): bank rows are read once per chunk, not converted.

    Finiteness is checked after the fact, only if the result is not finite (see ``_check_finite_result``).
    """
    if value is None:
        return like.new_zeros((0, columns))
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}")
    if value.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows = samples), got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        value = value.to(like.dtype)
    if value.shape[1] != columns:
        raise ValueError(f"{name}: has {value.shape[1]} feature columns but the batch has {columns}")
    return value.to(like.device)


def _validate(x, y, bank_x, bank_y, objective, kernel, sigma_x, sigma_y):
    check_objective(objective)
    check_kernel(kernel)
    sigma_x, sigma_y = check_sigma(sigma_x, "sigma_x"), check_sigma(sigma_y, "sigma_y")
    conditional = objective.startswith("cond-")
    x = as_features(x, "x", device=x.device if isinstance(x, torch.Tensor) else None)
    bank_x = _bank_rows(bank_x, "bank_x", x, x.shape[1])
    if kernel == "cosine":
        check_nonzero_rows(x, "x")
    if not conditional:
        return x, None, bank_x, None, sigma_x, sigma_y
    if y is None:
        raise ValueError(f"y: the {objective!r} objective needs prompt features for the batch")
    y = as_features(y, "y", dtype=x.dtype, device=x.device)
    check_rows_match(x, y, "x", "y")
    if bank_y is None and bank_x.shape[0]:
        raise ValueError(f"bank_y: the {objective!r} objective needs prompt features for the bank rows")
    bank_y = _bank_rows(bank_y, "bank_y", y, y.shape[1])
    check_rows_match(bank_x, bank_y, "bank_x", "bank_y")
    if kernel == "cosine":
        check_nonzero_rows(y, "y")
    return x, y, bank_x, bank_y, sigma_x, sigma_y


def _check_finite_result(result: torch.Tensor, named: dict[str, torch.Tensor | None], kernel: str) -> None:
    """Name the bank input that made the result non-finite (bank rows are not scanned up front)."""
    if bool(torch.isfinite(result).all()):
        return
    for name, value in named.items():
        if value is None:
            continue
        for start in range(0, value.shape[0], CHUNK):
            rows = value[start : start + CHUNK]
            if not bool(torch.isfinite(rows).all()):
                raise ValueError(f"{name}: contains NaN or Inf values")
            if kernel == "cosine" and bool((torch.linalg.vector_norm(rows.float(), dim=1) == 0).any()):
                raise ValueError(f"{name}: the cosine kernel needs non-zero rows, found an all-zero row")
    raise FloatingPointError("diversity_direction: the direction overflowed although every input is finite")


def bank_pair_sum(
    bank_x: torch.Tensor,
    bank_y: torch.Tensor | None,
    *,
    kernel: str,
    sigma_x: float,
    sigma_y: float,
    max_work: int | None = None,
) -> tuple[float, bool]:
    """sum over bank pairs of k_x^2 (times k_y^2): exact when n^2 d <= max_work (default 2^36), else a random-pair estimate.

    Returns (value, exact).
    """
    n, d = bank_x.shape
    max_work = EXACT_PAIR_SUM_BUDGET if max_work is None else max_work
    if n == 0:
        return 0.0, True
    if bank_x.dtype in (torch.float16, torch.bfloat16):
        bank_x = bank_x.float()
        bank_y = None if bank_y is None else bank_y.float()
    if n * n * d <= max_work:
        value = squared_kernel_sum(
            bank_x, bank_x, bank_y, bank_y, kernel=kernel, sigma_x=sigma_x, sigma_y=sigma_y, same=True
        )
        return value, True
    # The n diagonal terms are exactly 1; the off-diagonal mean comes from random pairs (seeded: repeatable).
    gen = torch.Generator().manual_seed(0)
    i = torch.randint(0, n, (ESTIMATE_PAIRS,), generator=gen)
    j = (i + torch.randint(1, n, (ESTIMATE_PAIRS,), generator=gen)) % n
    i, j = i.to(bank_x.device), j.to(bank_x.device)
    terms = _paired_squared_kernel(bank_x[i], bank_x[j], kernel, sigma_x)
    if bank_y is not None:
        terms = terms * _paired_squared_kernel(bank_y[i], bank_y[j], kernel, sigma_y)
    return float(n + n * (n - 1) * terms.double().mean()), False


def _paired_squared_kernel(a: torch.Tensor, b: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    if kernel == "gaussian":
        return torch.exp(-(a - b).pow(2).sum(1) / (sigma * sigma))
    return (unit_rows(a) * unit_rows(b)).sum(1).square()


def _order2_terms(x, y, rows_x, rows_y, kernel, sigma_x, sigma_y, same=False):
    """Per batch row, against ``rows``: (sum_j c_bj, sum_j a_bj r_j, sum_j k_bj^2 w_bj).

    Gaussian: a = c = k^2 w with the raw rows r; cosine: a = k w, c = k^2 w with unit rows r.
    ``same`` says rows are the batch itself: the diagonal is then exactly k = w = 1.
    """
    if kernel == "gaussian":
        log_sq = squared_distances(x, rows_x) / (-sigma_x * sigma_x)
        if y is not None:
            log_sq += squared_distances(y, rows_y) / (-sigma_y * sigma_y)
        if same:
            log_sq.diagonal().fill_(0.0)
        a = torch.exp(log_sq)
        return a.sum(1), a @ rows_x, a.sum(1)
    units = unit_rows(rows_x)
    k = unit_rows(x) @ units.T
    w = (unit_rows(y) @ unit_rows(rows_y).T).square() if y is not None else torch.ones_like(k)
    if same:
        k.diagonal().fill_(1.0)
        w.diagonal().fill_(1.0)
    a = k * w
    c = (a * k).sum(1)
    return c, a @ units, c


def _order2_direction(x, y, bank_x, bank_y, kernel, sigma_x, sigma_y, pair_sum):
    """Two products over the bank (``fast.order2_direction``); bank rows stay in their storage type."""
    return order2_direction(
        x, y, bank_x, bank_y, kernel=kernel, sigma_x=sigma_x, sigma_y=sigma_y, pair_sum=pair_sum
    )


def _order1_direction(x, y, bank_x, bank_y, kernel, sigma_x, sigma_y):
    with torch.enable_grad():
        batch = x.detach().clone().requires_grad_(True)
        k = kernel_matrix(torch.cat([bank_x, batch]), kernel, sigma_x)
        if y is not None:
            k = k * kernel_matrix(torch.cat([bank_y, y]), kernel, sigma_y)
        entropy = von_neumann_entropy(torch.linalg.eigvalsh(k / k.shape[0]))
        (grad,) = torch.autograd.grad(entropy, batch)
    return grad


def diversity_direction(
    x: Array,
    y: Array | None,
    bank_x: Array | None,
    bank_y: Array | None,
    *,
    objective: str = "cond-rke",
    kernel: str = "gaussian",
    sigma_x: float = 1.0,
    sigma_y: float = 1.0,
    pair_sum: float | None = None,
) -> torch.Tensor:
    """Gradient of log S(bank U batch) with respect to the batch rows x: (B, d) -> (B, d), an ascent direction.

    S is ``objective`` ("rke", "vendi", "cond-rke" or "cond-vendi") computed on the bank rows followed by the
    batch rows; y: (B, e) and bank_y: (n, e) are prompt features (None for the unconditional objectives);
    bank_x: (n, d), n may be 0. Each batch row is pushed away from the bank and from the rest of its batch.

    Order 2 costs O((n + B) d). ``pair_sum`` is the bank's own sum of squared (joint) kernel entries, the
    normaliser of the gradient: ``Bank.direction`` passes the value it keeps; when omitted it is computed,
    exactly if n^2 d <= 2^36 and otherwise estimated (same direction, magnitude within about 1%).
    """
    x, y, bank_x, bank_y, sigma_x, sigma_y = _validate(
        x, y, bank_x, bank_y, objective, kernel, sigma_x, sigma_y
    )
    if objective in ("vendi", "cond-vendi"):
        bank_x = bank_x.to(x.dtype)
        bank_y = None if bank_y is None else bank_y.to(x.dtype)
        result = _order1_direction(x, y, bank_x, bank_y, kernel, sigma_x, sigma_y)
        _check_finite_result(result, {"bank_x": bank_x, "bank_y": bank_y}, kernel)
        return result
    if pair_sum is None:
        pair_sum, exact = bank_pair_sum(bank_x, bank_y, kernel=kernel, sigma_x=sigma_x, sigma_y=sigma_y)
        if not exact:
            warnings.warn(
                "diversity_direction: the bank's pair sum was estimated from random pairs (the magnitude of "
                "the direction is approximate, its direction exact); pass a sparke.Bank or pair_sum= to avoid "
                "this",
                stacklevel=2,
            )
    result = _order2_direction(x, y, bank_x, bank_y, kernel, sigma_x, sigma_y, float(pair_sum))
    _check_finite_result(result, {"bank_x": bank_x, "bank_y": bank_y}, kernel)
    return result


def novelty_direction(
    x: Array,
    y: Array | None,
    ref_x: Array,
    ref_y: Array | None,
    *,
    kernel: str = "gaussian",
    sigma_x: float = 1.0,
    sigma_y: float = 1.0,
) -> torch.Tensor:
    """Ascent direction of -log(mean_i k_x(x_b, r_i)^2 k_y(y_b, s_i)^2) for each row of x: (B, d) -> (B, d).

    Pushes each sample away from the reference rows ref_x: (m, d), weighted by prompt similarity when both
    y: (B, e) and ref_y: (m, e) are given. Computed as a softmax over the reference rows, so it stays finite
    when every kernel value underflows.
    """
    check_kernel(kernel)
    sigma_x, sigma_y = check_sigma(sigma_x, "sigma_x"), check_sigma(sigma_y, "sigma_y")
    x = as_features(x, "x", device=x.device if isinstance(x, torch.Tensor) else None)
    ref_x = as_features(ref_x, "ref_x", dtype=x.dtype, device=x.device)
    if ref_x.shape[1] != x.shape[1]:
        raise ValueError(f"ref_x: has {ref_x.shape[1]} feature columns but x has {x.shape[1]}")
    weighted = y is not None and ref_y is not None
    if weighted:
        y = as_features(y, "y", dtype=x.dtype, device=x.device)
        ref_y = as_features(ref_y, "ref_y", dtype=x.dtype, device=x.device)
        check_rows_match(x, y, "x", "y")
        check_rows_match(ref_x, ref_y, "ref_x", "ref_y")
        if ref_y.shape[1] != y.shape[1]:
            raise ValueError(f"ref_y: has {ref_y.shape[1]} feature columns but y has {y.shape[1]}")
    if kernel == "gaussian":
        log_terms = squared_distances(x, ref_x) / (-sigma_x * sigma_x)
        if weighted:
            log_terms = log_terms + squared_distances(y, ref_y) / (-sigma_y * sigma_y)
        # grad log mean_i exp(l_i) = sum_i softmax(l)_i grad l_i, grad l_i = -2 (x - r_i) / sigma^2
        p = torch.softmax(log_terms, dim=1)
        return (2.0 / (sigma_x * sigma_x)) * (x - p @ ref_x)
    check_nonzero_rows(x, "x")
    check_nonzero_rows(ref_x, "ref_x")
    units = unit_rows(ref_x)
    k = unit_rows(x) @ units.T
    w = (unit_rows(y) @ unit_rows(ref_y).T).square() if weighted else torch.ones_like(k)
    mean_sq = (w * k * k).mean(1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    # grad k(x, r) = (u_r - k u_x) / |x|
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    grad_mean = (2.0 / norms) * ((w * k) @ units - (w * k * k).sum(1, keepdim=True) * unit_rows(x))
    grad_mean = grad_mean / k.shape[1]
    return -grad_mean / mean_sq
