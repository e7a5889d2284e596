"""The two kernels of the SPARKE scores and blockwise sums over kernel matrices.

Both kernels have k(a, a) = 1, so trace(K) = n and the normalised matrix is K / n.
- ``"gaussian"``: k(a, b) = exp(-|a - b|^2 / (2 sigma^2))
- ``"cosine"``:   k(a, b) = <a, b> / (|a| |b|)   (sigma is ignored)

Blockwise sums never hold more than ``block`` x n kernel entries at once, so an n x n matrix is never built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .defaults import SIGMA_PROMPT

if TYPE_CHECKING:
    from .spec import KernelSpec

DEFAULT_BLOCK = 2048
MASS_BLOCK = 1 << 16  # bank rows per block of ``kernel_mass``


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2 for a: (m, d), b: (n, d) -> (m, n), clamped at 0 against rounding."""
    sq = torch.addmm(b.pow(2).sum(1).unsqueeze(0), a, b.T, alpha=-2.0).add_(a.pow(2).sum(1, keepdim=True))
    return sq.clamp_min_(0.0)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def kernel_matrix(x: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    """Dense n x n kernel matrix (only for the O(n^3) Vendi paths and for tests)."""
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    if kernel == "gaussian":
        # zero self-distance exactly, whatever the rounding; out of place so autograd can pass through
        sq = torch.where(eye, torch.zeros((), dtype=x.dtype, device=x.device), squared_distances(x, x))
        return torch.exp(sq / (-2.0 * sigma * sigma))
    return torch.where(eye, torch.ones((), dtype=x.dtype, device=x.device), unit_rows(x) @ unit_rows(x).T)


def squared_kernel_sum(
    xa: torch.Tensor,
    xb: torch.Tensor,
    ya: torch.Tensor | None = None,
    yb: torch.Tensor | None = None,
    *,
    kernel: str,
    sigma_image: float,
    sigma_prompt: float = SIGMA_PROMPT,
    same: bool = False,
    block: int = DEFAULT_BLOCK,
) -> float:
    """sum_ij k_x(xa_i, xb_j)^2 * k_y(ya_i, yb_j)^2 (the y factor only when ya/yb are given), in float64.

    k_x has bandwidth ``sigma_image``, k_y ``sigma_prompt`` (Gaussian; the cosine kernel ignores them).

    ``same=True`` says xa is xb (and ya is yb): the diagonal is then exactly 1 per row.
    Cost O(|a| |b| d) time, O(block |b|) memory.
    """
    total = torch.zeros((), dtype=torch.float64, device=xa.device)
    if kernel == "cosine":
        xa, xb = unit_rows(xa), unit_rows(xb)
        if ya is not None:
            ya, yb = unit_rows(ya), unit_rows(yb)
    for start in range(0, xa.shape[0], block):
        stop = min(start + block, xa.shape[0])
        # symmetric: only the columns from this block on; the blocks right of the diagonal count twice
        first = start if same else 0
        cols_x = xb[first:]
        cols_y = None if yb is None else yb[first:]
        if kernel == "gaussian":
            log_sq = squared_distances(xa[start:stop], cols_x).div_(-sigma_image * sigma_image)
            if ya is not None:
                log_sq += squared_distances(ya[start:stop], cols_y).div_(-sigma_prompt * sigma_prompt)
            if same:
                log_sq[:, : stop - start].diagonal().fill_(0.0)
            sq = log_sq.exp_()
        else:
            sq = (xa[start:stop] @ cols_x.T).square_()
            if ya is not None:
                sq *= (ya[start:stop] @ cols_y.T).square_()
            if same:
                sq[:, : stop - start].diagonal().fill_(1.0)
        if same:
            total += sq[:, : stop - start].sum(dtype=torch.float64)
            total += 2.0 * sq[:, stop - start :].sum(dtype=torch.float64)
        else:
            total += sq.sum(dtype=torch.float64)
    return float(total)


def kernel_mass(
    x: torch.Tensor,
    rows_x: torch.Tensor,
    y: torch.Tensor | None,
    rows_y: torch.Tensor | None,
    spec: KernelSpec,
) -> torch.Tensor:
    """(B,) kernel-weighted mass sum_j k_x(x_i, r_j) k_y(y_i, s_j) of the rows r: (n, d) (and their prompts
    s: (n, e)) around each row of x: (B, d); the prompt factor only when both y and rows_y are given. 0 for no rows.

    Gaussian kernels with ``spec``'s bandwidths (``sigma_image`` a number), whatever ``spec.kernel``: a mass needs
    similarities >= 0, which cosine ones are not. How crowded each sample's neighbourhood is: a near-duplicate of
    a similar prompt adds about 1, a far row or another prompt's row about 0. float32 on x's device, in blocks
    of a (half-precision) bank's rows.
    """
    x = x.float()
    mass = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    sigma_image, sigma_prompt, block = float(spec.sigma_image), spec.sigma_prompt, MASS_BLOCK
    for start in range(0, rows_x.shape[0], block):
        part = rows_x[start : start + block].to(x.device, torch.float32)
        log_k = squared_distances(x, part) / (-2.0 * sigma_image * sigma_image)
        if y is not None and rows_y is not None:
            part_y = rows_y[start : start + block].to(x.device, torch.float32)
            log_k += squared_distances(y.float(), part_y) / (-2.0 * sigma_prompt * sigma_prompt)
        mass += log_k.exp().sum(1)
    return mass
