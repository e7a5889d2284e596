"""Named banks that live across queue runs, and their files under ComfyUI's output or user directory.

A bank file is sparke's own format (``Bank.save``; ``AutoBank.load`` reads exact and indexed bank files), a
``.safetensors`` file whose name stays inside the chosen directory: no absolute path, no ``..``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

__all__ = ["NamedBank", "bank_file", "named_bank", "reset_all", "DIRECTORIES"]

DIRECTORIES = ("user", "output")  # folder_paths.get_user_directory / get_output_directory
SUFFIX = ".safetensors"

_lock = threading.Lock()
_banks: dict[str, NamedBank] = {}


@dataclass
class NamedBank:
    """A bank under a name, with the file it is saved to after each run (None: memory only)."""

    name: str
    bank: Any
    path: Path | None = None
    save_after_run: bool = False

    def after_run(self) -> None:
        """Write the bank to its file when asked to (atomically: the bank's own ``save``)."""
        if self.save_after_run and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with torch.inference_mode(False):
                self.bank.save(self.path)


def new_bank() -> Any:
    """An empty bank as ``sparke.SPARKE`` makes its own ("auto": exact, indexed past the crossover)."""
    from sparke.core.auto import make_bank

    with torch.inference_mode(
        False
    ):  # ComfyUI runs nodes in inference mode; the bank's rows are updated later
        return make_bank("auto")


def load_bank(path: Path) -> Any:
    """The bank in ``path`` (exact or indexed file); a one-line ValueError when it is missing or not a bank."""
    from sparke.core.auto import AutoBank

    if not path.is_file():
        raise ValueError(f"SPARKE Bank: no bank file {path}")
    try:
        with torch.inference_mode(False):
            return AutoBank.load(path)
    except (ValueError, OSError) as error:  # BankFileError is a ValueError
        raise ValueError(f"SPARKE Bank: {str(error).splitlines()[0]}") from None


def bank_file(name: str, root: str | os.PathLike) -> Path:
    """``root / name`` for a relative ``.safetensors`` name that stays inside ``root``; ValueError otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("SPARKE Bank: the file name is empty")
    name = name.strip()
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if (
        PureWindowsPath(name).is_absolute()
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).drive
    ):
        raise ValueError(f"SPARKE Bank: {name!r} is an absolute path; give a name inside the directory")
    if ".." in parts:
        raise ValueError(f"SPARKE Bank: {name!r} leaves the directory ('..'); give a name inside it")
    if not name.lower().endswith(SUFFIX):
        raise ValueError(
            f"SPARKE Bank: {name!r} must be a {SUFFIX} file (banks load through safetensors only)"
        )
    base = Path(root).resolve()
    path = (base / Path(*parts)).resolve()
    if not path.is_relative_to(base):  # a link inside the directory that points out of it
        raise ValueError(f"SPARKE Bank: {name!r} resolves outside {base}")
    return path


def named_bank(
    name: str, *, path: Path | None = None, action: str = "keep", save_after_run: bool = False
) -> NamedBank:
    """The bank called ``name``, made on first use (from ``path`` when that file exists).

    action: "keep" (as it is), "load" (replace its rows with ``path``'s) or "reset" (empty it).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("SPARKE Bank: the bank name is empty")
    if action not in ("keep", "load", "reset"):
        raise ValueError(f"SPARKE Bank: action must be keep, load or reset, got {action!r}")
    if action == "load" and path is None:
        raise ValueError("SPARKE Bank: action 'load' needs a file name")
    with _lock:
        entry = _banks.get(name)
        if action == "load":
            bank = load_bank(path)
        elif action == "reset" or entry is None:
            fresh = entry is None and action == "keep" and path is not None and path.is_file()
            bank = load_bank(path) if fresh else new_bank()
        else:
            bank = entry.bank
        if entry is None:
            entry = _banks[name] = NamedBank(name, bank)
        entry.bank, entry.path, entry.save_after_run = bank, path, save_after_run
        return entry


def reset_all() -> None:
    """Forget every named bank (tests)."""
    with _lock:
        _banks.clear()
