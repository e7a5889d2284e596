"""The search structures of ``IndexedBank``: FAISS indexes, the device flat scan, random projections and the
k-means cells that draw bank rows near a query (see ``sparke.core.indexed`` for how the bank uses them).

The search runs where the rows live: on the CPU a FAISS index (exact flat search up to ``FLAT_BELOW`` rows, then
an HNSW graph, approximate, about O(log n) per query); on CUDA an exact flat scan on the device (one matrix
product plus ``torch.topk`` over the search vectors, 10^6 x 128 float32 = 0.5 GB). Either holds the joint vector
z after a fixed Gaussian random projection of each part to at most ``search_dim`` columns (squared distances
preserved in expectation, relative error about sqrt(2 / search_dim)). An HNSW graph's shape depends on the order
and grouping of its inserts (and on threads), so a rebuilt graph may return other candidates than the live one
did: there a replay is statistically, not bitwise, the same (the device flat search stays exact at any size).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["Cells", "FlatIndex", "faiss_module", "graph_from", "projection"]

# HNSW graph degree and construction breadth: about 1,500 rows/s per core to add, recall of the top 256
# good enough for the direction (docs/scale.md).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
# Device flat search: keys scanned per product (B x chunk distances at a time).
SEARCH_CHUNK = 1 << 20
# The k-means cells (``Cells``): cells of about ROWS_PER_CELL rows, at most MAX_CELLS; a cell is drawn with
# probability ~ size * exp(-CELL_TEMPER * |z - centroid|^2), mixed with CELL_UNIFORM of plain size-proportional
# draws, then a row uniformly inside it.
ROWS_PER_CELL = 64
MAX_CELLS = 1024
CELL_TEMPER = 0.5
CELL_UNIFORM = 0.1


def faiss_module():
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sparke.IndexedBank needs FAISS: pip install faiss-cpu (or faiss-gpu), or pip install 'sparke[index]'"
        ) from None
    return faiss


def projection(dim: int, search_dim: int, gen: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """(dim, search_dim) Gaussian matrix / sqrt(search_dim) (drawn on the CPU: the same on every device),
    or None when dim is already small enough."""
    if dim <= search_dim:
        return None
    return (torch.randn(dim, search_dim, generator=gen) / math.sqrt(search_dim)).to(device)


def graph_from(index: Any, columns: int) -> Any:
    """A FAISS HNSW graph holding the vectors of ``index`` (a flat index), added in order."""
    graph = faiss_module().IndexHNSWFlat(columns, HNSW_M)
    graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    for start in range(0, index.ntotal, 65536):
        stop = min(start + 65536, index.ntotal)
        graph.add(index.reconstruct_n(start, stop - start))
    return graph


class Cells:
    """A k-means partition of the search vectors, to draw bank rows near a query without reading them all.

    ``draw`` is importance sampling: a cell with probability pi_c (from its size and its centroid's distance to
    the query, mixed with size-proportional), then a row uniformly in it, so row r of cell c has probability
    pi_c / size_c > 0 for every row: weighting each draw by 1 / (draws * p) keeps sums unbiased.
    """

    def __init__(self, centroids: np.ndarray, trained_at: int, device: torch.device | str = "cpu") -> None:
        self.centroids = centroids  # (C, columns) float32
        self.trained_at = trained_at
        self._assigner = FlatIndex(centroids.shape[1], torch.device(device))  # nearest centroid, exact
        self._assigner.add(centroids)
        self.sizes = np.zeros(centroids.shape[0], dtype=np.int64)
        self._members = [np.empty(0, dtype=np.int64) for _ in range(centroids.shape[0])]

    @classmethod
    def train(cls, index: Any, count: int, seed: int) -> Cells:
        """Cells for the ``count`` rows of ``index`` (k-means on at most 64 rows per cell, 10 iterations:
        FAISS's for a FAISS index, ``_kmeans`` on the device for a device flat index)."""
        cells = max(1, min(MAX_CELLS, count // ROWS_PER_CELL))
        rng = np.random.default_rng(seed + count)
        sample = np.sort(rng.choice(count, size=min(count, 64 * cells), replace=False))
        if isinstance(index, FlatIndex):
            centroids = _kmeans(index.keys[torch.from_numpy(sample).to(index.device)], cells, seed)
        else:
            kmeans = faiss_module().Kmeans(
                index.d, cells, niter=10, seed=seed, verbose=False, max_points_per_centroid=64
            )
            kmeans.train(index.reconstruct_batch(sample))
            centroids = kmeans.centroids
        device = index.device if isinstance(index, FlatIndex) else "cpu"
        out = cls(np.ascontiguousarray(centroids, dtype=np.float32), count, device)
        for start in range(0, count, 65536):
            stop = min(start + 65536, count)
            out.assign(index.reconstruct_n(start, stop - start), start)
        return out

    def assign(self, z: np.ndarray, first_id: int) -> None:
        """File rows first_id, first_id + 1, ... with search vectors z: (m, columns) under their nearest cell."""
        _, nearest = self._assigner.search(z, 1)
        cell_of = nearest[:, 0]
        order = np.argsort(cell_of, kind="stable")
        cells, starts, counts = np.unique(cell_of[order], return_index=True, return_counts=True)
        ids = first_id + order
        for c, start, k in zip(cells.tolist(), starts.tolist(), counts.tolist(), strict=True):
            size, members = int(self.sizes[c]), self._members[c]
            if size + k > members.shape[0]:  # grow geometrically: amortised O(1) per row
                grown = np.empty(max(size + k, 2 * members.shape[0], 16), dtype=np.int64)
                grown[:size] = members[:size]
                self._members[c] = members = grown
            members[size : size + k] = ids[start : start + k]
            self.sizes[c] = size + k

    def draw(self, query: np.ndarray, draws: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``draws`` row ids for one search vector (columns,) and the probability each had of being drawn."""
        sizes = self.sizes.astype(np.float64)
        d2 = np.square(self.centroids - query[None, :]).sum(1, dtype=np.float64)
        near = np.exp(-CELL_TEMPER * (d2 - d2[sizes > 0].min())) * sizes
        pi = (1.0 - CELL_UNIFORM) * near / near.sum() + CELL_UNIFORM * sizes / sizes.sum()
        cells = rng.choice(pi.shape[0], size=draws, p=pi)
        slot = (rng.random(draws) * sizes[cells]).astype(np.int64)
        rows = np.fromiter(
            (self._members[c][k] for c, k in zip(cells.tolist(), slot.tolist(), strict=True)),
            dtype=np.int64,
            count=draws,
        )
        return rows, pi[cells] / sizes[cells]


class FlatIndex:
    """Exact L2 search over search vectors kept as a (n, d) float32 tensor on ``device``: per chunk of
    ``SEARCH_CHUNK`` keys one matrix product and ``torch.topk``. Answers as FAISS's flat index does (numpy
    squared distances and int64 ids, -1 past the end), so the rest of the bank is the same for both."""

    def __init__(self, d: int, device: torch.device) -> None:
        self.d = d
        self.device = torch.device(device)
        self.ntotal = 0
        self._z = torch.empty((0, d), device=self.device)
        self._sq = torch.empty(0, device=self.device)

    @property
    def keys(self) -> torch.Tensor:
        """(ntotal, d) float32 view of the stored vectors."""
        return self._z[: self.ntotal]

    def to(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self._z, self._sq = self._z.to(self.device), self._sq.to(self.device)

    def add(self, z: np.ndarray | torch.Tensor) -> None:
        """Append (m, d) vectors; the buffer grows geometrically."""
        z = torch.as_tensor(z).to(self.device, torch.float32)
        m = z.shape[0]
        if self.ntotal + m > self._z.shape[0]:
            size = max(self.ntotal + m, 2 * self._z.shape[0], 16)
            grown, sq = self._z.new_empty((size, self.d)), self._sq.new_empty(size)
            grown[: self.ntotal], sq[: self.ntotal] = self.keys, self._sq[: self.ntotal]
            self._z, self._sq = grown, sq
        self._z[self.ntotal : self.ntotal + m] = z
        self._sq[self.ntotal : self.ntotal + m] = z.square().sum(1)
        self.ntotal += m

    def search_tensor(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared distances (B, k) ascending, ids (B, k) int64) of the k nearest keys to q: (B, d), on the
        device; 1 <= k <= ntotal."""
        q = q.to(self.device, torch.float32)
        q_sq = q.square().sum(1, keepdim=True)
        best_d = best_i = None
        for start in range(0, self.ntotal, SEARCH_CHUNK):
            stop = min(start + SEARCH_CHUNK, self.ntotal)
            dist = torch.addmm(self._sq[start:stop].unsqueeze(0), q, self._z[start:stop].T, alpha=-2.0)
            dist.add_(q_sq).clamp_min_(0.0)
            d, i = torch.topk(dist, min(k, stop - start), dim=1, largest=False, sorted=True)
            i += start
            if best_d is not None:  # merge with the best of the earlier chunks
                both = torch.cat([best_d, d], 1)
                d, pick = torch.topk(both, min(k, both.shape[1]), dim=1, largest=False, sorted=True)
                i = torch.gather(torch.cat([best_i, i], 1), 1, pick)
            best_d, best_i = d, i
        return best_d, best_i

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS-style search: (distances (B, k) float32, ids (B, k) int64) as numpy, -1 ids past the end."""
        found = min(k, self.ntotal)
        dist = np.full((q.shape[0], k), np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        if found:
            d, i = self.search_tensor(torch.from_numpy(np.ascontiguousarray(q)), found)
            dist[:, :found], ids[:, :found] = d.cpu().numpy(), i.cpu().numpy()
        return dist, ids

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        return self.keys[torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)].cpu().numpy()

    def reconstruct_n(self, start: int, m: int) -> np.ndarray:
        return self.keys[start : start + m].cpu().numpy()


def _kmeans(points: torch.Tensor, cells: int, seed: int, iterations: int = 10) -> np.ndarray:
    """Lloyd's k-means of points: (m, d) on their device: (cells, d) float32 numpy centroids (an emptied
    cell keeps its centroid)."""
    gen = torch.Generator().manual_seed(seed)
    centroids = points[torch.randperm(points.shape[0], generator=gen)[:cells].to(points.device)].clone()
    for _ in range(iterations):
        nearest = torch.cdist(points, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, points)
        sizes = torch.bincount(nearest, minlength=cells).to(points.dtype)
        filled = sizes > 0
        centroids[filled] = sums[filled] / sizes[filled].unsqueeze(1)
    return centroids.cpu().numpy()
