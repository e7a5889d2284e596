"""The memory bank: features of everything generated so far, with their prompt features.

Rows live in one preallocated buffer that grows geometrically, so ``add`` is amortised O(1) per row and
``bank.x`` is always a contiguous view, oldest row first. With a capacity the buffer holds up to twice the
capacity; evicted rows are dropped from the front and the live rows are moved back to the start only when
the buffer end is reached, once per ``capacity`` additions.

The bank also keeps, per kernel setting that has been asked for, the sum of squared kernel entries over its
own pairs: the normaliser of the guidance direction, kept up to date in O(m n d) per ``add`` of m rows
instead of O(n^2 d) per guided step. A bank without a capacity also remembers those sums after each ``add``
(one float per sum and add), so that ``truncate(n)`` cuts it back to the state it had at n rows exactly: a
resumed run replays its later batches bit for bit.

Files are one safetensors file (no pickle): tensors ``x`` and optionally ``y``, and string metadata.

``Bank`` satisfies ``protocol.BankLike``, what the guidance plug-in needs from a bank.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .checks import (
    as_features,
    check_bandwidths,
    check_device,
    check_kernel,
    check_rows_match,
    renamed_bandwidths,
)
from .defaults import KERNEL, SIGMA_IMAGE, SIGMA_PROMPT
from .direction import bank_pair_sum, diversity_direction
from .files import atomic_write
from .kernels import squared_kernel_sum
from .order2 import Workspace, bank_direction
from .spec import KernelSpec, ScoresBatches

FORMAT = "sparke.bank"
FORMAT_VERSION = 1
STORAGE_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class BankFileError(ValueError):
    """A bank file that cannot be loaded; the message names the file and the problem."""


class Bank(ScoresBatches):
    """Rows of image features x: (n, d) and optional prompt features y: (n, e), oldest first.

    ``capacity`` bounds n (oldest rows evicted first); ``dtype`` is the storage type (float16/bfloat16 halve
    the memory; the scores and directions still compute in float32). ``device`` must exist on this machine
    (``ValueError`` otherwise); ``to`` moves the bank. ``metadata`` is a free-form JSON-able dict saved with the
    bank (model id, feature space, kernel, bandwidths, ...).
    """

    def __init__(
        self,
        capacity: int | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"capacity: must be a positive integer or None, got {capacity!r}")
        if dtype not in STORAGE_DTYPES.values():
            raise ValueError(f"dtype: must be one of {', '.join(STORAGE_DTYPES)}, got {dtype}")
        self.capacity = capacity
        self._device = check_device(device)
        self._dtype = dtype
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._start = 0
        self._count = 0
        self._has_y: bool | None = None
        self._pair_sums: dict[str, float] = {}
        # row count after each add -> the pair sums kept then (no capacity: nothing is evicted)
        self._marks: dict[int, dict[str, float]] = {}
        self._workspace: Workspace | None = (
            None  # of the order-2 direction: cached row norms, scratch buffers
        )

    # -- reading ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return (
            f"Bank(n={self._count}, dim_x={self.dim_x}, dim_y={self.dim_y}, capacity={self.capacity}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        """Where the rows live (change it with ``to``)."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """Storage type of the rows (change it with ``to``)."""
        return self._dtype

    @property
    def dim_x(self) -> int | None:
        return None if self._x is None else self._x.shape[1]

    @property
    def dim_y(self) -> int | None:
        return None if self._y is None else self._y.shape[1]

    @property
    def x(self) -> torch.Tensor:
        """(n, d) view of the image features, oldest first; (0, 0) before the first ``add``."""
        if self._x is None:
            return torch.zeros((0, 0), device=self.device, dtype=self.dtype)
        return self._x[self._start : self._start + self._count]

    @property
    def y(self) -> torch.Tensor | None:
        """(n, e) view of the prompt features, oldest first, or None for a bank without prompts."""
        if self._y is None:
            return None
        return self._y[self._start : self._start + self._count]

    @property
    def buffer_x(self) -> torch.Tensor | None:
        """The preallocated (size, d) buffer holding the rows at ``offset : offset + len(bank)`` (read only).

        Rows are only ever written after the live ones; when the bank grows or moves it gets a new buffer.
        ``fast.Workspace`` relies on this to compute the norms of new rows only.
        """
        return self._x

    @property
    def buffer_y(self) -> torch.Tensor | None:
        """The buffer of the prompt features, as ``buffer_x`` (None for a bank without prompts)."""
        return self._y

    @property
    def offset(self) -> int:
        """Index of the oldest live row in ``buffer_x`` and ``buffer_y``."""
        return self._start

    def workspace(self, project_dim: int | None = None) -> Workspace:
        """The ``fast.Workspace`` of this bank's order-2 direction (made anew when ``project_dim`` changes)."""
        if self._workspace is None or self._workspace.project_dim != project_dim:
            self._workspace = Workspace(project_dim)
        return self._workspace

    # -- writing ---------------------------------------------------------------------------------------------
    def add(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | None = None) -> None:
        """Append rows x: (m, d) and, for a prompt-aware bank, their prompt features y: (m, e)."""
        x = as_features(x, "x", min_rows=0)
        if y is not None:
            y = as_features(y, "y", min_rows=0)
            check_rows_match(x, y, "x", "y")
        if self._has_y is not None and self._has_y != (y is not None):
            raise ValueError(
                "y: this bank "
                + ("stores prompt features: pass y" if self._has_y else "has no prompt features: pass y=None")
            )
        if self._x is not None and x.shape[1] != self.dim_x:
            raise ValueError(f"x: has {x.shape[1]} feature columns but the bank holds {self.dim_x}")
        if y is not None and self._y is not None and y.shape[1] != self.dim_y:
            raise ValueError(f"y: has {y.shape[1]} feature columns but the bank holds {self.dim_y}")
        if x.shape[0] == 0:
            return
        self._has_y = y is not None
        if self.capacity is not None and x.shape[0] > self.capacity:
            x = x[-self.capacity :]
            y = None if y is None else y[-self.capacity :]
        x = x.to(self.device, self.dtype)
        y = None if y is None else y.to(self.device, self.dtype)
        self._update_pair_sums(x, y)
        m = x.shape[0]
        if self.capacity is not None and self._count + m > self.capacity:
            evict = self._count + m - self.capacity
            self._start += evict
            self._count -= evict
        self._reserve(m, x.shape[1], None if y is None else y.shape[1])
        stop = self._start + self._count
        self._x[stop : stop + m] = x
        if y is not None:
            self._y[stop : stop + m] = y
        self._count += m
        self._mark()

    def _mark(self) -> None:
        if self.capacity is None:
            self._marks[self._count] = dict(self._pair_sums)

    def truncate(self, n: int) -> None:
        """Keep the oldest ``n`` rows and the pair sums the bank kept when it held them: the bank is as it was
        after the ``add`` that brought it to n rows (``ValueError`` for a count it never had after an add, and
        for a bank with a capacity, whose evicted rows are gone)."""
        if self.capacity is not None:
            raise ValueError("truncate: a bank with a capacity has evicted rows; it cannot be cut back")
        if n == self._count:
            return
        if not (isinstance(n, int) and 0 <= n < self._count) or (n and n not in self._marks):
            raise ValueError(f"truncate: the bank never held exactly {n!r} rows after an add")
        self._pair_sums = dict(self._marks.get(n, {}))
        self._marks = {count: sums for count, sums in self._marks.items() if count <= n}
        self._count = n
        # new buffers: the workspace computes the norms of the kept rows again, as for a loaded bank
        self._x = self._moved(self._x, self._x.shape[0], self._x.shape[1])
        if self._y is not None:
            self._y = self._moved(self._y, self._y.shape[0], self._y.shape[1])
        self._start = 0
        self._workspace = None

    def _reserve(self, m: int, dim_x: int, dim_y: int | None) -> None:
        """Make room for m more rows after the live ones: grow geometrically (to at most twice the capacity),
        and once at that size move the live rows back to the front."""
        size = 0 if self._x is None else self._x.shape[0]
        if self._start + self._count + m <= size:
            return
        limit = None if self.capacity is None else 2 * self.capacity
        if limit is None or size < limit:
            size = max(self._count + m, 2 * size, 16)
            size = size if limit is None else min(size, limit)
        self._x = self._moved(self._x, size, dim_x)
        if dim_y is not None:
            self._y = self._moved(self._y, size, dim_y)
        self._start = 0

    def _moved(self, old: torch.Tensor | None, size: int, dim: int) -> torch.Tensor:
        fresh = torch.empty((size, dim), device=self.device, dtype=self.dtype)
        if old is not None and self._count:
            fresh[: self._count] = old[self._start : self._start + self._count]
        return fresh

    def _update_pair_sums(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Keep every tracked pair sum exact across this add and the evictions it causes."""
        if not self._pair_sums:
            return
        m = x.shape[0]
        evict = 0 if self.capacity is None else max(0, self._count + m - self.capacity)
        old_x, old_y = self.x, self.y
        kept_x = old_x[evict:]
        kept_y = None if old_y is None else old_y[evict:]
        gone_x = old_x[:evict]
        gone_y = None if old_y is None else old_y[:evict]
        for key in list(self._pair_sums):
            kernel, sigma_image, sigma_prompt, conditional = _parse_key(key)

            def pairs(a, b, ay, by, same=False, _k=kernel, _si=sigma_image, _sp=sigma_prompt, _c=conditional):
                if a.shape[0] == 0 or b.shape[0] == 0:
                    return 0.0
                a, b = _compute_type(a), _compute_type(b)
                ay = _compute_type(ay) if _c else None
                by = _compute_type(by) if _c else None
                return squared_kernel_sum(
                    a, b, ay, by, kernel=_k, sigma_image=_si, sigma_prompt=_sp, same=same
                )

            value = self._pair_sums[key]
            # remove the evicted rows' pairs: with everything old, counted twice, minus their own double count
            value -= 2.0 * pairs(gone_x, old_x, gone_y, old_y) - pairs(gone_x, gone_x, gone_y, gone_y, True)
            value += 2.0 * pairs(x, kept_x, y, kept_y) + pairs(x, x, y, y, True)
            self._pair_sums[key] = value

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Bank:
        """Move the rows to ``device`` and/or store them as ``dtype``, in place; returns self (like
        ``torch.nn.Module.to``). The kept pair sums stay (a change of dtype rounds the rows, not the sums);
        cached row norms are recomputed at the next direction."""
        device = self._device if device is None else check_device(device)
        dtype = self._dtype if dtype is None else dtype
        if dtype not in STORAGE_DTYPES.values():
            raise ValueError(f"dtype: must be one of {', '.join(STORAGE_DTYPES)}, got {dtype}")
        if device == self._device and dtype == self._dtype:
            return self
        if self._x is not None:  # only the live rows move: the new buffers are full, ``add`` grows them
            self._x = self.x.to(device, dtype)
            self._y = None if self._y is None else self.y.to(device, dtype)
            self._start = 0
        self._device, self._dtype = device, dtype
        self._workspace = None
        return self

    # -- guidance --------------------------------------------------------------------------------------------
    @renamed_bandwidths
    def pair_sum(
        self,
        *,
        kernel: str = KERNEL,
        sigma_image: float = SIGMA_IMAGE,
        sigma_prompt: float = SIGMA_PROMPT,
        conditional: bool = True,
    ) -> float:
        """sum over the bank's own pairs of k_x^2 (times k_y^2 when conditional): computed once, then kept.

        A host number: reading it again costs no device sync.
        """
        key, sigma_image, sigma_prompt, conditional = self._pair_sum_key(
            kernel, sigma_image, sigma_prompt, conditional
        )
        if key not in self._pair_sums:
            bx, by = self.x, self.y if conditional else None
            self._pair_sums[key] = bank_pair_sum(
                bx, by, kernel=kernel, sigma_image=sigma_image, sigma_prompt=sigma_prompt, max_work=1 << 62
            )[0]
        return self._pair_sums[key]

    @renamed_bandwidths
    def set_pair_sum(
        self,
        value: float,
        *,
        kernel: str = KERNEL,
        sigma_image: float = SIGMA_IMAGE,
        sigma_prompt: float = SIGMA_PROMPT,
        conditional: bool = True,
    ) -> None:
        """Keep ``value`` as the pair sum of these settings instead of computing it (O(n^2 d)): for benchmarks
        and banks whose pair sum is known; it is kept up to date by later ``add`` calls like a computed one."""
        key = self._pair_sum_key(kernel, sigma_image, sigma_prompt, conditional)[0]
        self._pair_sums[key] = float(value)
        if self._count:  # a given figure cannot be recomputed: ``truncate`` to this count keeps it
            self._mark()

    def kept_pair_sum(
        self, sigma_image: float, sigma_prompt: float, kernel: str = KERNEL, conditional: bool = True
    ) -> float | None:
        """The pair sum of these settings if the bank already keeps it, else None (never computed here)."""
        value = self._pair_sums.get(self._pair_sum_key(kernel, sigma_image, sigma_prompt, conditional)[0])
        return None if value is None else float(value)

    def _pair_sum_key(
        self, kernel: str, sigma_image: float, sigma_prompt: float, conditional: bool
    ) -> tuple[str, float, float, bool]:
        """(key of a kept pair sum, checked sigma_image, sigma_prompt, whether the prompts count)."""
        check_kernel(kernel)
        sigma_image, sigma_prompt = check_bandwidths(sigma_image, sigma_prompt)
        conditional = conditional and self._y is not None
        return (
            _key(kernel, sigma_image, sigma_prompt if conditional else None),
            sigma_image,
            sigma_prompt,
            conditional,
        )

    def reserve(self, rows: int, dim_x: int, dim_y: int | None = None) -> None:
        """Allocate room for ``rows`` more rows now (one allocation instead of geometric growth): for filling a
        large bank in chunks. ``dim_x``/``dim_y`` must match the bank's once it has rows."""
        if not (isinstance(rows, int) and rows >= 0):
            raise ValueError(f"rows: must be an integer >= 0, got {rows!r}")
        if self.dim_x is not None and (dim_x, dim_y) != (self.dim_x, self.dim_y):
            raise ValueError(
                f"dim_x, dim_y: the bank holds ({self.dim_x}, {self.dim_y}), got ({dim_x}, {dim_y})"
            )
        self._reserve(rows, dim_x, dim_y)

    def _spec_direction(
        self, x: torch.Tensor, y: torch.Tensor | None, spec: KernelSpec, skipped: torch.Tensor | None
    ) -> torch.Tensor:
        """``diversity_direction`` of the batch against this bank, with the kept pair sum; for "rke"/"cond-rke"
        on a bank whose pair sum is kept, ``on_nonfinite="skip"`` has no host sync (pass ``skipped`` on the
        bank's device)."""
        if spec.order2:
            # the fast path: cached row norms, the kept pair sum, no per-step allocation, half rows as stored
            return bank_direction(self, x, y, spec, skipped=skipped)
        conditional = spec.conditional
        return diversity_direction(
            x,
            y if conditional else None,
            self.x if len(self) else None,
            self.y if conditional else None,
            **spec.keywords(),
            skipped=skipped,
        )

    # -- files -----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the bank to one safetensors file, atomically (temporary file in the same folder + rename)."""
        path = Path(path)
        tensors = {"x": self.x.contiguous().cpu()}
        if self._y is not None:
            tensors["y"] = self.y.contiguous().cpu()
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "count": str(len(self)),
            "dim_x": json.dumps(self.dim_x),
            "dim_y": json.dumps(self.dim_y),
            "dtype": str(self.dtype).removeprefix("torch."),
            "capacity": json.dumps(self.capacity),
            "pair_sums": json.dumps(self._pair_sums),
            "user": json.dumps(self.metadata),
        }
        if self._x is None:
            tensors = {"x": torch.zeros((0, 0), dtype=self.dtype)}
        elif self._marks:
            meta["mark_keys"], tensors["marks"] = _pack_marks(self._marks)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> Bank:
        """Read a bank written by ``save``; raises ``BankFileError`` naming what is wrong with the file."""
        device = check_device(device)
        path = Path(path)
        meta, tensors = read_bank_file(path, FORMAT, FORMAT_VERSION, "bank")
        x, y = tensors.get("x"), tensors.get("y")
        if x is None:
            raise BankFileError(f"{path}: bank file has no 'x' tensor")
        try:
            count = int(meta["count"])
            dim_x, dim_y = json.loads(meta["dim_x"]), json.loads(meta["dim_y"])
            capacity = json.loads(meta["capacity"])
            user = json.loads(meta["user"])
            pair_sums = json.loads(meta.get("pair_sums", "{}"))
            dtype = STORAGE_DTYPES[meta["dtype"]]
        except (KeyError, ValueError) as error:
            raise BankFileError(f"{path}: bank metadata is incomplete or corrupt ({error})") from None
        if x.shape[0] != count or (count and x.shape[1] != dim_x):
            raise BankFileError(
                f"{path}: x has shape {tuple(x.shape)} but the metadata says {count} x {dim_x}"
            )
        if y is not None and y.shape[0] != x.shape[0]:
            raise BankFileError(
                f"{path}: x has {x.shape[0]} rows but y has {y.shape[0]}; the file is inconsistent"
            )
        if y is not None and y.shape[1] != dim_y:
            raise BankFileError(f"{path}: y has {y.shape[1]} columns but the metadata says {dim_y}")
        if count and not (bool(torch.isfinite(x).all()) and (y is None or bool(torch.isfinite(y).all()))):
            raise BankFileError(f"{path}: bank rows contain NaN or Inf values")
        bank = cls(capacity, device=device, dtype=dtype, metadata=user)
        if count:
            bank.add(x, y)
            bank._pair_sums = {k: float(v) for k, v in pair_sums.items()}
            bank._marks = {}
            bank._mark()  # an older file keeps no earlier marks: it truncates to 0 rows only
            if "marks" in tensors:
                try:
                    bank._marks = _unpack_marks(meta["mark_keys"], tensors["marks"], count)
                except (KeyError, ValueError) as error:
                    raise BankFileError(f"{path}: bank marks are incomplete or corrupt ({error})") from None
        return bank


