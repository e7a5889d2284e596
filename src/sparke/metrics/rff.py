"""Random-Fourier-feature (RFF) streaming scores: bounded memory for any number of rows (Gaussian kernel).

Features: psi(v) = [cos(W v), sin(W v)] / sqrt(D / 2), D = ``features`` columns (by default 8192 for the
RKE scores, 2048 for the Vendi ones: the class's ``default_features``), W: (D / 2, dim) with
N(0, 1 / s^2) entries, so psi(v) . psi(v') is an unbiased estimate of exp(-|v - v'|^2 / (2 s^2)) and
psi(v) . psi(v) = 1 exactly (the normalised kernel's trace stays n).

- RKE needs sum_ij k(x_i, x_j)^2, and k^2 is itself the Gaussian kernel of bandwidth sigma / sqrt(2):
  sum_ij k_ij^2 ~ |sum_i psi(x_i)|^2 with s = sigma / sqrt(2). State: n and one D-vector (O(D) memory),
  RKE ~ n^2 / |sum psi|^2.
- Cond-RKE: k_x^2 k_y^2 is the Gaussian kernel of bandwidth 1 / sqrt(2) on the concatenated vector
  v = [x / sigma_image, y / sigma_prompt] (so its features are the RFF of the concatenation, equivalently the
  Kronecker product of the x and y features, without its D^2 columns); the prompt part uses y alone.
- Vendi: the non-zero eigenvalues of K / n are those of the D x D covariance C = sum_i phi phi^T / n
  (phi: bandwidth sigma), so H1 ~ H1(C). State: n and C (O(D^2) memory). Cond-Vendi: C of the concatenated
  joint vector (bandwidth 1) and C of y (bandwidth sigma_prompt).

The RKE estimates are unbiased in the pair sums (their error shrinks like 1 / sqrt(D)); the Vendi ones
carry a bias from the spectrum of the RFF kernel, largest when n >> D and the score is large. Measured
errors against the exact scores: tests/test_metrics.py and docs/scale.md.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core.checks import check_sigma, renamed_bandwidths
from ..core.defaults import SIGMA_IMAGE, SIGMA_PROMPT
from ..core.scores import von_neumann_entropy
from .base import StreamingMetric


class _RFF(StreamingMetric):
    """Shared RFF machinery: one frequency matrix per feature map, drawn from ``seed`` on first update."""

    # feature maps: name -> which input ("x", "y" or "joint") and whether the state is a covariance
    _maps: dict[str, str] = {}
    second_moment = False
    default_features = 2048  # D when ``features`` is not given

    def __init__(self, *, features: int | None, seed: int = 0) -> None:
        super().__init__()
        features = self.default_features if features is None else features
        if not isinstance(features, int) or features < 2 or features % 2:
            raise ValueError(f"features: must be a positive even integer, got {features!r}")
        self.features = features
        self.seed = seed
        self._freqs: dict[str, torch.Tensor] = {}
        self._reductions = {"n": "sum", **{name: "sum" for name in self._maps}}

    def _bandwidth(self, name: str) -> float:
        raise NotImplementedError

    def _input(self, name: str, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _input_dim(self, name: str) -> int:
        dx, dy = self._dims
        return {"x": dx, "y": dy, "joint": dx + (dy or 0)}[self._maps[name]]

    def _init_state(self, device: torch.device) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        self._state = {"n": torch.zeros((), dtype=torch.float64, device=device)}
        for name in self._maps:
            w = torch.randn(self.features // 2, self._input_dim(name), generator=gen, dtype=torch.float64)
            self._freqs[name] = (w / self._bandwidth(name)).to(device)
            shape = (self.features, self.features) if self.second_moment else (self.features,)
            self._state[name] = torch.zeros(shape, dtype=torch.float64, device=device)

    def _features(self, name: str, v: torch.Tensor) -> torch.Tensor:
        proj = v @ self._freqs[name].T
        return torch.cat([proj.cos(), proj.sin()], 1) / math.sqrt(self.features / 2)

    def _update(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        device = self._state["n"].device
        x = x.to(device)
        y = None if y is None else y.to(device)
        self._state["n"] = self._state["n"] + x.shape[0]
        for start in range(0, x.shape[0], 4096):  # bounded temporary memory
            xs = x[start : start + 4096]
            ys = None if y is None else y[start : start + 4096]
            for name in self._maps:
                phi = self._features(name, self._input(name, xs, ys))
                self._state[name] = self._state[name] + (phi.T @ phi if self.second_moment else phi.sum(0))

    def _settings(self) -> dict[str, Any]:
        return {"features": self.features, "seed": self.seed, **self._bandwidths()}

    def _bandwidths(self) -> dict[str, float]:
        raise NotImplementedError

    def _entropy(self, name: str) -> float:
        c = self._state[name] / self._state["n"]
        return float(von_neumann_entropy(torch.linalg.eigvalsh(c)))

    def _pair_sum(self, name: str) -> float:
        s = self._state[name]
        return float(s @ s)


class _Unconditional(_RFF):
    _maps = {"x": "x"}

    def __init__(self, *, sigma: float = SIGMA_IMAGE, features: int | None = None, seed: int = 0) -> None:
        self.sigma = check_sigma(sigma, "sigma")
        super().__init__(features=features, seed=seed)

    def _bandwidths(self) -> dict[str, float]:
        return {"sigma": self.sigma}

    def _input(self, name, x, y):
        return x


class _Conditional(_RFF):
    conditional = True
    _maps = {"joint": "joint", "y": "y"}

    @renamed_bandwidths
    def __init__(
        self,
        *,
        sigma_image: float = SIGMA_IMAGE,
        sigma_prompt: float = SIGMA_PROMPT,
        features: int | None = None,
        seed: int = 0,
    ) -> None:
        self.sigma_image = check_sigma(sigma_image, "sigma_image")
        self.sigma_prompt = check_sigma(sigma_prompt, "sigma_prompt")
        super().__init__(features=features, seed=seed)

    def _bandwidths(self) -> dict[str, float]:
        return {"sigma_image": self.sigma_image, "sigma_prompt": self.sigma_prompt}

    def _input(self, name, x, y):
        if name == "y":
            return y
        return torch.cat([x / self.sigma_image, y / self.sigma_prompt], 1)


class RFFRKE(_Unconditional):
    """RKE ~ n^2 / |sum_i psi(x_i)|^2, psi the RFF of bandwidth sigma / sqrt(2). O(D) memory."""

    default_features = 8192

    def _bandwidth(self, name: str) -> float:
        return self.sigma / math.sqrt(2.0)

    def _compute(self) -> float:
        n = float(self._state["n"])
        return n * n / self._pair_sum("x")


class RFFVendi(_Unconditional):
    """Vendi ~ exp(H1(C)), C the D x D covariance of the RFF of bandwidth sigma. O(D^2) memory."""

    second_moment = True
    default_features = 2048

    def _bandwidth(self, name: str) -> float:
        return self.sigma

    def _compute(self) -> float:
        return math.exp(self._entropy("x"))


class RFFCondRKE(_Conditional):
    """Cond-RKE ~ |sum psi_y|^2 / |sum psi_joint|^2 (joint: RFF of [x / sigma_image, y / sigma_prompt]). O(D)."""

    default_features = 8192

    def _bandwidth(self, name: str) -> float:
        return (self.sigma_prompt if name == "y" else 1.0) / math.sqrt(2.0)

    def _compute(self) -> float:
        return self._pair_sum("y") / self._pair_sum("joint")


class RFFCondVendi(_Conditional):
    """Cond-Vendi ~ exp(H1(C_joint) - H1(C_y)), two D x D RFF covariances. O(D^2) memory."""

    second_moment = True
    default_features = 2048

    def _bandwidth(self, name: str) -> float:
        return self.sigma_prompt if name == "y" else 1.0

    def _compute(self) -> float:
        return math.exp(self._entropy("joint") - self._entropy("y"))
