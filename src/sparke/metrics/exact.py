"""Exact streaming scores: the rows are kept (float64) and the core scores computed on all of them.

For modest n: RKE and Cond-RKE cost O(n^2 d) at ``compute``; Gaussian Vendi and Cond-Vendi need an n x n
eigendecomposition (refused beyond ``sparke.core.scores.MAX_DENSE_ROWS``, 8,192). Use the RFF versions beyond.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import cond_rke, cond_vendi, rke, vendi
from ..core.checks import check_kernel, check_sigma, renamed_bandwidths
from ..core.defaults import KERNEL, SIGMA_IMAGE, SIGMA_PROMPT
from .base import StreamingMetric


class _Exact(StreamingMetric):
    _reductions = {"n": "sum", "x": "cat"}

    def __init__(self, *, kernel: str = KERNEL, sigma: float = SIGMA_IMAGE) -> None:
        super().__init__()
        self.kernel = check_kernel(kernel)
        self.sigma = check_sigma(sigma, "sigma")

    def _settings(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "sigma": self.sigma}

    def _init_state(self, device: torch.device) -> None:
        dx, dy = self._dims
        self._state = {
            "n": torch.zeros((), dtype=torch.float64, device=device),
            "x": torch.zeros((0, dx), dtype=torch.float64, device=device),
        }
        if dy is not None:
            self._state["y"] = torch.zeros((0, dy), dtype=torch.float64, device=device)

    def _update(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        self._state["n"] = self._state["n"] + x.shape[0]
        self._state["x"] = torch.cat([self._state["x"], x.to(self._state["x"].device)])
        if y is not None:
            self._state["y"] = torch.cat([self._state["y"], y.to(self._state["y"].device)])


class _ExactConditional(_Exact):
    conditional = True
    _reductions = {"n": "sum", "x": "cat", "y": "cat"}

    @renamed_bandwidths
    def __init__(
        self, *, kernel: str = KERNEL, sigma_image: float = SIGMA_IMAGE, sigma_prompt: float = SIGMA_PROMPT
    ) -> None:
        super().__init__(kernel=kernel, sigma=check_sigma(sigma_image, "sigma_image"))
        self.sigma_image = self.sigma
        self.sigma_prompt = check_sigma(sigma_prompt, "sigma_prompt")

    def _settings(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "sigma_image": self.sigma_image, "sigma_prompt": self.sigma_prompt}


class RKE(_Exact):
    """Exact RKE score 1 / ||K~||_F^2 of every row seen (``sparke.rke``)."""

    def _compute(self) -> float:
        return rke(self._state["x"], kernel=self.kernel, sigma=self.sigma)


class Vendi(_Exact):
    """Exact Vendi score exp(H1(K~)) of every row seen (``sparke.vendi``)."""

    def _compute(self) -> float:
        return vendi(self._state["x"], kernel=self.kernel, sigma=self.sigma)


class CondRKE(_ExactConditional):
    """Exact Cond-RKE of every (image, prompt) row pair seen (``sparke.cond_rke``)."""

    def _compute(self) -> float:
        s = self._state
        return cond_rke(
            s["x"], s["y"], kernel=self.kernel, sigma_image=self.sigma_image, sigma_prompt=self.sigma_prompt
        )


class CondVendi(_ExactConditional):
    """Exact Cond-Vendi of every (image, prompt) row pair seen (``sparke.cond_vendi``)."""

    def _compute(self) -> float:
        s = self._state
        return cond_vendi(
            s["x"], s["y"], kernel=self.kernel, sigma_image=self.sigma_image, sigma_prompt=self.sigma_prompt
        )
