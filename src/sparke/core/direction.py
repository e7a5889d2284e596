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

from .checks import (
    as_features,
    as_stored_rows,
    check_bandwidths,
    check_finite_result,
    check_kernel,
    check_nonzero_rows,
    check_objective,
    check_on_nonfinite,
    check_rows_match,
    finite_rows,
    renamed_bandwidths,
    zero_nonfinite_rows,
)
from .defaults import KERNEL, OBJECTIVE, ON_NONFINITE, SIGMA_IMAGE, SIGMA_PROMPT
from .kernels import kernel_matrix, squared_distances, squared_kernel_sum, unit_rows
from .order2 import order2_direction
from .scores import von_neumann_entropy
from .spec import KernelSpec

Array = torch.Tensor | np.ndarray

# Above this many multiply-adds, the bank's own pair sum is estimated rather than computed (see module doc).
EXACT_PAIR_SUM_BUDGET = 2**36
ESTIMATE_PAIRS = 2**16
# Feature values gathered per side and chunk of the estimate's random pairs (4 MiB of float32, which stays in
# cache): bounds its extra memory whatever the number of pairs.
PAIR_CHUNK_ELEMENTS = 1 << 20


def _validate(x, y, bank_x, bank_y, objective, kernel, sigma_image, sigma_prompt, on_nonfinite):
    check_objective(objective)
    check_kernel(kernel)
    check_on_nonfinite(on_nonfinite)
    sigma_image, sigma_prompt = check_bandwidths(sigma_image, sigma_prompt)
    conditional = objective.startswith("cond-")
    # with "skip" nothing is scanned up front (a host sync): a bad row gives a zero row of the result
    scan = on_nonfinite == "raise"
    x = as_features(x, "x", device=x.device if isinstance(x, torch.Tensor) else None, check_finite=scan)
    bank_x = as_stored_rows(bank_x, "bank_x", like=x, columns=x.shape[1])
    if kernel == "cosine" and scan:
        check_nonzero_rows(x, "x")
    if not conditional:
        return x, None, bank_x, None, sigma_image, sigma_prompt
    if y is None:
        raise ValueError(f"y: the {objective!r} objective needs prompt features for the batch")
    y = as_features(y, "y", dtype=x.dtype, device=x.device, check_finite=scan)
    check_rows_match(x, y, "x", "y")
    if bank_y is None and bank_x.shape[0]:
        raise ValueError(f"bank_y: the {objective!r} objective needs prompt features for the bank rows")
    bank_y = as_stored_rows(bank_y, "bank_y", like=y, columns=y.shape[1])
    check_rows_match(bank_x, bank_y, "bank_x", "bank_y")
    if kernel == "cosine" and scan:
        check_nonzero_rows(y, "y")
    return x, y, bank_x, bank_y, sigma_image, sigma_prompt


@renamed_bandwidths
def bank_pair_sum(
    bank_x: torch.Tensor,
    bank_y: torch.Tensor | None,
    *,
    kernel: str,
    sigma_image: float,
    sigma_prompt: float,
    max_work: int | None = None,
) -> tuple[float, bool]:
    """sum over bank pairs of k_x^2 (times k_y^2): exact when n^2 d <= max_work (default 2^36), else a
    random-pair estimate, computed chunk by chunk (``PAIR_CHUNK_ELEMENTS``) so its memory stays bounded.

    Returns (value, exact).
    """
    n, d = bank_x.shape
    max_work = EXACT_PAIR_SUM_BUDGET if max_work is None else max_work
    if n == 0:
        return 0.0, True
    if n * n * d <= max_work:
        if bank_x.dtype in (torch.float16, torch.bfloat16):
            bank_x = bank_x.float()
            bank_y = None if bank_y is None else bank_y.float()
        value = squared_kernel_sum(
            bank_x,
            bank_x,
            bank_y,
            bank_y,
            kernel=kernel,
            sigma_image=sigma_image,
            sigma_prompt=sigma_prompt,
            same=True,
        )
        return value, True
    return _estimated_pair_sum(bank_x, bank_y, kernel, sigma_image, sigma_prompt), False


