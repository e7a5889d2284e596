"""What the guidance plug-in needs from a memory bank: ``BankLike``.

``Bank``, ``IndexedBank`` and any user bank with these members can be passed wherever a bank is expected;
``isinstance(bank, BankLike)`` checks that the members exist (not their signatures).
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .spec import KernelSpec


@runtime_checkable
class BankLike(Protocol):
    """Rows of image features x: (n, d) and optional prompt features y: (n, e), oldest first."""

    def __len__(self) -> int:
        """Number of rows n."""
        ...

    @property
    def x(self) -> torch.Tensor:
        """(n, d) image features (read-only view)."""
        ...

    @property
    def y(self) -> torch.Tensor | None:
        """(n, e) prompt features, or None for a bank without prompts."""
        ...

    @property
    def dim_x(self) -> int | None:
        """d, or None before the first ``add``."""
        ...

    @property
    def dim_y(self) -> int | None:
        """e, or None for a bank without prompts (or before the first ``add``)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the rows live."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """Storage type of the rows."""
        ...

    def add(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | None = None) -> None:
        """Append rows x: (m, d) and, for a prompt-aware bank, their prompt features y: (m, e)."""
        ...

    def direction(self, x: torch.Tensor, y: torch.Tensor | None, spec: KernelSpec) -> torch.Tensor:
        """Ascent direction (B, d) of the diversity score of bank U batch for x: (B, d), y: (B, e), for the score
        ``spec`` (objective, kernel, bandwidths, ``on_nonfinite``), passed by the guide as ``spec=``.

        ``on_nonfinite="skip"`` (what the guide passes) returns zero rows where the direction is not finite,
        with no host synchronisation; "raise" raises ``ValueError`` naming the bad input. sparke's banks also
        take the spec's fields as keywords, and ``skipped=`` (a 0-d integer tensor that counts zeroed rows).
        """
        ...

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank to one file that the class's ``load`` reads back."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> BankLike:
        """Move the rows (and any cached state) in place; returns self, like ``torch.nn.Module.to``."""
        ...
