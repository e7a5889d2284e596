"""The file format of ``IndexedBank``: one safetensors file with the rows, the projections, the search vectors
and the bank's settings, pair sum, random state and marks as JSON metadata (no pickle).

Format version 1. The settings keep the bandwidths' old names (``sigma_x``, ``sigma_y``) so that older sparke
reads the files; a file without search vectors, marks or cell points (an older one) still loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .bank import BankFileError, read_bank_file
from .bank import _pack_marks as pack_exact_marks
from .bank import _unpack_marks as unpack_exact_marks
from .files import atomic_write

__all__ = ["FORMAT", "FORMAT_VERSION", "STORAGE_DTYPES", "read_indexed_bank", "write_indexed_bank"]

FORMAT = "sparke.indexed_bank"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_indexed_bank(bank: Any, path: str | os.PathLike) -> None:
    """Write ``bank`` (an ``IndexedBank``) to ``path`` atomically (temp file + rename)."""
    tensors = {"x": bank.x.contiguous().cpu()}
    if bank._y is not None:
        tensors["y"] = bank.y.contiguous().cpu()
    for name in ("proj_x", "proj_y"):
        if getattr(bank, "_" + name) is not None:
            tensors[name] = getattr(bank, "_" + name).contiguous().cpu()
    settings = {
        "dim_x": bank.dim_x,
        "dim_y": bank.dim_y,
        "neighbors": bank.neighbors,
        "samples": bank.samples,
        "kernel": bank.kernel,
        "sigma_x": bank.sigma_image,  # format version 1's names
        "sigma_y": bank.sigma_prompt,
        "search_dim": bank.search_dim,
        "seed": bank.seed,
        "dtype": str(bank.dtype).removeprefix("torch."),
    }
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "count": str(bank._count),
        "settings": json.dumps(settings),
        "pair_sum": json.dumps(bank._pair_sum),
        "user": json.dumps(bank.metadata),
        "rng": json.dumps(bank._rng.bit_generator.state),
        "cell_points": json.dumps(bank._cell_points),
    }
    if bank._count:  # the search vectors as indexed: recomputed, a product could round otherwise
        tensors["keys"] = torch.from_numpy(bank._index.reconstruct_n(0, bank._count))
        tensors["marks"] = _pack_marks(bank._marks)
    if bank.exact_marks:
        meta["exact_mark_keys"], tensors["exact_marks"] = pack_exact_marks(bank.exact_marks)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_indexed_bank(cls: type, path: str | os.PathLike, device: torch.device | str, search: str) -> Any:
    """The ``IndexedBank`` (``cls``) written to ``path``, its index rebuilt on ``device``; ``BankFileError``
    names what is wrong with the file."""
    path = Path(path)
    meta, tensors = read_bank_file(path, FORMAT, FORMAT_VERSION, "indexed bank")
    bank, count = _empty_bank(cls, path, meta, device, search)
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
        bank._load_rows(x, y, count, tensors.get("keys"), _cell_points(path, meta, count), path)
    bank._pair_sum = float(json.loads(meta["pair_sum"]))
    _restore_marks(bank, path, meta, tensors, count)
    return bank


def _empty_bank(cls: type, path: Path, meta: dict[str, str], device: Any, search: str) -> tuple[Any, int]:
    """A new bank with the file's settings, and the file's row count."""
    try:
        count = int(meta["count"])
        settings = json.loads(meta["settings"])
        json.loads(meta["pair_sum"])
        user = json.loads(meta["user"])
        dtype = STORAGE_DTYPES[settings.pop("dtype")]
        sigmas = {"sigma_image": settings.pop("sigma_x"), "sigma_prompt": settings.pop("sigma_y")}
        dims = settings.pop("dim_x"), settings.pop("dim_y")
        bank = cls(*dims, device=device, dtype=dtype, metadata=user, search=search, **sigmas, **settings)
    except (KeyError, ValueError, TypeError) as error:
        raise BankFileError(f"{path}: indexed bank metadata is incomplete or corrupt ({error})") from None
    return bank, count


def _cell_points(path: Path, meta: dict[str, str], count: int) -> list[int] | None:
    """The row counts at which the cells were trained (None: an older file that did not say)."""
    try:
        return json.loads(meta["cell_points"]) if "cell_points" in meta else None
    except ValueError as error:
        raise BankFileError(f"{path}: cell_points is corrupt ({error})") from None


def _restore_marks(bank: Any, path: Path, meta: dict[str, str], tensors: dict[str, Any], count: int) -> None:
    """The random state and the marks ``truncate`` goes back to."""
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
