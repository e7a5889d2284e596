"""The diversity scores as ``torchmetrics.Metric`` classes, for Lightning and ``MetricCollection``.

Each class feeds the core function of the same name (``sparke.vendi``, ``rke``, ``cond_vendi``, ``cond_rke``,
``in_batch_similarity``, ``sparke.metrics.prdc``) with every row seen, so ``compute()`` equals that function on the concatenation of
all the ``update`` batches, as a 0-dim float64 tensor. The rows are kept as lists of tensors that
torchmetrics concatenates across processes (``dist_reduce_fx="cat"``), so the scores sync under DDP like
any other metric; ``InBatchSimilarity`` keeps only the sum of each batch's unit rows.

Needs the optional extra: ``pip install "sparke[metrics]"``. ``import sparke.metrics`` does not load this
module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
    from torchmetrics.utilities.distributed import gather_all_tensors
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'sparke.metrics.torchmetrics needs torchmetrics: pip install "sparke[metrics]"'
    ) from err

from ..core import cond_rke, cond_vendi, rke, vendi
from ..core.checks import (
    check_bandwidths,
    check_kernel,
    check_rows_match,
    check_sigma,
    kernel_features,
)
from ..core.defaults import KERNEL, SIGMA_IMAGE, SIGMA_PROMPT
from ..core.kernels import unit_rows
from .manifold import check_nearest_k, prdc

Array = torch.Tensor | np.ndarray

__all__ = ["PRDC", "RKE", "CondRKE", "CondVendi", "InBatchSimilarity", "Vendi"]


class _SparkeMetric(Metric):
    """Shared plumbing: input checks, the row states, settings that must match to merge."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dist_sync_fn", _gather_rows)
        super().__init__(**kwargs)

    def _settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self._settings().items())

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add the state of another metric of the same class and settings (or a state dict) to this one."""
        if (
            isinstance(incoming_state, _SparkeMetric)
            and type(incoming_state) is type(self)
            and incoming_state._settings() != self._settings()
        ):
            raise ValueError(
                f"incoming_state: settings {incoming_state._settings()} differ from this metric's "
                f"{self._settings()}"
            )
        super().merge_state(incoming_state)

    def _features(
        self, value: Array, name: str, state: str, *, kernel: str, device: torch.device | None = None
    ) -> torch.Tensor:
        """Validate a batch with the core's checks for ``kernel``: float32 rows (float64 stays float64), as
        the core functions convert them, and as wide as the rows kept in ``state``."""
        value = kernel_features(value, name, kernel, min_rows=0, device=device)
        width = _width(getattr(self, state))
        if width is not None and value.shape[1] != width:
            raise ValueError(f"{name}: has {value.shape[1]} feature columns, the earlier rows had {width}")
        return value

    def _append(self, name: str, value: torch.Tensor) -> None:
        state = getattr(self, name)
        if isinstance(state, torch.Tensor):  # a state merged in as one tensor
            state = [state]
            setattr(self, name, state)
        state.append(value)

    def _rows(self, name: str) -> torch.Tensor:
        state = getattr(self, name)
        rows = dim_zero_cat(state) if isinstance(state, list) and state else state
        if isinstance(rows, list) or rows.numel() == 0:
            raise ValueError(f"{name}: no rows yet; call update first")
        return rows

    def _score(self, value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64, device=self.device)


class _Unconditional(_SparkeMetric):
    def __init__(self, *, kernel: str = KERNEL, sigma: float = SIGMA_IMAGE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel = check_kernel(kernel)
        self.sigma = check_sigma(sigma, "sigma")
        self.add_state("x", default=[], dist_reduce_fx="cat")

    def _settings(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "sigma": self.sigma}

    def update(self, x: Array) -> None:
        """Add the feature rows x: (B, d)."""
        x = self._features(x, "x", "x", kernel=self.kernel)
        if x.shape[0]:
            self._append("x", x)


class _Conditional(_SparkeMetric):
    def __init__(
        self,
        *,
        kernel: str = KERNEL,
        sigma_image: float = SIGMA_IMAGE,
        sigma_prompt: float = SIGMA_PROMPT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kernel = check_kernel(kernel)
        self.sigma_image, self.sigma_prompt = check_bandwidths(sigma_image, sigma_prompt)
        self.add_state("x", default=[], dist_reduce_fx="cat")
        self.add_state("y", default=[], dist_reduce_fx="cat")

    def _settings(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "sigma_image": self.sigma_image, "sigma_prompt": self.sigma_prompt}

    def _core_keywords(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "sigma_image": self.sigma_image, "sigma_prompt": self.sigma_prompt}

    def update(self, x: Array, y: Array) -> None:
        """Add the image feature rows x: (B, d) and their prompt feature rows y: (B, e)."""
        x = self._features(x, "x", "x", kernel=self.kernel)
        y = self._features(y, "y", "y", kernel=self.kernel, device=x.device)
        check_rows_match(x, y, "x", "y")
        if x.shape[0]:
            self._append("x", x)
            self._append("y", y)


class Vendi(_Unconditional):
    """Vendi score exp(H1(K~)) of every row fed (``sparke.vendi``); keywords ``kernel`` and ``sigma``."""

    def compute(self) -> torch.Tensor:
        return self._score(vendi(self._rows("x"), kernel=self.kernel, sigma=self.sigma))


class RKE(_Unconditional):
    """RKE score 1 / ||K~||_F^2 of every row fed (``sparke.rke``); keywords ``kernel`` and ``sigma``."""

    def compute(self) -> torch.Tensor:
        return self._score(rke(self._rows("x"), kernel=self.kernel, sigma=self.sigma))


class CondVendi(_Conditional):
    """Prompt-conditional Vendi of every (image, prompt) row pair fed (``sparke.cond_vendi``)."""

    def compute(self) -> torch.Tensor:
        return self._score(cond_vendi(self._rows("x"), self._rows("y"), **self._core_keywords()))


class CondRKE(_Conditional):
    """Prompt-conditional RKE of every (image, prompt) row pair fed (``sparke.cond_rke``)."""

    def compute(self) -> torch.Tensor:
        return self._score(cond_rke(self._rows("x"), self._rows("y"), **self._core_keywords()))


class InBatchSimilarity(_SparkeMetric):
    """Mean cosine similarity over ordered pairs of distinct rows fed (``sparke.in_batch_similarity``).

    Lower is more diverse. Keeps the row count and one float64 sum of unit rows per batch, so its memory
    does not grow with the batch size; equal to the core function up to the order of the float64 sums.
    """

    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("n", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("sums", default=[], dist_reduce_fx="cat")

    def _settings(self) -> dict[str, Any]:
        return {}

    def update(self, x: Array) -> None:
        """Add the feature rows x: (B, d)."""
        x = self._features(x, "x", "sums", kernel="cosine")
        if x.shape[0]:
            self._append("sums", unit_rows(x).to(torch.float64).sum(0, keepdim=True))
            self.n = self.n + x.shape[0]

    def compute(self) -> torch.Tensor:
        n = int(self.n)
        if n == 0:
            raise ValueError("x: no rows yet; call update first")
        if n == 1:  # no pairs: 1.0, as in_batch_similarity says
            return self._score(1.0)
        total = self._rows("sums").sum(0)
        return self._score(float((total @ total - n) / (n * (n - 1))))


class PRDC(_SparkeMetric):
    """Precision, recall, density and coverage of the fake rows against the real rows fed
    (``sparke.metrics.prdc``), as torchmetrics' FID takes them: ``update(features, real=True/False)``.

    ``compute()`` returns a dict of 0-dim float64 tensors keyed ``precision``, ``recall``, ``density`` and
    ``coverage``. Both row sets are kept; ``reset_real_features=False`` keeps the real rows across ``reset``.
    """

    def __init__(self, nearest_k: int = 5, *, reset_real_features: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nearest_k = check_nearest_k(nearest_k)
        self.reset_real_features = bool(reset_real_features)
        self.add_state("real_rows", default=[], dist_reduce_fx="cat")
        self.add_state("fake_rows", default=[], dist_reduce_fx="cat")

    def _settings(self) -> dict[str, Any]:
        return {"nearest_k": self.nearest_k}

    def update(self, features: Array, real: bool) -> None:  # type: ignore[override]
        """Add feature rows (B, d) to the real set (``real=True``) or to the generated set."""
        other = "fake_rows" if real else "real_rows"
        state = "real_rows" if real else "fake_rows"
        features = self._features(features, "features", state, kernel="gaussian")
        width = _width(getattr(self, other))
        if width is not None and features.shape[1] != width:
            raise ValueError(
                f"features: has {features.shape[1]} feature columns, the {other[:4]} rows had {width}"
            )
        if features.shape[0]:
            self._append(state, features)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        scores = prdc(self._rows("real_rows"), self._rows("fake_rows"), self.nearest_k)
        return {name: self._score(value) for name, value in scores.items()}

    def reset(self) -> None:
        real_rows = list(self.real_rows)  # reset empties the list in place
        super().reset()
        if not self.reset_real_features:
            self.real_rows = real_rows


def _width(state: list[torch.Tensor] | torch.Tensor) -> int | None:
    """Feature columns of the rows in a state, None while it holds none."""
    if isinstance(state, list):
        return _width(state[0]) if state else None
    return state.shape[1] if state.ndim == 2 else None


def _gather_rows(result: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """``gather_all_tensors`` that also copes with a process which kept no rows.

    torchmetrics sends an empty 1-D tensor of the metric's dtype for such a process's row list, which cannot
    be gathered with the (m, d) float32 or float64 rows of the others: it is given their shape (0, d) and
    dtype first.
    """
    import torch.distributed as dist

    width = result.shape[-1] if result.ndim else 0
    shape = torch.tensor(
        [result.ndim, width, result.dtype == torch.float64], dtype=torch.int64, device=result.device
    )
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shapes, shape, group=group)
    if result.ndim == 1 and result.numel() == 0:
        rows = {(int(width), bool(wide)) for ndim, width, wide in shapes if int(ndim) == 2}
        if len(rows) == 1:
            width, wide = rows.pop()
            result = result.reshape(0, width).to(torch.float64 if wide else result.dtype)
    return gather_all_tensors(result, group)