def read_bank_file(
    path: Path, format_tag: str, version: int, kind: str
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a sparke safetensors file whose format tag and version are checked first;
    ``BankFileError`` names the file and the problem (``kind`` names the file type in messages)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such bank file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != format_tag:
                raise BankFileError(f"{path}: not a sparke {kind} file (no '{format_tag}' format tag)")
            found = meta.get("format_version")
            if found != str(version):
                raise BankFileError(
                    f"{path}: unknown {kind} format version {found!r} (this sparke reads {version})"
                )
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as error:
        raise BankFileError(f"{path}: truncated or corrupt bank file ({error})") from None
    return meta, tensors


def _pack_marks(marks: dict[int, dict[str, float]]) -> tuple[str, torch.Tensor]:
    """(JSON list of the pair-sum keys, float64 tensor (k, 1 + keys): row count, then each sum or NaN)."""
    keys = sorted({key for sums in marks.values() for key in sums})
    rows = [[count, *(sums.get(key, math.nan) for key in keys)] for count, sums in sorted(marks.items())]
    return json.dumps(keys), torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 1 + len(keys))


def _unpack_marks(keys_json: str, table: torch.Tensor, count: int | None) -> dict[int, dict[str, float]]:
    """The marks ``_pack_marks`` wrote; ``count``: the row count they must end at (None: not checked)."""
    keys = json.loads(keys_json)
    if table.ndim != 2 or table.shape[1] != 1 + len(keys) or table.dtype != torch.float64:
        raise ValueError(f"marks of shape {tuple(table.shape)} for {len(keys)} pair sums")
    marks = {
        int(row[0]): {key: value for key, value in zip(keys, row[1:], strict=True) if not math.isnan(value)}
        for row in table.tolist()
    }
    if count is not None and (count not in marks or any(n < 0 or n > count for n in marks)):
        raise ValueError(f"marks do not end at the bank's {count} rows")
    return marks


def _key(kernel: str, sigma_image: float, sigma_prompt: float | None) -> str:
    """Key of a kept pair sum, as saved in bank files: [kernel, sigma_image, sigma_prompt or null]."""
    return json.dumps([kernel, sigma_image, sigma_prompt])


def _parse_key(key: str) -> tuple[str, float, float, bool]:
    kernel, sigma_image, sigma_prompt = json.loads(key)
    return kernel, sigma_image, 1.0 if sigma_prompt is None else sigma_prompt, sigma_prompt is not None


def _compute_type(rows: torch.Tensor) -> torch.Tensor:
    """Half-precision storage computes in float32; float32 and float64 as stored."""
    return rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
