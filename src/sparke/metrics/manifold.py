"""Precision, recall, density and coverage (PRDC; Naeem et al., ICML 2020) of generated features against real.

Each real row r gets a ball of radius NND_k(r), the Euclidean distance to its k-th nearest other real row;
each fake row a ball of its k-th nearest other fake row. With D(r, f) the real-fake distance:
- precision: fraction of fake rows inside at least one real ball (D < NND_k(r));
- recall:    fraction of real rows inside at least one fake ball (D < NND_k(f));
- density:   mean over fake rows of (number of real balls containing it) / k;
- coverage:  fraction of real rows whose nearest fake row is inside their own ball.
Strict inequalities and radii as in the ``prdc`` package (clovaai), which builds every N x M distance matrix.

Written here because no maintained library has PRDC that scales: the ``prdc`` package holds the three dense
distance matrices (4.8 GB at 20,000 x 20,000 in float32) and torchmetrics has none. Here the distances are
computed in row chunks on the features' device, in their dtype (float32 stays float32, float64 float64), and
compared as squared distances, so memory is O(chunk x max(N, M)) and never N x M.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.checks import as_features
from ..core.kernels import squared_distances

Array = torch.Tensor | np.ndarray

# Distances held at once: 2**24 entries (64 MiB in float32) per chunk.
CHUNK_ENTRIES = 2**24

__all__ = ["prdc", "check_nearest_k"]


def check_nearest_k(nearest_k: int, rows: int | None = None, name: str = "") -> int:
    """``nearest_k`` as an int >= 1, below ``rows`` when given: a k-th nearest *other* row must exist."""
    if isinstance(nearest_k, bool) or not isinstance(nearest_k, (int, np.integer)) or nearest_k < 1:
        raise ValueError(f"nearest_k: expected an integer >= 1, got {nearest_k!r}")
    if rows is not None and rows <= nearest_k:
        raise ValueError(f"{name}: needs more than nearest_k={nearest_k} rows, got {rows}")
    return int(nearest_k)


def _chunk(columns: int) -> int:
    return max(1, CHUNK_ENTRIES // max(columns, 1))


def kth_neighbour_radii(x: torch.Tensor, nearest_k: int) -> torch.Tensor:
    """Squared distance from each row of x: (n, d) to its k-th nearest other row: (n,)."""
    radii = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    step = _chunk(x.shape[0])
    for start in range(0, x.shape[0], step):
        stop = min(start + step, x.shape[0])
        sq = squared_distances(x[start:stop], x)
        sq[:, start:stop].diagonal().fill_(0.0)  # the row itself, exactly, as the (k+1)-th smallest counts it
        radii[start:stop] = sq.topk(nearest_k + 1, dim=1, largest=False).values[:, -1]
    return radii


def prdc(real: Array, fake: Array, nearest_k: int = 5) -> dict[str, float]:
    """PRDC of fake: (M, d) against real: (N, d) with k = ``nearest_k`` (see the module docstring).

    Returns ``{"precision", "recall", "density", "coverage"}`` as floats; density can exceed 1. Cost
    O((N + M)^2 d) time, O(chunk x max(N, M)) memory on the features' device.
    """
    real = as_features(real, "real")
    fake = as_features(fake, "fake", device=real.device)
    if fake.shape[1] != real.shape[1]:
        raise ValueError(f"fake: has {fake.shape[1]} feature columns but real has {real.shape[1]}")
    dtype = torch.promote_types(real.dtype, fake.dtype)
    real, fake = real.to(dtype), fake.to(dtype)
    nearest_k = check_nearest_k(nearest_k, real.shape[0], "real")
    check_nearest_k(nearest_k, fake.shape[0], "fake")
    real_radii = kth_neighbour_radii(real, nearest_k)
    fake_radii = kth_neighbour_radii(fake, nearest_k)
    # one pass over real-row chunks: recall and coverage per real row, ball counts per fake row
    balls_per_fake = torch.zeros(fake.shape[0], dtype=torch.int64, device=real.device)
    recalled = covered = 0
    step = _chunk(fake.shape[0])
    for start in range(0, real.shape[0], step):
        sq = squared_distances(real[start : start + step], fake)
        radii = real_radii[start : start + step, None]
        balls_per_fake += (sq < radii).sum(0)
        recalled += int((sq < fake_radii[None, :]).any(1).sum())
        covered += int((sq.min(1, keepdim=True).values < radii).sum())
    return {
        "precision": float((balls_per_fake > 0).double().mean()),
        "recall": recalled / real.shape[0],
        "density": float(balls_per_fake.double().mean()) / nearest_k,
        "coverage": covered / real.shape[0],
    }
