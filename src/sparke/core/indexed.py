"""A bank whose guidance direction reads only the nearest rows: sublinear in the bank size, through FAISS.

For Gaussian kernels the conditional weight of a bank row is one Gaussian kernel on a joint vector:

    k_x(x, r)^2 k_y(y, s)^2 = exp(-|x - r|^2 / sigma_image^2 - |y - s|^2 / sigma_prompt^2) = exp(-|z - z_r|^2),
    z = [x / sigma_image, y / sigma_prompt],

so the rows that dominate the order-2 direction (``diversity_direction``, objective "cond-rke", or "rke"
without prompts) are the nearest neighbours of z. The search runs where the rows live (``search``): on the
CPU a FAISS index (exact flat search up to 32,768 rows, then an HNSW graph, approximate, about O(log n) per
query); on CUDA an exact flat scan on the device (one matrix product plus ``torch.topk`` over the search
vectors, 10^6 x 128 float32 = 0.5 GB). Either holds z after a fixed Gaussian random projection
of each part to at most ``search_dim`` columns (squared distances preserved in expectation, relative error
about sqrt(2 / search_dim)); the rows it returns are then weighted with the exact kernel on the full rows.

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

Rows are kept (on ``device``, in ``dtype``) for the exact kernel and for ``save``; files are one
safetensors file with the rows, the projections and the search vectors (no pickle), and the index is rebuilt
from those on ``load`` (the search mode is not saved: it is chosen again for the device the bank is loaded on).

Replays are exact: the file keeps the random stream's state, and after each ``add`` the bank remembers its pair
sum and random state (``truncate(n)`` goes back to them) and when its cells were trained, so a loaded or
truncated bank draws what the bank it was would have drawn. One limit: past ``FLAT_BELOW`` rows the FAISS
search is an HNSW graph, whose shape depends on the order and grouping of its inserts (and on threads), so a
rebuilt graph may return other candidates than the live one did: there a replay is statistically, not
bitwise, the same (the device flat search, on CUDA, stays exact at any size).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .bank import BankFileError, read_bank_file
from .bank import _pack_marks as pack_exact_marks
from .bank import _unpack_marks as unpack_exact_marks
from .checks import (
    as_features,
    check_finite_result,
    check_kernel,
    check_rows_match,
    check_sigma,
    renamed_bandwidths,
    zero_nonfinite_rows,
)
from .defaults import SIGMA_IMAGE, SIGMA_PROMPT
from .fast import Workspace, finish_direction, order2_direction, order2_sums
from .files import atomic_write
from .kernels import squared_distances
from .spec import KernelSpec, ScoresBatches

FORMAT = "sparke.indexed_bank"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# HNSW graph degree and construction breadth: about 1,500 rows/s per core to add, recall of the top 256
# good enough for the direction (docs/scale.md).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
# Below this many rows the search is exact (brute force over the short search vectors, under a millisecond).
FLAT_BELOW = 32_768
# Device flat search: keys scanned per product (B x chunk distances at a time).
SEARCH_CHUNK = 1 << 20
SEARCHES = ("auto", "faiss", "flat")
# Rows added per search: new rows are compared with their nearest old rows and exactly among themselves.
ADD_CHUNK = 1024
# Rows searched per batch row, in multiples of ``neighbors``: the nearest are exact, the others sampled.
EXPAND = 8
# From this many rows on, the draws for the rest of the bank come from a k-means partition of the search
# vectors (cells of about ROWS_PER_CELL rows, at most MAX_CELLS, retrained each time the bank doubles):
# a cell is drawn with probability ~ size * exp(-CELL_TEMPER * |z - centroid|^2), mixed with
# CELL_UNIFORM of plain size-proportional draws, then a row uniformly inside it. When thousands of rows
# share a prompt, uniform draws over the whole bank rarely land among them; cell draws mostly do.
CELLS_FROM = 8192
ROWS_PER_CELL = 64
MAX_CELLS = 1024
CELL_TEMPER = 0.5
CELL_UNIFORM = 0.1


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sparke.IndexedBank needs FAISS: pip install faiss-cpu (or faiss-gpu), or pip install 'sparke[index]'"
        ) from None
    return faiss


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
        for name, value in (("dim_x", dim_x), ("neighbors", neighbors), ("search_dim", search_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if dim_y is not None and (not isinstance(dim_y, int) or isinstance(dim_y, bool) or dim_y < 1):
            raise ValueError(f"dim_y: must be a positive integer or None, got {dim_y!r}")
        check_kernel(kernel)
        if kernel != "gaussian":
            raise ValueError(
                "kernel: IndexedBank supports 'gaussian' only (the squared cosine kernel is not a function of "
                "a distance, so nearest neighbours do not carry its weight); use sparke.Bank"
            )
        if dtype not in STORAGE_DTYPES.values():
            raise ValueError(f"dtype: must be one of {', '.join(STORAGE_DTYPES)}, got {dtype}")
        self.dim_x, self.dim_y = dim_x, dim_y
        self.neighbors = neighbors
        if samples is None:
            samples = 3 * neighbors
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise ValueError(f"samples: must be a non-negative integer, got {samples!r}")
        self.samples = samples
        self._rng = np.random.default_rng(seed + 1)
        self.kernel = kernel
        self.sigma_image = check_sigma(sigma_image, "sigma_image")
        self.sigma_prompt = check_sigma(sigma_prompt, "sigma_prompt")
        # what the bank computes: the order-2 score ("cond-rke", or "rke" without prompts) with its kernel
        self.spec = KernelSpec(
            "rke" if dim_y is None else "cond-rke", kernel, self.sigma_image, self.sigma_prompt
        )
        if search not in SEARCHES:
            raise ValueError(f"search: must be one of {', '.join(SEARCHES)}, got {search!r}")
        self.search = search
        self.device = torch.device(device)
        self.dtype = dtype
        self.search_dim = search_dim
        self.seed = seed
        self.metadata: dict[str, Any] = dict(metadata or {})
        gen = torch.Generator().manual_seed(seed)
        self._proj_x = _projection(dim_x, search_dim, gen, self.device)
        self._proj_y = None if dim_y is None else _projection(dim_y, search_dim, gen, self.device)
        self._x = torch.empty((0, dim_x), device=self.device, dtype=dtype)
        self._y = None if dim_y is None else torch.empty((0, dim_y), device=self.device, dtype=dtype)
        # squared row norms (float32), kept at add time so a step reads only the candidate rows once
        self._nx = torch.empty(0, device=self.device)
        self._ny = None if dim_y is None else torch.empty(0, device=self.device)
        self._count = 0
        self._pair_sum = 0.0
        self._workspace = Workspace()
        self._index = self._new_index()
        self._cells: _Cells | None = None
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
            self._cells = _Cells.train(self._index, trained, self.seed)
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
                self._cells = _Cells.train(self._index, self._count, self.seed)
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
            return _FlatIndex(self.search_columns, self.device)
        return _faiss().IndexFlatL2(self.search_columns)

    def _to_graph(self) -> None:
        faiss = _faiss()
        graph = faiss.IndexHNSWFlat(self.search_columns, HNSW_M)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        for start in range(0, self._index.ntotal, 65536):
            stop = min(start + 65536, self._index.ntotal)
            graph.add(self._index.reconstruct_n(start, stop - start))
        self._index, self._graph = graph, True

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
        from ``CELLS_FROM`` rows on, through the k-means cells (``_Cells.draw``), draws that hit a searched
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
        if isinstance(self._index, _FlatIndex) and self.search_mode == "flat":
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

    # -- files -----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write rows, projections and settings to one safetensors file, atomically (temp file + rename)."""

        path = Path(path)
        tensors = {"x": self.x.contiguous().cpu()}
        if self._y is not None:
            tensors["y"] = self.y.contiguous().cpu()
        if self._proj_x is not None:
            tensors["proj_x"] = self._proj_x.contiguous().cpu()
        if self._proj_y is not None:
            tensors["proj_y"] = self._proj_y.contiguous().cpu()
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "count": str(self._count),
            "settings": json.dumps(
                {
                    "dim_x": self.dim_x,
                    "dim_y": self.dim_y,
                    "neighbors": self.neighbors,
                    "samples": self.samples,
                    "kernel": self.kernel,
                    # the file keeps the names of format version 1, so older sparke reads it
                    "sigma_x": self.sigma_image,
                    "sigma_y": self.sigma_prompt,
                    "search_dim": self.search_dim,
                    "seed": self.seed,
                    "dtype": str(self.dtype).removeprefix("torch."),
                }
            ),
            "pair_sum": json.dumps(self._pair_sum),
            "user": json.dumps(self.metadata),
            "rng": json.dumps(self._rng.bit_generator.state),
            "cell_points": json.dumps(self._cell_points),
        }
        if self._count:  # the search vectors as indexed: recomputed, a product could round otherwise
            tensors["keys"] = torch.from_numpy(self._index.reconstruct_n(0, self._count))
            tensors["marks"] = _pack_marks(self._marks)
        if self.exact_marks:
            meta["exact_mark_keys"], tensors["exact_marks"] = pack_exact_marks(self.exact_marks)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: torch.device | str = "cpu", *, search: str = "auto"
    ) -> IndexedBank:
        """Read a file written by ``save`` and rebuild its index (``search`` as in the constructor) on
        ``device``; ``BankFileError`` names what is wrong."""
        path = Path(path)
        meta, tensors = read_bank_file(path, FORMAT, FORMAT_VERSION, "indexed bank")
        try:
            count = int(meta["count"])
            settings = json.loads(meta["settings"])
            pair_sum = float(json.loads(meta["pair_sum"]))
            user = json.loads(meta["user"])
            dtype = STORAGE_DTYPES[settings.pop("dtype")]
            sigmas = {"sigma_image": settings.pop("sigma_x"), "sigma_prompt": settings.pop("sigma_y")}
            bank = cls(
                settings.pop("dim_x"),
                settings.pop("dim_y"),
                device=device,
                dtype=dtype,
                metadata=user,
                search=search,
                **sigmas,
                **settings,
            )
        except (KeyError, ValueError, TypeError) as error:
            raise BankFileError(f"{path}: indexed bank metadata is incomplete or corrupt ({error})") from None
        x, y = tensors.get("x"), tensors.get("y")
        if x is None or x.ndim != 2 or x.shape != (count, bank.dim_x):
            shape = None if x is None else tuple(x.shape)
            raise BankFileError(f"{path}: x has shape {shape} but the metadata says {count} x {bank.dim_x}")
        if (y is None) != (bank.dim_y is None) or (y is not None and y.shape != (count, bank.dim_y)):
            shape = None if y is None else tuple(y.shape)
            raise BankFileError(f"{path}: y has shape {shape} but the metadata says {count} x {bank.dim_y}")
        for name in ("proj_x", "proj_y"):
            mine, stored = getattr(bank, "_" + name), tensors.get(name)
            if (mine is None) != (stored is None) or (stored is not None and stored.shape != mine.shape):
                raise BankFileError(f"{path}: {name} does not match the bank's settings")
            if stored is not None:
                setattr(bank, "_" + name, stored.float().to(bank.device))
        if not (bool(torch.isfinite(x).all()) and (y is None or bool(torch.isfinite(y).all()))):
            raise BankFileError(f"{path}: bank rows contain NaN or Inf values")
        if count:
            bank._reserve(count)
            bank._x[:count] = x.to(bank.device, dtype)
            bank._nx[:count] = _sq_norms(bank._x[:count])
            if y is not None:
                bank._y[:count] = y.to(bank.device, dtype)
                bank._ny[:count] = _sq_norms(bank._y[:count])
            bank._count = count
            bank._restore_search(path, meta, tensors)
        bank._pair_sum = pair_sum
        try:
            if "rng" in meta:
                bank._rng.bit_generator.state = json.loads(meta["rng"])
            if "marks" in tensors:
                bank._marks = _unpack_marks(tensors["marks"], count)
            elif count:  # an older file: the bank goes back to 0 rows only
                bank._mark()
            if "exact_marks" in tensors:
                bank.exact_marks = unpack_exact_marks(meta["exact_mark_keys"], tensors["exact_marks"], None)
        except (KeyError, ValueError, TypeError) as error:
            raise BankFileError(f"{path}: indexed bank marks are incomplete or corrupt ({error})") from None
        return bank

    def _restore_search(self, path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
        """The index and cells of a loaded bank, from the file's search vectors (or, in an older file without
        them, from the rows) and the row counts at which the cells were trained."""
        count = self._count
        keys = tensors.get("keys")
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
        try:
            points = json.loads(meta["cell_points"]) if "cell_points" in meta else None
        except ValueError as error:
            raise BankFileError(f"{path}: cell_points is corrupt ({error})") from None
        # an older file did not say: its cells are trained on all rows, as it always did
        self._cell_points = [count] if points is None and count >= CELLS_FROM else list(points or [])
        self._rebuild_search(keys)


_WORD = (1 << 64) - 1


def _pack_marks(marks: dict[int, tuple[float, dict[str, Any]]]) -> torch.Tensor:
    """int64 tensor (k, 8), one row a mark, of unsigned 64-bit words: row count, the pair sum's float64 bits,
    the PCG64 state and increment (two words each), has_uint32, uinteger."""
    rows = []
    for count, (pair_sum, state) in sorted(marks.items()):
        pcg = state["state"]
        bits = int(np.float64(pair_sum).view(np.uint64))
        rows.append(
            [count, bits, pcg["state"] >> 64, pcg["state"] & _WORD, pcg["inc"] >> 64, pcg["inc"] & _WORD]
        )
        rows[-1] += [state["has_uint32"], state["uinteger"]]
    return torch.from_numpy(np.array(rows, dtype=np.uint64).reshape(-1, 8).view(np.int64))


def _unpack_marks(table: torch.Tensor, count: int) -> dict[int, tuple[float, dict[str, Any]]]:
    if table.ndim != 2 or table.shape[1] != 8 or table.dtype != torch.int64:
        raise ValueError(f"marks of shape {tuple(table.shape)}")
    marks = {}
    for row in table.numpy().view(np.uint64).tolist():
        n, bits, state_hi, state_lo, inc_hi, inc_lo, has_uint32, uinteger = row
        state = {
            "bit_generator": "PCG64",
            "state": {"state": state_hi << 64 | state_lo, "inc": inc_hi << 64 | inc_lo},
            "has_uint32": has_uint32,
            "uinteger": uinteger,
        }
        marks[n] = (float(np.uint64(bits).view(np.float64)), state)
    if count not in marks or any(n > count for n in marks):
        raise ValueError(f"marks do not end at the bank's {count} rows")
    return marks


def _projection(dim: int, search_dim: int, gen: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """(dim, search_dim) Gaussian matrix / sqrt(search_dim) (drawn on the CPU: the same on every device),
    or None when dim is already small enough."""
    if dim <= search_dim:
        return None
    return (torch.randn(dim, search_dim, generator=gen) / math.sqrt(search_dim)).to(device)


def _sq_norms(rows: torch.Tensor) -> torch.Tensor:
    """Squared row norms in float32, of the rows as stored (the exact kernel uses the stored values)."""
    return torch.linalg.vector_norm(rows.float(), dim=1).square_()


def _slice(y: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    return None if y is None else y[start:stop]


class _Cells:
    """A k-means partition of the search vectors, to draw bank rows near a query without reading them all.

    ``draw`` is importance sampling: a cell with probability pi_c (from its size and its centroid's distance to
    the query, mixed with size-proportional), then a row uniformly in it, so row r of cell c has probability
    pi_c / size_c > 0 for every row: weighting each draw by 1 / (draws * p) keeps sums unbiased.
    """

    def __init__(self, centroids: np.ndarray, trained_at: int, device: torch.device | str = "cpu") -> None:
        self.centroids = centroids  # (C, columns) float32
        self.trained_at = trained_at
        self._assigner = _FlatIndex(centroids.shape[1], torch.device(device))  # nearest centroid, exact
        self._assigner.add(centroids)
        self.sizes = np.zeros(centroids.shape[0], dtype=np.int64)
        self._members = [np.empty(0, dtype=np.int64) for _ in range(centroids.shape[0])]

    @classmethod
    def train(cls, index: Any, count: int, seed: int) -> _Cells:
        """Cells for the ``count`` rows of ``index`` (k-means on at most 64 rows per cell, 10 iterations:
        FAISS's for a FAISS index, ``_kmeans`` on the device for a device flat index)."""
        cells = max(1, min(MAX_CELLS, count // ROWS_PER_CELL))
        rng = np.random.default_rng(seed + count)
        sample = np.sort(rng.choice(count, size=min(count, 64 * cells), replace=False))
        if isinstance(index, _FlatIndex):
            centroids = _kmeans(index.keys[torch.from_numpy(sample).to(index.device)], cells, seed)
        else:
            kmeans = _faiss().Kmeans(
                index.d, cells, niter=10, seed=seed, verbose=False, max_points_per_centroid=64
            )
            kmeans.train(index.reconstruct_batch(sample))
            centroids = kmeans.centroids
        device = index.device if isinstance(index, _FlatIndex) else "cpu"
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


class _FlatIndex:
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
