"""A bank whose guidance direction reads only the nearest rows: sublinear in the bank size, through FAISS.

For Gaussian kernels the conditional weight of a bank row is one Gaussian kernel on a joint vector:

    k_x(x, r)^2 k_y(y, s)^2 = exp(-|x - r|^2 / sigma_image^2 - |y - s|^2 / sigma_prompt^2) = exp(-|z - z_r|^2),
    z = [x / sigma_image, y / sigma_prompt],

so the rows that dominate the order-2 direction (``diversity_direction``, objective "cond-rke", or "rke"
without prompts) are the nearest neighbours of z, found by a search over a random projection of z
(``sparke.core.search``: FAISS on the CPU, an exact flat scan on CUDA); the rows it returns are then weighted
with the exact kernel on the full rows.

What is approximate, and how:
- per batch row, the direction sums exactly over the ``neighbors`` nearest rows found, and estimates the
  rest from ``samples`` weighted draws: half among the next ``7 * neighbors`` rows the search found
  (importance sampling by their search-space weight), half over the whole bank for the flat tail when many
  rows share a prompt: uniformly while the bank is small, then through a k-means partition of the search
  vectors (cells near the sample drawn more often, every row with a known non-zero probability). The
  estimate is unbiased for the part beyond the nearest rows, and a step reads ``neighbors + samples`` rows
  per batch row whatever n is. docs/scale.md: cosine to the exact direction against ``neighbors`` and n;
- the normaliser F (sum of all squared joint kernel entries over the bank and the batch) only scales the
  direction. Its bank part is kept as rows are added, from each new row's ``neighbors`` nearest earlier
  rows, ``samples`` uniform draws for the other earlier rows, and exactly among the rows of one ``add``
  (chunks of 1,024), with the kernel evaluated on the search vectors: exact while n <= ``neighbors`` and
  nothing is projected, otherwise an estimate within a few percent (measured in docs/scale.md).

Rows are kept (on ``device``, in ``dtype``) for the exact kernel and for ``save`` (``sparke.core.indexed_file``).
Replays are exact: after each ``add`` the bank remembers its pair sum and random state (``truncate(n)`` goes back
to them) and when its cells were trained, so a loaded or truncated bank draws what the bank it was would have
drawn, except past ``FLAT_BELOW`` rows on the CPU, where the rebuilt HNSW graph may differ (``search``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bank import BankFileError
from .checks import (
    as_features,
    check_finite_result,
    check_index_options,
    check_rows_match,
    check_sigma,
    renamed_bandwidths,
    zero_nonfinite_rows,
)
from .defaults import SIGMA_IMAGE, SIGMA_PROMPT
from .indexed_file import FORMAT, FORMAT_VERSION, STORAGE_DTYPES, read_indexed_bank, write_indexed_bank
from .kernels import squared_distances
from .order2 import Workspace, finish_direction, order2_direction, order2_sums
from .search import Cells, FlatIndex, faiss_module, graph_from, projection
from .spec import KernelSpec, ScoresBatches

__all__ = ["CELLS_FROM", "FORMAT", "FORMAT_VERSION", "SEARCHES", "STORAGE_DTYPES", "IndexedBank"]

# Below this many rows the search is exact (brute force over the short search vectors, under a millisecond).
FLAT_BELOW = 32_768
SEARCHES = ("auto", "faiss", "flat")
# Rows added per search: new rows are compared with their nearest old rows and exactly among themselves.
ADD_CHUNK = 1024
# Rows searched per batch row, in multiples of ``neighbors``: the nearest are exact, the others sampled.
EXPAND = 8
# From this many rows on, the draws for the rest of the bank come from a k-means partition of the search
# vectors (``Cells``, retrained each time the bank doubles): when thousands of rows share a prompt, uniform
# draws over the whole bank rarely land among them; cell draws mostly do.
CELLS_FROM = 8192


class IndexedBank(ScoresBatches):
    """Image features x: (n, dim_x), optional prompt features y: (n, dim_y), searchable by joint kernel.

    ``neighbors``: candidate rows per batch row read by ``direction``; ``samples``: rows drawn at random per
    step for the rest of the bank (default ``3 * neighbors``; 0 = none). ``sigma_image``/``sigma_prompt``: the
    Gaussian bandwidths, fixed because the search space is scaled by them (``sigma_x``/``sigma_y``: deprecated
    names). ``search_dim``: columns each of x and y is projected to for the search (only when larger).
    ``dtype``: storage type of the kept rows. ``search``: "faiss" (CPU FAISS index), "flat" (exact scan on
    the rows' device) or "auto" (flat on CUDA, FAISS elsewhere); ``to`` chooses again for "auto".
    """

    @renamed_bandwidths
    def __init__(
        self,
        dim_x: int,
        dim_y: int | None = None,
        *,
        neighbors: int = 256,
        samples: int | None = None,
        kernel: str = "gaussian",
        sigma_image: float = SIGMA_IMAGE,
        sigma_prompt: float = SIGMA_PROMPT,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        search_dim: int = 64,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
        search: str = "auto",
    ) -> None:
        check_index_options(dim_x, dim_y, neighbors, samples, search_dim, kernel)
        if dtype not in STORAGE_DTYPES.values():
            raise ValueError(f"dtype: must be one of {', '.join(STORAGE_DTYPES)}, got {dtype}")
        if search not in SEARCHES:
            raise ValueError(f"search: must be one of {', '.join(SEARCHES)}, got {search!r}")
        self.dim_x, self.dim_y = dim_x, dim_y
        self.neighbors = neighbors
        self.samples = 3 * neighbors if samples is None else samples
        self._rng = np.random.default_rng(seed + 1)
        self.kernel = kernel
        self.sigma_image = check_sigma(sigma_image, "sigma_image")
        self.sigma_prompt = check_sigma(sigma_prompt, "sigma_prompt")
        # what the bank computes: the order-2 score ("cond-rke", or "rke" without prompts) with its kernel
        self.spec = KernelSpec(
            "rke" if dim_y is None else "cond-rke", kernel, self.sigma_image, self.sigma_prompt
        )
        self.search = search
        self.device = torch.device(device)
        self.dtype = dtype
        self.search_dim = search_dim
        self.seed = seed
        self.metadata: dict[str, Any] = dict(metadata or {})
        gen = torch.Generator().manual_seed(seed)
        self._proj_x = projection(dim_x, search_dim, gen, self.device)
        self._proj_y = None if dim_y is None else projection(dim_y, search_dim, gen, self.device)
        self._x = torch.empty((0, dim_x), device=self.device, dtype=dtype)
        self._y = None if dim_y is None else torch.empty((0, dim_y), device=self.device, dtype=dtype)
        # squared row norms (float32), kept at add time so a step reads only the candidate rows once
        self._nx = torch.empty(0, device=self.device)
        self._ny = None if dim_y is None else torch.empty(0, device=self.device)
        self._count = 0
        self._pair_sum = 0.0
        self._workspace = Workspace()
        self._index = self._new_index()
        self._cells: Cells | None = None
        self._cell_points: list[int] = []  # row counts at which the cells were trained
        # row count after each add -> (pair sum, random state) then: what ``truncate`` goes back to
        self._marks: dict[int, tuple[float, dict[str, Any]]] = {}
        # the kept pair sums of the exact bank these rows came from, by row count (``AutoBank.truncate``)
        self.exact_marks: dict[int, dict[str, float]] = {}

    # -- reading ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"IndexedBank(n={self._count}, dim_x={self.dim_x}, dim_y={self.dim_y}, neighbors={self.neighbors}, "
            f"sigma_image={self.sigma_image}, sigma_prompt={self.sigma_prompt}, dtype={self.dtype}, "
            f"device={self.device}, search={self.search!r} ({self.search_mode}))"
        )

    @property
    def sigma_x(self) -> float:
        """Deprecated name of ``sigma_image``."""
        return self.sigma_image

    @property
    def sigma_y(self) -> float:
        """Deprecated name of ``sigma_prompt``."""
        return self.sigma_prompt

    @property
    def search_mode(self) -> str:
        """The search in use: "flat" (exact scan on the rows' device) or "faiss" (CPU index)."""
        if self.search == "auto":
            return "flat" if self.device.type == "cuda" else "faiss"
        return self.search

    @property
    def x(self) -> torch.Tensor:
        """(n, dim_x) view of the image features, oldest first."""
        return self._x[: self._count]

    @property
    def y(self) -> torch.Tensor | None:
        """(n, dim_y) view of the prompt features, or None for a bank without prompts."""
        return None if self._y is None else self._y[: self._count]

    @property
    def search_columns(self) -> int:
        """Width of the joint search vectors."""
        cols = self._proj_x.shape[1] if self._proj_x is not None else self.dim_x
        if self.dim_y is not None:
            cols += self._proj_y.shape[1] if self._proj_y is not None else self.dim_y
        return cols

    def pair_sum(self) -> float:
        """The kept estimate of the bank's own sum of squared joint kernel entries (see the module doc)."""
        return self._pair_sum

    def set_pair_sum(self, value: float) -> None:
        """Keep ``value`` as the bank's pair sum instead of the running estimate (a known or exact figure, such
        as an exact bank's when its rows move here); later ``add`` calls update it as usual."""
        self._pair_sum = float(value)
        if self._count:
            self._mark()

    def _mark(self) -> None:
        self._marks[self._count] = (self._pair_sum, self._rng.bit_generator.state)

    def truncate(self, n: int) -> None:
        """Keep the oldest ``n`` rows, with the pair sum, random state and cells the bank had when an ``add``
        brought it to n rows (``ValueError`` for a count it never had after an add): the rows added later, and
        the draws made since, are undone (see the module doc for the one limit)."""
        if n == self._count:
            return
        if not (isinstance(n, int) and 0 <= n < self._count) or (n and n not in self._marks):
            raise ValueError(f"truncate: the bank never held exactly {n!r} rows after an add")
        keys = self._index.reconstruct_n(0, n) if n else None
        if n:
            self._pair_sum, state = self._marks[n]
        else:
            self._pair_sum, state = 0.0, np.random.default_rng(self.seed + 1).bit_generator.state
        self._rng.bit_generator.state = state
        self._marks = {count: mark for count, mark in self._marks.items() if count <= n}
        self._cell_points = [point for point in self._cell_points if point <= n]
        self._count = n
        self._workspace = Workspace()
        self._rebuild_search(keys)

    def _rebuild_search(self, keys: np.ndarray | None) -> None:
        """A new index over ``keys`` (the first ``len(self)`` search vectors) and the cells as they were."""
        self._index = self._new_index()
        count = self._count
        for start in range(0, count, 65536):
            self._index.add(np.ascontiguousarray(keys[start : min(start + 65536, count)]))
        if count > FLAT_BELOW and self.search_mode == "faiss":
            self._to_graph()
        self._cells = None
        if self._cell_points:
            trained = self._cell_points[-1]
            self._cells = Cells.train(self._index, trained, self.seed)
            if count > trained:
                self._cells.assign(self._index.reconstruct_n(trained, count - trained), trained)

    # -- writing ---------------------------------------------------------------------------------------------
    def add(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | None = None) -> None:
        """Append rows x: (m, dim_x) and, for a prompt-aware bank, y: (m, dim_y). O(m log n) searches."""
        x = as_features(x, "x", min_rows=0)
        if x.shape[1] != self.dim_x:
            raise ValueError(f"x: has {x.shape[1]} feature columns but the bank holds {self.dim_x}")
        if (y is None) != (self.dim_y is None):
            raise ValueError(
                "y: this bank "
                + (
                    "stores prompt features: pass y"
                    if self.dim_y is not None
                    else "has no prompts: pass y=None"
                )
            )
        if y is not None:
            y = as_features(y, "y", min_rows=0)
            check_rows_match(x, y, "x", "y")
            if y.shape[1] != self.dim_y:
                raise ValueError(f"y: has {y.shape[1]} feature columns but the bank holds {self.dim_y}")
        if x.shape[0] == 0:
            return
        self._reserve(x.shape[0])
        for start in range(0, x.shape[0], ADD_CHUNK):
            stop = min(start + ADD_CHUNK, x.shape[0])
            rows_x = x[start:stop].to(self.device, self.dtype)
            rows_y = None if y is None else y[start:stop].to(self.device, self.dtype)
            z = self._search_vectors(rows_x, rows_y)
            self._pair_sum += self._added_pairs(z)
            m = stop - start
            self._x[self._count : self._count + m] = rows_x
            self._nx[self._count : self._count + m] = _sq_norms(rows_x)
            if rows_y is not None:
                self._y[self._count : self._count + m] = rows_y
                self._ny[self._count : self._count + m] = _sq_norms(rows_y)
            self._count += m
            self._index.add(z)
            if self._count > FLAT_BELOW and not self._graph and self.search_mode == "faiss":
                self._to_graph()
            if self._count >= CELLS_FROM and (
                self._cells is None or self._count >= 2 * self._cells.trained_at
            ):
                self._cells = Cells.train(self._index, self._count, self.seed)
                self._cell_points.append(self._count)
            elif self._cells is not None:
                self._cells.assign(z, self._count - m)
        self._mark()

    def _reserve(self, m: int) -> None:
        """Grow the row buffers geometrically: amortised O(1) per row, views stay contiguous."""
        if self._count + m <= self._x.shape[0]:
            return
        size = max(self._count + m, 2 * self._x.shape[0], 16)

        def grown(old: torch.Tensor) -> torch.Tensor:
            fresh = old.new_empty((size, *old.shape[1:]))
            fresh[: self._count] = old[: self._count]
            return fresh

        self._x, self._nx = grown(self._x), grown(self._nx)
        if self._y is not None:
            self._y, self._ny = grown(self._y), grown(self._ny)

    def _added_pairs(self, z: np.ndarray) -> float:
        """Pair-sum increment of new rows with search vectors z: 2 (new x their nearest old rows) + new x new.

        Computed in the search space (exp(-|z - z'|^2), exact when nothing is projected): a normaliser only,
        it needs no pass over the full rows.
        """
        zt = torch.from_numpy(z).double()
        own = torch.exp(-squared_distances(zt, zt))
        own.diagonal().fill_(1.0)
        total = float(own.sum())
        if self._count:
            dist, ids = self._index.search(z, min(self.neighbors, self._count))
            total += 2.0 * float(np.exp(-dist[ids >= 0].astype(np.float64)).sum())
            if self.samples and self._count > self.neighbors:
                # the old rows the search left out, from uniform draws (as in ``direction``)
                drawn = self._rng.integers(0, self._count, size=self.samples)
                zs = torch.from_numpy(self._index.reconstruct_batch(drawn)).double()
                terms = torch.exp(-squared_distances(zt, zs)).numpy()
                for row in range(z.shape[0]):
                    terms[row, np.isin(drawn, ids[row])] = 0.0
                total += 2.0 * float(terms.sum()) * self._count / self.samples
        return total

    def _new_index(self):
        """Device flat scan (``search_mode`` "flat"), or FAISS: exact (flat) search while the bank is small, an
        HNSW graph above ``FLAT_BELOW`` rows."""
        self._graph = False
        if self.search_mode == "flat":
            return FlatIndex(self.search_columns, self.device)
        return faiss_module().IndexFlatL2(self.search_columns)

    def _to_graph(self) -> None:
        self._index, self._graph = graph_from(self._index, self.search_columns), True

    def _search_vectors(self, x: torch.Tensor, y: torch.Tensor | None) -> np.ndarray:
        """z = [P_x^T x / sigma_image, P_y^T y / sigma_prompt] as contiguous float32 numpy, (m, search_columns)."""
        # project where the rows live (on a GPU the full rows never cross to the host)
        zx = x.float()
        zx = (zx if self._proj_x is None else zx @ self._proj_x) / self.sigma_image
        parts = [zx.cpu()]
        if y is not None:
            zy = y.float()
            parts.append(((zy if self._proj_y is None else zy @ self._proj_y) / self.sigma_prompt).cpu())
        return np.ascontiguousarray(torch.cat(parts, 1).numpy(), dtype=np.float32)

    def _gather(self, name: str, rows: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """rows[idx] into a reused buffer (a fresh tensor per step costs page faults on a CPU)."""
        out = self._workspace.scratch(name, (idx.shape[0], rows.shape[1]), rows.dtype, rows.device)
        return torch.index_select(rows, 0, idx, out=out)

    def _estimate_rows(self, x: torch.Tensor, y: torch.Tensor | None):
        """Per batch row: (row ids, weights) whose weighted kernel sums estimate the sums over all rows.

        The ``neighbors`` nearest rows count once each (exact terms); the next ``(EXPAND - 1) * neighbors``
        found by the search are importance-sampled (half of ``samples`` draws, probability proportional to
        their search-space weight exp(-|z - z_j|^2) mixed half and half with uniform, each draw weighted
        1 / (draws * p)); the rest of the bank by the other half, drawn uniformly (each weighted n / draws) or,
        from ``CELLS_FROM`` rows on, through the k-means cells (``Cells.draw``), draws that hit a searched
        row dropped. Unbiased for the part beyond the nearest rows.
        """
        n = self._count
        wanted = min(n, EXPAND * self.neighbors)
        if self._graph:
            self._index.hnsw.efSearch = max(wanted, 64)  # breadth of the graph walk: recall of the top rows
        queries = self._search_vectors(x, y)
        dist, found = self._index.search(queries, wanted)
        for b in range(found.shape[0]):
            valid = found[b] >= 0
            ids, d = found[b][valid], dist[b][valid].astype(np.float64)
            near, rest, rest_d = ids[: self.neighbors], ids[self.neighbors :], d[self.neighbors :]
            parts, weights = [near], [np.ones(near.shape[0])]
            draws_is = self.samples // 2 if rest.shape[0] else 0
            draws_far = self.samples - draws_is
            if draws_is:
                p = np.exp(-(rest_d - rest_d.min()))
                p = 0.5 * p / p.sum() + 0.5 / rest.shape[0]
                pick = self._rng.choice(rest.shape[0], size=draws_is, p=p)
                parts.append(rest[pick])
                weights.append(1.0 / (draws_is * p[pick]))
            if draws_far and n > ids.shape[0]:
                if self._cells is None:
                    drawn, p_row = self._rng.integers(0, n, size=draws_far), np.full(draws_far, 1.0 / n)
                else:
                    drawn, p_row = self._cells.draw(queries[b], draws_far, self._rng)
                keep = ~np.isin(drawn, ids)
                parts.append(drawn[keep])
                weights.append(1.0 / (draws_far * p_row[keep]))
            yield np.concatenate(parts), np.concatenate(weights)

    # -- guidance --------------------------------------------------------------------------------------------
    def _base_spec(self) -> KernelSpec:
        return self.spec

    def _spec_direction(
        self, x: torch.Tensor, y: torch.Tensor | None, spec: KernelSpec, skipped: torch.Tensor | None
    ) -> torch.Tensor:
        """Approximate ``diversity_direction``: the objective is "cond-rke" for a bank with prompts and "rke"
        without; a spec (or keywords: those left out are the bank's own) must agree with the bank's. In-batch
        terms are exact; bank terms come from the candidate rows (module doc). "skip" zeroes the rows whose
        input or result is not finite."""
        self._check_agrees(spec)
        on_nonfinite = spec.on_nonfinite
        home = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        strict = on_nonfinite == "raise"
        x = as_features(x, "x", device=self.device, check_finite=strict)
        if x.shape[1] != self.dim_x:
            raise ValueError(f"x: has {x.shape[1]} feature columns but the bank holds {self.dim_x}")
        if self.dim_y is not None:
            if y is None:
                raise ValueError("y: this bank is prompt-aware: pass the batch's prompt features")
            y = as_features(y, "y", dtype=x.dtype, device=self.device, check_finite=strict)
            check_rows_match(x, y, "x", "y")
            if y.shape[1] != self.dim_y:
                raise ValueError(f"y: has {y.shape[1]} feature columns but the bank holds {self.dim_y}")
        else:
            y = None
        if strict:
            result = self._direction(x, y)
            check_finite_result(result, {"x": x, "y": y}, "gaussian", where="IndexedBank.direction")
            return result.to(home)
        # "skip": the search needs the host anyway, so bad rows are left out of the batch up front
        ok = torch.isfinite(x).all(1)
        if y is not None:
            ok &= torch.isfinite(y).all(1)
        result = torch.zeros_like(x)
        if bool(ok.all()):
            result = self._direction(x, y)
        elif bool(ok.any()):
            result[ok] = self._direction(x[ok], None if y is None else y[ok])
        return zero_nonfinite_rows(result, skipped, ok).to(home)

    def _check_agrees(self, spec: KernelSpec) -> None:
        """``ValueError`` when ``spec`` asks for another score than this bank computes."""
        own = self.spec
        if spec.objective != own.objective:
            raise ValueError(
                f"objective: this IndexedBank computes {own.objective!r} (it is built "
                f"{'without' if self.dim_y is None else 'with'} prompt features), not {spec.objective!r}"
            )
        if spec.kernel != self.kernel:
            raise ValueError(f"kernel: this IndexedBank uses the {self.kernel!r} kernel, got {spec.kernel!r}")
        names = ("sigma_image", "sigma_prompt") if self.dim_y is not None else ("sigma_image",)
        for name in names:  # without prompts sigma_prompt plays no part
            given, mine = getattr(spec, name), getattr(own, name)
            if given == "median" or not math.isclose(given, mine, rel_tol=1e-9):
                raise ValueError(f"{name}: the bank's search space is scaled by {name}={mine}, got {given}")

    def _direction(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The direction (B, dim_x) of checked, finite x, y on the bank's device."""
        if self._count <= self.neighbors + self.samples:  # as cheap to read every row: exact
            n = self._count  # views of the live rows: no copy
            return order2_direction(
                x,
                y,
                self._x[:n],
                None if y is None else self._y[:n],
                spec=self.spec,
                pair_sum=self._pair_sum,
                norm_x=self._nx[:n].to(x.dtype),
                norm_y=None if y is None else self._ny[:n].to(x.dtype),
                ws=self._workspace,
            )
        weight_sum = torch.zeros(x.shape[0], dtype=x.dtype, device=self.device)
        weighted = torch.zeros_like(x)
        cross = torch.zeros((), dtype=torch.float64, device=self.device)
        for b, (ids, weights) in enumerate(self._estimate_rows(x, y)):
            idx = torch.from_numpy(ids).to(self.device)
            wsum, wrows, crs = order2_sums(
                x[b : b + 1],
                None if y is None else y[b : b + 1],
                self._gather("gather_x", self._x, idx),
                None if y is None else self._gather("gather_y", self._y, idx),
                self._nx[idx].to(x.dtype),
                None if y is None else self._ny[idx].to(x.dtype),
                spec=self.spec,
                ws=self._workspace,
                row_weight=torch.from_numpy(weights).to(self.device, x.dtype),
            )
            weight_sum[b] = wsum[0]
            weighted[b] = wrows[0]
            cross = cross + crs
        return finish_direction(
            x,
            y,
            weight_sum,
            weighted,
            cross,
            self._pair_sum,
            spec=self.spec,
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> IndexedBank:
        """Move the rows (and projections, norms, search) in place; returns self. With ``search="auto"`` the
        search follows the rows: a device flat scan on CUDA, FAISS elsewhere (rebuilt from the kept keys)."""
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        if dtype not in STORAGE_DTYPES.values():
            raise ValueError(f"dtype: must be one of {', '.join(STORAGE_DTYPES)}, got {dtype}")
        if device == self.device and dtype == self.dtype:
            return self
        old_mode = self.search_mode
        self._x = self._x.to(device, dtype)
        self._y = None if self._y is None else self._y.to(device, dtype)
        if dtype != self.dtype:  # the exact kernel uses the rows as stored
            self._nx = _sq_norms(self._x)
            self._ny = None if self._y is None else _sq_norms(self._y)
        else:
            self._nx = self._nx.to(device)
            self._ny = None if self._ny is None else self._ny.to(device)
        self._proj_x = None if self._proj_x is None else self._proj_x.to(device)
        self._proj_y = None if self._proj_y is None else self._proj_y.to(device)
        self.device, self.dtype = device, dtype
        self._workspace = Workspace()
        if isinstance(self._index, FlatIndex) and self.search_mode == "flat":
            self._index.to(device)
        elif self.search_mode != old_mode:  # the search vectors do not change: copy them to the new index
            old = self._index
            self._index = self._new_index()
            for start in range(0, old.ntotal, 65536):
                stop = min(start + 65536, old.ntotal)
                self._index.add(old.reconstruct_n(start, stop - start))
            if self._count > FLAT_BELOW and self.search_mode == "faiss":
                self._to_graph()
        if self._cells is not None:  # the cells' nearest-centroid search goes with the index
            self._cells._assigner.to(self.device if self.search_mode == "flat" else torch.device("cpu"))
        return self

    def _load_rows(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        count: int,
        keys: torch.Tensor | None,
        cell_points: list[int] | None,
        path: Path,
    ) -> None:
        """A loaded file's rows (count, d), (count, e), and its index and cells rebuilt from the file's search
        vectors ``keys`` (an older file without them: from the rows) and the row counts at which the cells
        were trained (``cell_points``; None in an older file: trained on all rows, as it always did)."""
        self._reserve(count)
        self._x[:count] = x.to(self.device, self.dtype)
        self._nx[:count] = _sq_norms(self._x[:count])
        if y is not None:
            self._y[:count] = y.to(self.device, self.dtype)
            self._ny[:count] = _sq_norms(self._y[:count])
        self._count = count
        if keys is None:
            parts = [
                self._search_vectors(self._x[start : start + 65536], _slice(self._y, start, start + 65536))
                for start in range(0, count, 65536)
            ]
            keys = np.concatenate(parts)
        elif keys.shape != (count, self.search_columns) or keys.dtype != torch.float32:
            raise BankFileError(f"{path}: keys of shape {tuple(keys.shape)} do not match the bank's settings")
        else:
            keys = keys.numpy()
        self._cell_points = (
            [count] if cell_points is None and count >= CELLS_FROM else list(cell_points or [])
        )
        self._rebuild_search(keys)

    # -- files (``sparke.core.indexed_file``) ------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write rows, projections and settings to one safetensors file, atomically (temp file + rename)."""
        write_indexed_bank(self, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: torch.device | str = "cpu", *, search: str = "auto"
    ) -> IndexedBank:
        """Read a file written by ``save`` and rebuild its index (``search`` as in the constructor) on
        ``device``; ``BankFileError`` names what is wrong."""
        return read_indexed_bank(cls, path, device, search)


def _sq_norms(rows: torch.Tensor) -> torch.Tensor:
    """Squared row norms in float32, of the rows as stored (the exact kernel uses the stored values)."""
    return torch.linalg.vector_norm(rows.float(), dim=1).square_()


def _slice(y: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    return None if y is None else y[start:stop]
