"""Input validation shared by the core: every public entry point funnels its arguments through here.

Errors are ``ValueError`` whose message starts with the argument's name, so a caller can tell at once
which input is wrong.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KERNELS = ("gaussian", "cosine")
OBJECTIVES = ("rke", "vendi", "cond-rke", "cond-vendi")


def as_features(
    value: torch.Tensor | np.ndarray,
    name: str,
    *,
    min_rows: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return ``value`` as a finite 2-D floating tensor (rows = samples).

    Half-precision inputs are promoted to float32 (the scores are computed in float32 or better);
    float64 stays float64 unless ``dtype`` says otherwise.
    """
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}")
    if value.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows = samples), got shape {tuple(value.shape)}")
    if value.shape[0] < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} row(s), got {value.shape[0]}")
    if value.shape[1] < 1:
        raise ValueError(f"{name}: has zero feature columns")
    if dtype is None:
        dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    if value.is_complex():
        raise ValueError(f"{name}: complex values are not supported")
    value = value.to(device=device if device is not None else value.device, dtype=dtype)
    if value.numel() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")
    return value


def check_rows_match(x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{y_name}: has {y.shape[0]} rows but {x_name} has {x.shape[0]}; each sample needs one row of each"
        )


def check_sigma(sigma: float, name: str) -> float:
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive number, got {sigma!r}") from None
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"{name}: must be a positive finite bandwidth, got {sigma}")
    return sigma


def check_kernel(kernel: str, name: str = "kernel") -> str:
    if kernel not in KERNELS:
        raise ValueError(f"{name}: unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    return kernel


def check_objective(objective: str, name: str = "objective") -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"{name}: unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return objective


def check_nonzero_rows(x: torch.Tensor, name: str) -> None:
    """The cosine kernel is undefined for a zero vector."""
    if x.numel() and bool((torch.linalg.vector_norm(x, dim=1) == 0).any()):
        raise ValueError(f"{name}: the cosine kernel needs non-zero rows, found an all-zero row")
