"""The guided step replayed as a CUDA graph: ``GraphedDirection`` (opt-in).

A CUDA graph records the kernels of one ``bank.direction`` call and replays them with one launch, which
removes the per-kernel launch cost that dominates the exact step on a fast GPU (docs/GPU-NOTES: 1.39 ms
eager against 0.23 ms graphed at n = 10^4, d = 16,384, fp16). A graph is valid for one batch shape and one
state of the bank, so it is captured again when the batch shape, the dtypes or the bank (its length or its
row buffer) change: after each ``add`` the first call captures (a few eager warm-up calls plus the capture),
the next ones replay.

The captured call is ``bank.direction(..., on_nonfinite="skip")``, which must not synchronise with the host
(``Bank`` meets this): rows whose direction is not finite come back as zero rows and are counted in
``skipped``. If capture fails (a bank whose step synchronises, such as ``IndexedBank``, or an older driver),
the wrapper warns once and runs eagerly from then on. Off CUDA it always runs eagerly, with the options as
given, and returns exactly ``bank.direction(...)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

# Eager calls on a side stream before a capture (allocates scratch buffers, fills caches such as row norms).
WARMUP = 2


class GraphedDirection:
    """``bank.direction(x, y, **options)`` for x: (B, d), y: (B, e), replayed as a CUDA graph per batch shape.

    ``options``: the keywords of ``bank.direction`` (objective, kernel, sigma_image, sigma_prompt, ...).
    ``captures``: how many graphs were captured so far; ``graphed``: whether the last call replayed one.
    """

    def __init__(self, bank: Any, *, warmup: int = WARMUP, **options: Any) -> None:
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup: must be a positive integer, got {warmup!r}")
        self.bank = bank
        self.options = options
        self.warmup = warmup
        self.captures = 0
        self.graphed = False
        self._eager_only = False
        self._key: tuple | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._x = self._y = self._out = self._skipped = None

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor | None = None, *, skipped: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The direction (B, d) on x's device. ``skipped``: 0-d integer tensor to which the number of zeroed
        (non-finite) rows is added on the graph path (and on the eager path with ``on_nonfinite="skip"``)."""
        if self._eager_only or not self._graphable(x, y):
            self.graphed = False
            extra = {} if skipped is None else {"skipped": skipped}
            return self.bank.direction(x, y, **self.options, **extra)
        key = self._state(x, y)
        if key != self._key:
            try:
                self._capture(x, y)
            except Exception as error:  # noqa: BLE001 - any capture failure falls back to eager
                warnings.warn(
                    f"GraphedDirection: CUDA graph capture failed ({type(error).__name__}: {error}); running "
                    "the direction eagerly from now on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._eager_only, self._graph, self._key = True, None, None
                return self(x, y, skipped=skipped)
            self._key = key
        self._x.copy_(x)
        if y is not None:
            self._y.copy_(y)
        self._skipped.zero_()
        self._graph.replay()
        self.graphed = True
        if skipped is not None:
            skipped.add_(self._skipped.to(skipped.device, skipped.dtype))
        return self._out.clone()

    def _graphable(self, x: torch.Tensor, y: torch.Tensor | None) -> bool:
        """CUDA tensors on the bank's device: anything else runs eagerly."""
        device = getattr(self.bank, "device", None)
        return (
            torch.cuda.is_available()
            and isinstance(x, torch.Tensor)
            and x.is_cuda
            and (y is None or (isinstance(y, torch.Tensor) and y.device == x.device))
            and device is not None
            and torch.device(device) == x.device
        )

    def _state(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple:
        """What a captured graph depends on: batch shapes and types, and the bank's rows (length, buffer)."""
        bank_x, bank_y = self.bank.x, self.bank.y
        return (
            tuple(x.shape),
            x.dtype,
            x.device,
            None if y is None else (tuple(y.shape), y.dtype),
            len(self.bank),
            bank_x.data_ptr(),
            None if bank_y is None else bank_y.data_ptr(),
            self.bank.dtype,
        )

    def _run(self) -> torch.Tensor:
        options = {**self.options, "on_nonfinite": "skip", "skipped": self._skipped}
        return self.bank.direction(self._x, self._y, **options)

    def _capture(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Warm up on a side stream, then record one call into a new graph with static inputs."""
        self._graph = None
        self._x = x.detach().clone()
        self._y = None if y is None else y.detach().clone()
        self._skipped = torch.zeros((), dtype=torch.int64, device=x.device)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._run()
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._out = self._run()
        self._graph = graph
        self.captures += 1
