"""Sparse repellency (SPELL, Kirchhof et al., ICML 2025) and the nearest-row search it reads a bank with.

For a point x and reference points z_k, each reference closer than a radius r pushes x to the ball's edge:

    push(x) = sum_k relu(r / |x - z_k| - 1) (x - z_k),

so a lone reference at distance d < r moves x by (r - d) along x - z_k (exactly onto the sphere), and every
reference at distance >= r contributes exactly 0. A reference at distance 0 has no direction and is skipped.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["ProjectedSearch", "any_within", "nearest_rows", "sparse_repellency"]

CHUNK = 1 << 16  # bank rows compared per product (bounds the float32 copy of a float16 bank)


def sparse_repellency(x: torch.Tensor, refs: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
    """push(x) for rows x: (B, d) against references refs: (B, k, d) per row, or (k, d) shared; -> (B, d).

    ``radius``: r > 0 (a float, or (B,) per row). Float32 math; zero-distance references are skipped.
    """
    x = x.float()
    refs = refs.float()
    if refs.ndim == 2:
        refs = refs.unsqueeze(0).expand(x.shape[0], -1, -1)
    if refs.shape[1] == 0:
        return torch.zeros_like(x)
    diff = x.unsqueeze(1) - refs  # (B, k, d)
    dist = torch.linalg.vector_norm(diff, dim=2)  # (B, k)
    r = torch.as_tensor(radius, dtype=x.dtype, device=x.device).reshape(-1, 1)
    weight = torch.where(dist > 0, torch.relu(r / dist.clamp_min(1e-30) - 1.0), torch.zeros_like(dist))
    return torch.einsum("bk,bkd->bd", weight, diff)


def nearest_rows(bank: Any, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k bank rows nearest to each row of x: (B, d) in L2: (distances (B, k'), rows (B, k', d)), k' =
    min(k, len(bank)), nearest first, float32 on x's device.

    An ``IndexedBank`` of image rows only is searched with its own index (FAISS on the CPU, an exact scan on
    CUDA, in its projected search space) for 4k candidates, re-ranked by exact distance on the full rows;
    any other bank (``Bank``, ``AutoBank``, an indexed bank with prompt columns) by an exact scan of its rows
    in chunks of ``CHUNK``.
    """
    n = len(bank)
    k = min(int(k), n)
    if k <= 0:
        return x.new_zeros((x.shape[0], 0)), x.new_zeros((x.shape[0], 0, x.shape[1]))
    x = x.float()
    rows = bank.x
    if hasattr(bank, "_search_vectors") and getattr(bank, "dim_y", None) is None:
        _, found = bank._index.search(bank._search_vectors(x, None), min(n, 4 * k))
        ids = torch.from_numpy(found).clamp_min(0).to(rows.device)
        cand = rows[ids.flatten()].view(*ids.shape, -1).to(x.device, torch.float32)  # (B, 4k, d)
        dist = torch.linalg.vector_norm(x.unsqueeze(1) - cand, dim=2)
        dist, pick = torch.topk(dist, k, dim=1, largest=False, sorted=True)
        return dist, torch.gather(cand, 1, pick.unsqueeze(2).expand(-1, -1, cand.shape[2]))
    best_d = best_i = None
    for start in range(0, n, CHUNK):
        part = rows[start : start + CHUNK].to(x.device, torch.float32)
        d, i = torch.topk(torch.cdist(x, part), min(k, part.shape[0]), dim=1, largest=False, sorted=True)
        i = i + start
        if best_d is not None:
            both = torch.cat([best_d, d], 1)
            d, pick = torch.topk(both, min(k, both.shape[1]), dim=1, largest=False, sorted=True)
            i = torch.gather(torch.cat([best_i, i], 1), 1, pick)
        best_d, best_i = d, i
    assert best_i is not None and best_d is not None
    picked = rows[best_i.flatten().to(rows.device)].view(*best_i.shape, -1).to(x.device, torch.float32)
    return best_d, picked


def any_within(
    x: torch.Tensor,
    y: torch.Tensor | None,
    rows_x: torch.Tensor,
    rows_y: torch.Tensor | None,
    radius: float,
    prompt_radius: float,
    *,
    skip_self: bool = False,
) -> torch.Tensor:
    """(B,) bool: does row i of x: (B, d) have a row j of rows_x: (n, d) with |x_i - r_j| < radius and, when
    both have prompt features, |y_i - s_j| < prompt_radius? ``skip_self``: rows_x is x (j = i is skipped).

    An exact scan in chunks of ``CHUNK`` rows (SPARKE's sparsity gate: guide only where a similar image of a
    similar prompt already exists).
    """
    hit = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    x = x.float()
    for start in range(0, rows_x.shape[0], CHUNK):
        near = torch.cdist(x, rows_x[start : start + CHUNK].to(x.device, torch.float32)) < radius
        if y is not None and rows_y is not None:
            part_y = rows_y[start : start + CHUNK].to(x.device, torch.float32)
            near &= torch.cdist(y.float(), part_y) < prompt_radius
        if skip_self:
            idx = torch.arange(x.shape[0], device=x.device)
            inside = (idx >= start) & (idx < start + near.shape[1])
            near[idx[inside], idx[inside] - start] = False
        hit |= near.any(1)
    return hit


class ProjectedSearch:
    """Nearest rows of a fixed set of rows (a static shield): a Gaussian random projection of the rows to
    ``dim`` columns (distances preserved in expectation, relative error about sqrt(2 / dim)), an exact scan
    there for ``candidates * k`` rows, re-ranked by exact distance on the full rows.

    Building it is one pass over the rows (no index to train); a search reads n x ``dim`` floats plus the
    candidates' full rows, instead of n x d. Approximate: a row inside a SPELL ball is missed only when the
    projection ranks it below ``candidates * k`` others, unlikely for the near-duplicates the balls catch.
    """

    def __init__(self, rows: torch.Tensor, dim: int = 64, candidates: int = 8, seed: int = 0) -> None:
        self.rows = rows
        self.candidates = candidates
        n, d = rows.shape
        gen = torch.Generator().manual_seed(seed)
        self.proj = (
            None if d <= dim else (torch.randn(d, dim, generator=gen) / math.sqrt(dim)).to(rows.device)
        )
        width = d if self.proj is None else dim
        self.keys = torch.empty(n, width, device=rows.device)
        for start in range(0, n, CHUNK):
            part = rows[start : start + CHUNK].float()
            self.keys[start : start + CHUNK] = part if self.proj is None else part @ self.proj
        self.sq = self.keys.square().sum(1)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def search(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``nearest_rows``: (distances (B, k'), rows (B, k', d)), nearest first, float32 on x's device."""
        k = min(int(k), len(self))
        x = x.float()
        q = x.to(self.keys.device)
        q = q if self.proj is None else q @ self.proj
        d2 = torch.addmm(self.sq.unsqueeze(0), q, self.keys.T, alpha=-2.0)
        _, ids = torch.topk(d2, min(len(self), self.candidates * k), dim=1, largest=False)
        cand = self.rows[ids.flatten()].view(*ids.shape, -1).to(x.device, torch.float32)
        dist = torch.linalg.vector_norm(x.unsqueeze(1) - cand, dim=2)
        dist, pick = torch.topk(dist, k, dim=1, largest=False, sorted=True)
        return dist, torch.gather(cand, 1, pick.unsqueeze(2).expand(-1, -1, cand.shape[2]))
