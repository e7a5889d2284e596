"""A bank whose guidance direction reads only the nearest rows: sublinear in the bank size, through FAISS.

For Gaussian kernels the conditional weight of a bank row is one Gaussian kernel on a joint vector:

    k_x(x, r)^2 k_y(y, s)^2 = exp(-|x - r|^2 / sigma_x^2 - |y - s|^2 / sigma_y^2) = exp(-|z - z_r|^2),
    z = [x / sigma_x, y / sigma_y],

so the rows that dominate the order-2 direction (``diversity_direction``, objective "cond-rke", or "rke"
without prompts) are the nearest neighbours of z. The index (exact FAISS flat search up to 32,768 rows,
then an HNSW graph, approximate, about O(log n) per query) holds z after a fixed Gaussian random projection
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
safetensors file with the rows and the projections (no pickle), and the index is rebuilt on ``load``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._checks import as_features, check_kernel, check_objective, check_rows_match, check_sigma
from .bank import BankFileError, read_bank_file, save_atomically
from .fast import Workspace, finish_direction, order2_direction, order2_sums
from .kernels import squared_distances

FORMAT = "sparke.indexed_bank"
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# HNSW graph degree and construction breadth: about 1,500 rows/s per core to add, recall of the top 256
# good enough for the direction (docs/scale.md).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 40
# Below this many rows the search is exact (brute force over the short search vectors, under a millisecond).
FLAT_BELOW = 32_768
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


class IndexedBank:
    """Image features x: (n, dim_x), optional prompt features y: (n, dim_y), searchable by joint kernel.

    ``neighbors``: candidate rows per batch row read by ``direction``; ``samples``: rows drawn at random per
    step for the rest of the bank (default ``3 * neighbors``; 0 = none). ``sigma_x``/``sigma_y``: the Gaussian
    bandwidths, fixed because the search space is scaled by them. ``search_dim``: columns each of x and y is
    projected to for the search (only when larger). ``dtype``: storage type of the kept rows.
    """

    def __init__(
        self,
        dim_x: int,
        dim_y: int | None = None,
        *,
        neighbors: int = 256,
        samples: int | None = None,
        kernel: str = "gaussian",
        sigma_x: float = 0.8,
        sigma_y: float = 0.3,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        search_dim: int = 64,
        seed: int = 0,
        metadata: dict[str, Any] | None = None,
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
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype: must be one of {', '.join(_DTYPES)}, got {dtype}")
        self.dim_x, self.dim_y = dim_x, dim_y
        self.neighbors = neighbors
        if samples is None:
            samples = 3 * neighbors
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise ValueError(f"samples: must be a non-negative integer, got {samples!r}")
        self.samples = samples
        self._rng = np.random.default_rng(seed + 1)
        self.kernel = kernel
        self.sigma_x, self.sigma_y = check_sigma(sigma_x, "sigma_x"), check_sigma(sigma_y, "sigma_y")
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

    # -- reading ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"IndexedBank(n={self._count}, dim_x={self.dim_x}, dim_y={self.dim_y}, neighbors={self.neighbors}, "
            f"sigma_x={self.sigma_x}, sigma_y={self.sigma_y}, dtype={self.dtype}, device={self.device})"
        )

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
            if self._count > FLAT_BELOW and not self._graph:
                self._to_graph()
            if self._count >= CELLS_FROM and (
                self._cells is None or self._count >= 2 * self._cells.trained_at
            ):
                self._cells = _Cells.train(self._index, self._count, self.seed)
            elif self._cells is not None:
                self._cells.assign(z, self._count - m)

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
        """Exact (flat) search while the bank is small, an HNSW graph above ``FLAT_BELOW`` rows."""
        self._graph = False
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
        """z = [P_x^T x / sigma_x, P_y^T y / sigma_y] as contiguous float32 numpy, (m, search_columns)."""
        # project where the rows live (on a GPU the full rows never cross to the host)
        zx = x.float()
        zx = (zx if self._proj_x is None else zx @ self._proj_x) / self.sigma_x
        parts = [zx.cpu()]
        if y is not None:
            zy = y.float()
            parts.append(((zy if self._proj_y is None else zy @ self._proj_y) / self.sigma_y).cpu())
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
    def direction(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        objective: str | None = None,
        kernel: str | None = None,
        sigma_x: float | None = None,
        sigma_y: float | None = None,
    ) -> torch.Tensor:
        """Approximate ``diversity_direction`` of a batch x: (B, dim_x), y: (B, dim_y) against the bank.

        The objective is "cond-rke" for a bank with prompts and "rke" without; ``objective``, ``sigma_x`` and
        ``sigma_y`` may be passed (as the plug-in does) but must agree with the bank's. In-batch terms are
        exact; bank terms come from the candidate rows (module doc).
        """
        expected = "rke" if self.dim_y is None else "cond-rke"
        if objective is not None:
            check_objective(objective)
            if objective != expected:
                raise ValueError(
                    f"objective: this IndexedBank computes {expected!r} (it is built "
                    f"{'without' if self.dim_y is None else 'with'} prompt features), not {objective!r}"
                )
        if kernel is not None and check_kernel(kernel) != self.kernel:
            raise ValueError(f"kernel: this IndexedBank uses the {self.kernel!r} kernel, got {kernel!r}")
        checks = [("sigma_x", sigma_x, self.sigma_x)]
        if self.dim_y is not None:  # without prompts sigma_y plays no part
            checks.append(("sigma_y", sigma_y, self.sigma_y))
        for name, given, own in checks:
            if given is not None and not math.isclose(check_sigma(given, name), own, rel_tol=1e-9):
                raise ValueError(f"{name}: the bank's search space is scaled by {name}={own}, got {given}")
        home = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        x = as_features(x, "x", device=self.device)
        if x.shape[1] != self.dim_x:
            raise ValueError(f"x: has {x.shape[1]} feature columns but the bank holds {self.dim_x}")
        if self.dim_y is not None:
            if y is None:
                raise ValueError("y: this bank is prompt-aware: pass the batch's prompt features")
            y = as_features(y, "y", dtype=x.dtype, device=self.device)
            check_rows_match(x, y, "x", "y")
            if y.shape[1] != self.dim_y:
                raise ValueError(f"y: has {y.shape[1]} feature columns but the bank holds {self.dim_y}")
        else:
            y = None
        if self._count <= self.neighbors + self.samples:  # as cheap to read every row: exact
            n = self._count  # views of the live rows: no copy
            result = order2_direction(
                x,
                y,
                self._x[:n],
                None if y is None else self._y[:n],
                kernel="gaussian",
                sigma_x=self.sigma_x,
                sigma_y=self.sigma_y,
                pair_sum=self._pair_sum,
                norm_x=self._nx[:n].to(x.dtype),
                norm_y=None if y is None else self._ny[:n].to(x.dtype),
                ws=self._workspace,
            )
            return result.to(home)
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
                kernel="gaussian",
                sigma_x=self.sigma_x,
                sigma_y=self.sigma_y,
                ws=self._workspace,
                row_weight=torch.from_numpy(weights).to(self.device, x.dtype),
            )
            weight_sum[b] = wsum[0]
            weighted[b] = wrows[0]
            cross = cross + crs
        result = finish_direction(
            x,
            y,
            weight_sum,
            weighted,
            cross,
            self._pair_sum,
            kernel="gaussian",
            sigma_x=self.sigma_x,
            sigma_y=self.sigma_y,
        )
        return result.to(home)

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
                    "sigma_x": self.sigma_x,
                    "sigma_y": self.sigma_y,
                    "search_dim": self.search_dim,
                    "seed": self.seed,
                    "dtype": str(self.dtype).removeprefix("torch."),
                }
            ),
            "pair_sum": json.dumps(self._pair_sum),
            "user": json.dumps(self.metadata),
        }
        save_atomically(tensors, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> IndexedBank:
        """Read a file written by ``save`` and rebuild its index; ``BankFileError`` names what is wrong."""
        path = Path(path)
        meta, tensors = read_bank_file(path, FORMAT, FORMAT_VERSION, "indexed bank")
        try:
            count = int(meta["count"])
            settings = json.loads(meta["settings"])
            pair_sum = float(json.loads(meta["pair_sum"]))
            user = json.loads(meta["user"])
            dtype = _DTYPES[settings.pop("dtype")]
            bank = cls(
                settings.pop("dim_x"),
                settings.pop("dim_y"),
                device=device,
                dtype=dtype,
                metadata=user,
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
            for start in range(0, count, 65536):  # rebuild the index from the stored rows
                stop = min(start + 65536, count)
                bank._index.add(bank._search_vectors(bank._x[start:stop], _slice(bank._y, start, stop)))
            if count > FLAT_BELOW:
                bank._to_graph()
            if count >= CELLS_FROM:
                bank._cells = _Cells.train(bank._index, count, bank.seed)
        bank._pair_sum = pair_sum
        return bank


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

    def __init__(self, centroids: np.ndarray, trained_at: int) -> None:
        self.centroids = centroids  # (C, columns) float32
        self.trained_at = trained_at
        self._assigner = _faiss().IndexFlatL2(centroids.shape[1])
        self._assigner.add(centroids)
        self.sizes = np.zeros(centroids.shape[0], dtype=np.int64)
        self._members = [np.empty(0, dtype=np.int64) for _ in range(centroids.shape[0])]

    @classmethod
    def train(cls, index: Any, count: int, seed: int) -> _Cells:
        """Cells for the ``count`` rows of ``index`` (k-means on at most 64 rows per cell, 10 iterations)."""
        faiss = _faiss()
        cells = max(1, min(MAX_CELLS, count // ROWS_PER_CELL))
        rng = np.random.default_rng(seed + count)
        sample = np.sort(rng.choice(count, size=min(count, 64 * cells), replace=False))
        kmeans = faiss.Kmeans(index.d, cells, niter=10, seed=seed, verbose=False, max_points_per_centroid=64)
        kmeans.train(index.reconstruct_batch(sample))
        out = cls(np.ascontiguousarray(kmeans.centroids, dtype=np.float32), count)
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
