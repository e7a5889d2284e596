"""Streaming metric machinery: sum- or concatenation-reducible state, merge, and torch.distributed sync."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from ..core.checks import as_features, check_rows_match


class StreamingMetric:
    """Base of the streaming scores: ``update`` rows, ``compute`` the score, ``merge`` / ``reset`` / ``sync``.

    The state is a dict of float64 tensors, each reduced across processes or merged by ``"sum"`` (added)
    or ``"cat"`` (rows concatenated). Subclasses fill ``_state`` in ``_update`` and read it in ``_compute``;
    ``_settings`` (a dict) must be equal for two metrics to merge.
    """

    conditional = False
    _reductions: dict[str, str] = {}

    def __init__(self) -> None:
        self._state: dict[str, torch.Tensor] = {}
        self._dims: tuple[int, int | None] | None = None

    # -- public API ------------------------------------------------------------------------------------------
    def update(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | None = None) -> None:
        """Add rows x: (m, d) (and their prompt features y: (m, e) for a conditional score)."""
        x = as_features(x, "x", min_rows=0, dtype=torch.float64)
        if self.conditional:
            if y is None:
                raise ValueError(f"y: {type(self).__name__} is prompt-conditional: pass the prompt features")
            y = as_features(y, "y", min_rows=0, dtype=torch.float64, device=x.device)
            check_rows_match(x, y, "x", "y")
        elif y is not None:
            raise ValueError(f"y: {type(self).__name__} takes no prompt features; use its Cond- version")
        dims = (x.shape[1], None if y is None else y.shape[1])
        if self._dims is not None and dims != self._dims:
            raise ValueError(f"x: feature dims {dims} differ from the earlier rows' {self._dims}")
        if x.shape[0] == 0:
            return
        if self._dims is None:
            self._dims = dims
            self._init_state(x.device)
        self._update(x, y)

    def compute(self, sync: bool = True) -> float:
        """The score of every row seen; across all processes when torch.distributed is initialised and
        ``sync`` (the local state is left as it is)."""
        metric = self.synced() if sync and _distributed() else self
        if metric.count == 0:
            raise ValueError(f"{type(self).__name__}: no rows yet; call update first")
        return metric._compute()

    @property
    def count(self) -> int:
        """Number of rows seen (locally)."""
        return int(self._state["n"].item()) if "n" in self._state else 0

    def merge(self, other: StreamingMetric) -> StreamingMetric:
        """Add the state of ``other`` (same class and settings) to this one; returns self."""
        if type(other) is not type(self) or other._settings() != self._settings():
            raise ValueError("other: can only merge a metric of the same class and settings")
        if other._dims is None:
            return self
        if self._dims is None:
            self._dims = other._dims
            self._init_state(next(iter(other._state.values())).device)
        if other._dims != self._dims:
            raise ValueError(f"other: feature dims {other._dims} differ from this metric's {self._dims}")
        for name, how in self._reductions.items():
            mine, theirs = self._state[name], other._state[name].to(self._state[name].device)
            self._state[name] = mine + theirs if how == "sum" else torch.cat([mine, theirs])
        return self

    def reset(self) -> None:
        """Forget every row."""
        self._state, self._dims = {}, None

    def sync(self, group: Any = None) -> None:
        """Reduce the state across the processes of ``group`` in place (sum, or gather rows); no-op without
        an initialised torch.distributed. Call it once, after the last ``update``."""
        if not _distributed():
            return
        import torch.distributed as dist

        dims = torch.tensor(
            [-1, -1]
            if self._dims is None
            else [self._dims[0], -1 if self._dims[1] is None else self._dims[1]],
            dtype=torch.int64,
            device=_comm_device(group),
        )
        every = [torch.empty_like(dims) for _ in range(dist.get_world_size(group))]
        dist.all_gather(every, dims, group=group)
        known = {tuple(int(v) for v in d.tolist()) for d in every if int(d[0]) >= 0}
        if len(known) > 1:
            raise ValueError(f"sync: processes saw rows of different feature dims {sorted(known)}")
        if not known:
            return
        if self._dims is None:
            dx, dy = known.pop()
            self._dims = (dx, None if dy < 0 else dy)
            self._init_state(_comm_device(group))
        for name, how in self._reductions.items():
            value = self._state[name].to(_comm_device(group))
            self._state[name] = (
                _all_reduce_sum(value, group) if how == "sum" else _all_gather_rows(value, group)
            )

    def synced(self, group: Any = None) -> StreamingMetric:
        """A synced copy (this metric's state untouched)."""
        other = copy.deepcopy(self)
        other.sync(group)
        return other

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"{type(self).__name__}({settings}, n={self.count})"

    # -- for subclasses --------------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def _init_state(self, device: torch.device) -> None:
        raise NotImplementedError

    def _update(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        raise NotImplementedError

    def _compute(self) -> float:
        raise NotImplementedError


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(group: Any) -> torch.device:
    """NCCL needs CUDA tensors; gloo and the others take CPU tensors."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce_sum(value: torch.Tensor, group: Any) -> torch.Tensor:
    import torch.distributed as dist

    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value


def _all_gather_rows(value: torch.Tensor, group: Any) -> torch.Tensor:
    """Concatenate the rows of every process, in rank order (rows padded to the longest, then trimmed)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    count = torch.tensor([value.shape[0]], dtype=torch.int64, device=value.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    longest = max(int(c) for c in counts)
    padded = value.new_zeros((longest, *value.shape[1:]))
    padded[: value.shape[0]] = value
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[: int(c)] for part, c in zip(parts, counts, strict=True)])