def _estimated_pair_sum(
    bank_x: torch.Tensor, bank_y: torch.Tensor | None, kernel: str, sigma_image: float, sigma_prompt: float
) -> float:
    """``bank_pair_sum`` from ``ESTIMATE_PAIRS`` random pairs: the n diagonal terms are exactly 1, the
    off-diagonal mean is estimated (seeded: repeatable), chunk by chunk in reused buffers."""
    n, d = bank_x.shape
    gen = torch.Generator().manual_seed(0)
    i = torch.randint(0, n, (ESTIMATE_PAIRS,), generator=gen)
    j = (i + torch.randint(1, n, (ESTIMATE_PAIRS,), generator=gen)) % n
    # visit the pairs in the order of their first row: those rows are then read in one forward sweep
    order = torch.argsort(i, stable=True)
    i, j = i[order].to(bank_x.device), j[order].to(bank_x.device)
    width = d + (0 if bank_y is None else bank_y.shape[1])
    step = min(ESTIMATE_PAIRS, max(1, PAIR_CHUNK_ELEMENTS // width))
    compute = torch.float32 if bank_x.dtype in (torch.float16, torch.bfloat16) else bank_x.dtype
    terms = torch.empty(ESTIMATE_PAIRS, dtype=compute, device=bank_x.device)
    buffers = {}  # two gathered chunks per side, reused: no allocation (and no page faults) per chunk

    def gathered(rows: torch.Tensor, index: torch.Tensor, name: str) -> torch.Tensor:
        key = (name, rows.shape[1])
        if key not in buffers:
            buffers[key] = torch.empty((step, rows.shape[1]), dtype=rows.dtype, device=rows.device)
        out = torch.index_select(rows, 0, index, out=buffers[key][: index.shape[0]])
        return out if out.dtype == compute else out.to(compute)

    for lo in range(0, ESTIMATE_PAIRS, step):
        ii, jj = i[lo : lo + step], j[lo : lo + step]
        chunk = _paired_squared_kernel(
            gathered(bank_x, ii, "a"), gathered(bank_x, jj, "b"), kernel, sigma_image
        )
        if bank_y is not None:
            chunk *= _paired_squared_kernel(
                gathered(bank_y, ii, "a"), gathered(bank_y, jj, "b"), kernel, sigma_prompt
            )
        terms[lo : lo + step] = chunk
    return float(n + n * (n - 1) * terms.double().mean())


def _paired_squared_kernel(a: torch.Tensor, b: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    """k(a_p, b_p)^2 per row pair p of a, b: (P, d) -> (P,); overwrites a and b (gathered copies)."""
    if kernel == "gaussian":
        return torch.exp(-a.sub_(b).square_().sum(1) / (sigma * sigma))
    a = a.div_(torch.linalg.vector_norm(a, dim=1, keepdim=True))
    b = b.div_(torch.linalg.vector_norm(b, dim=1, keepdim=True))
    return a.mul_(b).sum(1).square()


def _order1_direction(x, y, bank_x, bank_y, kernel, sigma_image, sigma_prompt):
    with torch.enable_grad():
        batch = x.detach().clone().requires_grad_(True)
        k = kernel_matrix(torch.cat([bank_x, batch]), kernel, sigma_image)
        if y is not None:
            k = k * kernel_matrix(torch.cat([bank_y, y]), kernel, sigma_prompt)
        entropy = von_neumann_entropy(torch.linalg.eigvalsh(k / k.shape[0]))
        (grad,) = torch.autograd.grad(entropy, batch)
    return grad


def _pair_sum_of(
    bank_x: torch.Tensor, bank_y: torch.Tensor | None, kernel: str, sigma_image: float, sigma_prompt: float
) -> float:
    """``bank_pair_sum``, with a warning when it had to be estimated."""
    pair_sum, exact = bank_pair_sum(
        bank_x, bank_y, kernel=kernel, sigma_image=sigma_image, sigma_prompt=sigma_prompt
    )
    if not exact:
        warnings.warn(
            "diversity_direction: the bank's pair sum was estimated from random pairs (the magnitude of the "
            "direction is approximate, its direction exact); pass a sparke.Bank or pair_sum= to avoid this",
            stacklevel=4,
        )
    return pair_sum


@renamed_bandwidths
def diversity_direction(
    x: Array,
    y: Array | None,
    bank_x: Array | None,
    bank_y: Array | None,
    *,
    objective: str = OBJECTIVE,
    kernel: str = KERNEL,
    sigma_image: float = SIGMA_IMAGE,
    sigma_prompt: float = SIGMA_PROMPT,
    pair_sum: float | None = None,
    on_nonfinite: str = ON_NONFINITE,
    skipped: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient of log S(bank U batch) with respect to the batch rows x: (B, d) -> (B, d), an ascent direction.

    S is ``objective`` ("rke", "vendi", "cond-rke" or "cond-vendi") computed on the bank rows followed by the
    batch rows; y: (B, e) and bank_y: (n, e) are prompt features (None for the unconditional objectives);
    bank_x: (n, d), n may be 0. Each batch row is pushed away from the bank and from the rest of its batch.
    The default bandwidths (0.8 and 0.3, the paper's) assume L2-normalised features.

    Order 2 costs O((n + B) d). ``pair_sum`` is the bank's own sum of squared (joint) kernel entries, the
    normaliser of the gradient: ``Bank.direction`` passes the value it keeps; when omitted it is computed,
    exactly if n^2 d <= 2^36 and otherwise estimated (same direction, magnitude within about 1%).

    ``on_nonfinite``: "raise" (a ``ValueError`` naming the input that made the result non-finite) or
    "skip", with no host sync: a batch row that is not finite (or zero, for the cosine kernel) is left out of
    the score and gets a zero row, the other rows get the direction of the batch without it (order 1: all
    rows are skipped), and any other non-finite row of the result becomes zero too; the number of zeroed
    rows is added in place to ``skipped`` (a 0-d tensor on x's device) when given.
    """
    x, y, bank_x, bank_y, sigma_image, sigma_prompt = _validate(
        x, y, bank_x, bank_y, objective, kernel, sigma_image, sigma_prompt, on_nonfinite
    )
    keep = None
    if on_nonfinite == "skip":  # bad batch rows are left out of the score, on the device
        x, y, keep = finite_rows(x, y, kernel)
    if objective in ("vendi", "cond-vendi"):
        bank_x = bank_x.to(x.dtype)
        bank_y = None if bank_y is None else bank_y.to(x.dtype)
        result = _order1_direction(x, y, bank_x, bank_y, kernel, sigma_image, sigma_prompt)
        if keep is not None:  # the spectrum couples every row: one bad row skips them all
            keep = keep & keep.all()
    else:
        if pair_sum is None:
            pair_sum = _pair_sum_of(bank_x, bank_y, kernel, sigma_image, sigma_prompt)
        spec = KernelSpec(objective, kernel, sigma_image, sigma_prompt, on_nonfinite)
        result = order2_direction(x, y, bank_x, bank_y, spec=spec, pair_sum=pair_sum, keep=keep)
    if on_nonfinite == "skip":
        return zero_nonfinite_rows(result, skipped, keep)
    check_finite_result(result, {"bank_x": bank_x, "bank_y": bank_y}, kernel)
    return result


@renamed_bandwidths
def novelty_direction(
    x: Array,
    y: Array | None,
    ref_x: Array,
    ref_y: Array | None,
    *,
    kernel: str = KERNEL,
    sigma_image: float = SIGMA_IMAGE,
    sigma_prompt: float = SIGMA_PROMPT,
) -> torch.Tensor:
    """Ascent direction of -log(mean_i k_x(x_b, r_i)^2 k_y(y_b, s_i)^2) for each row of x: (B, d) -> (B, d).

    Pushes each sample away from the reference rows ref_x: (m, d), weighted by prompt similarity when both
    y: (B, e) and ref_y: (m, e) are given. Computed as a softmax over the reference rows, so it stays finite
    when every kernel value underflows. The default bandwidths assume L2-normalised features.
    """
    check_kernel(kernel)
    sigma_image, sigma_prompt = check_bandwidths(sigma_image, sigma_prompt)
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
        log_terms = squared_distances(x, ref_x) / (-sigma_image * sigma_image)
        if weighted:
            log_terms = log_terms + squared_distances(y, ref_y) / (-sigma_prompt * sigma_prompt)
        # grad log mean_i exp(l_i) = sum_i softmax(l)_i grad l_i, grad l_i = -2 (x - r_i) / sigma^2
        p = torch.softmax(log_terms, dim=1)
        return (2.0 / (sigma_image * sigma_image)) * (x - p @ ref_x)
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
