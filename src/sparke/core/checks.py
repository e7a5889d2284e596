"""Input validation shared by the core, the banks, the metrics and the plug-in: one path for every check.

Errors are ``ValueError`` whose message starts with the argument's name, so a caller can tell at once
which input is wrong.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Any

import numpy as np
import torch

KERNELS = ("gaussian", "cosine")
OBJECTIVES = ("rke", "vendi", "cond-rke", "cond-vendi")
ON_NONFINITE = ("raise", "skip")
# Old keyword -> new keyword of the bandwidths (see ``renamed_bandwidths``).
RENAMED_BANDWIDTHS = {"sigma_x": "sigma_image", "sigma_y": "sigma_prompt"}
# Rows scanned at once when looking for the input that made a result non-finite.
SCAN_ROWS = 8192


def as_matrix(
    value: torch.Tensor | np.ndarray,
    name: str,
    *,
    min_rows: int = 1,
    columns: int | None = None,
    columns_of: str = "the batch",
) -> torch.Tensor:
    """``value`` as a 2-D tensor (rows = samples), shape-checked only: no copy, no dtype or device change.

    ``columns``: the number of columns it must have (``columns_of`` names where that number comes from).
    """
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}")
    if value.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows = samples), got shape {tuple(value.shape)}")
    if value.shape[0] < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} row(s), got {value.shape[0]}")
    if columns is not None and value.shape[1] != columns:
        raise ValueError(f"{name}: has {value.shape[1]} feature columns but {columns_of} has {columns}")
    if value.shape[1] < 1:
        raise ValueError(f"{name}: has zero feature columns")
    if value.is_complex():
        raise ValueError(f"{name}: complex values are not supported")
    return value


def as_features(
    value: torch.Tensor | np.ndarray,
    name: str,
    *,
    min_rows: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Return ``value`` as a 2-D floating tensor (rows = samples), finite unless ``check_finite=False``.

    Half-precision inputs are promoted to float32 (the scores are computed in float32 or better);
    float64 stays float64 unless ``dtype`` says otherwise. ``check_finite=False`` skips the finiteness scan
    (a host sync on CUDA): the caller then checks its result instead (``check_finite_result``).
    """
    value = as_matrix(value, name, min_rows=min_rows)
    if dtype is None:
        dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    value = value.to(device=device if device is not None else value.device, dtype=dtype)
    if check_finite and value.numel() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")
    return value


def kernel_features(
    value: torch.Tensor | np.ndarray,
    name: str,
    kernel: str,
    *,
    min_rows: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``as_features`` rows for ``kernel``: the cosine kernel also refuses an all-zero row (it has no direction)."""
    value = as_features(value, name, min_rows=min_rows, device=device)
    if kernel == "cosine":
        check_nonzero_rows(value, name)
    return value


def as_stored_rows(
    value: torch.Tensor | np.ndarray | None, name: str, *, like: torch.Tensor, columns: int
) -> torch.Tensor:
    """Bank rows (n, columns) on ``like``'s device, kept in their floating storage type (no copy when already
    there); None gives (0, columns). Not scanned for finiteness: see ``check_finite_result``."""
    if value is None:
        return like.new_zeros((0, columns))
    value = as_matrix(value, name, min_rows=0, columns=columns)
    if not value.is_floating_point():
        value = value.to(like.dtype)
    return value.to(like.device)


def check_rows_match(x: torch.Tensor, y: torch.Tensor, x_name: str, y_name: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{y_name}: has {y.shape[0]} rows but {x_name} has {x.shape[0]}; each sample needs one row of each"
        )


def check_sigma(sigma: float, name: str) -> float:
    """A Gaussian bandwidth: a positive finite number, returned as a float."""
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive number, got {sigma!r}") from None
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"{name}: must be a positive finite bandwidth, got {sigma}")
    return sigma


def check_bandwidths(sigma_image: float, sigma_prompt: float) -> tuple[float, float]:
    """(sigma_image, sigma_prompt) checked as bandwidths; for the conditional scores, directions and guides."""
    return check_sigma(sigma_image, "sigma_image"), check_sigma(sigma_prompt, "sigma_prompt")


def check_kernel(kernel: str, name: str = "kernel") -> str:
    if kernel not in KERNELS:
        raise ValueError(f"{name}: unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    return kernel


def check_objective(objective: str, name: str = "objective") -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"{name}: unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return objective


def check_on_nonfinite(value: str, name: str = "on_nonfinite") -> str:
    if value not in ON_NONFINITE:
        raise ValueError(f"{name}: must be one of {', '.join(map(repr, ON_NONFINITE))}, got {value!r}")
    return value


def check_device(device: torch.device | str, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name}: not a torch device: {device!r} (e.g. 'cpu', 'cuda', 'cuda:1')") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name}: CUDA is not available on this machine (got {str(device)!r}); use 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {device} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}: MPS is not available on this machine; use 'cpu'")
    return device


def check_nonzero_rows(x: torch.Tensor, name: str) -> None:
    """The cosine kernel is undefined for a zero vector."""
    if x.numel() and bool((torch.linalg.vector_norm(x, dim=1) == 0).any()):
        raise ValueError(f"{name}: the cosine kernel needs non-zero rows, found an all-zero row")


def check_finite_result(
    result: torch.Tensor,
    inputs: dict[str, torch.Tensor | None],
    kernel: str,
    where: str = "diversity_direction",
) -> None:
    """Raise ``ValueError`` naming the input that made ``result`` non-finite (one host sync when it is finite).

    Inputs that are not scanned up front (bank rows) are scanned here, chunk by chunk, only on failure.
    """
    if bool(torch.isfinite(result).all()):
        return
    for name, value in inputs.items():
        if value is None:
            continue
        for start in range(0, value.shape[0], SCAN_ROWS):
            rows = value[start : start + SCAN_ROWS]
            if not bool(torch.isfinite(rows).all()):
                raise ValueError(f"{name}: contains NaN or Inf values")
            if kernel == "cosine" and bool((torch.linalg.vector_norm(rows.float(), dim=1) == 0).any()):
                raise ValueError(f"{name}: the cosine kernel needs non-zero rows, found an all-zero row")
    raise FloatingPointError(f"{where}: the direction overflowed although every input is finite")


def finite_rows(
    x: torch.Tensor, y: torch.Tensor | None, kernel: str
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(x, y, keep): keep (B,) bool marks the batch rows that are finite in x and y (and non-zero for the
    cosine kernel); the other rows are replaced by ones so that nothing downstream turns NaN. On the device,
    no host sync."""
    keep = torch.isfinite(x).all(1)
    if y is not None:
        keep &= torch.isfinite(y).all(1)
    if kernel == "cosine":
        keep &= torch.linalg.vector_norm(torch.nan_to_num(x), dim=1) > 0
        if y is not None:
            keep &= torch.linalg.vector_norm(torch.nan_to_num(y), dim=1) > 0
    one = torch.ones((), dtype=x.dtype, device=x.device)
    x = torch.where(keep.unsqueeze(1), x, one)
    y = None if y is None else torch.where(keep.unsqueeze(1), y, one)
    return x, y, keep


def zero_nonfinite_rows(
    result: torch.Tensor, skipped: torch.Tensor | None = None, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """``result`` (B, d) with its non-finite rows (and the rows where ``keep`` (B,) is False) set to zero, on
    the device, with no host sync.

    ``skipped``: optional 0-d tensor to which the number of zeroed rows is added in place (keep it on the
    result's device: another device would copy, and a copy to the host waits for the device).
    """
    ok = torch.isfinite(result).all(1)
    if keep is not None:
        ok &= keep.to(ok.device)
    if skipped is not None:
        skipped.add_((~ok).sum().to(skipped.device, skipped.dtype))
    return torch.where(ok.unsqueeze(1), result, torch.zeros((), dtype=result.dtype, device=result.device))


def check_index_options(
    dim_x: Any, dim_y: Any, neighbors: Any, samples: Any, search_dim: Any, kernel: str
) -> None:
    """``IndexedBank``'s constructor arguments, each refused with a ValueError naming it."""
    for name, value in (("dim_x", dim_x), ("neighbors", neighbors), ("search_dim", search_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    if dim_y is not None and (not isinstance(dim_y, int) or isinstance(dim_y, bool) or dim_y < 1):
        raise ValueError(f"dim_y: must be a positive integer or None, got {dim_y!r}")
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool) or samples < 0):
        raise ValueError(f"samples: must be a non-negative integer, got {samples!r}")
    check_kernel(kernel)
    if kernel != "gaussian":
        raise ValueError(
            "kernel: IndexedBank supports 'gaussian' only (the squared cosine kernel is not a function of "
            "a distance, so nearest neighbours do not carry its weight); use sparke.Bank"
        )


# the release that drops the old bandwidth keywords
BANDWIDTHS_REMOVAL = "0.3"


def rename_bandwidths(owner: str, kwargs: dict[str, Any], stacklevel: int = 3) -> dict[str, Any]:
    """``kwargs`` with the old ``sigma_x``/``sigma_y`` renamed to ``sigma_image``/``sigma_prompt`` (one
    DeprecationWarning naming ``owner``); both the old and the new name is a ``TypeError``."""
    used = []
    for old, new in RENAMED_BANDWIDTHS.items():
        value = kwargs.pop(old, None)
        if value is None:
            continue
        if kwargs.get(new) is not None:
            raise TypeError(f"{owner}: got both {old}= and {new}=; pass only {new}=")
        kwargs[new] = value
        used.append(f"{old}= is deprecated, use {new}=")
    if used:
        warnings.warn(
            f"{owner}: {'; '.join(used)} ({'the old names are' if len(used) > 1 else 'it is'} removed in sparke "
            f"{BANDWIDTHS_REMOVAL})",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
    return kwargs


def renamed_bandwidths(fn):
    """Decorator of a public function or constructor: accept the old keywords ``sigma_x``/``sigma_y`` for
    ``sigma_image``/``sigma_prompt`` until ``BANDWIDTHS_REMOVAL`` (``rename_bandwidths``). The old names stay
    visible in ``inspect.signature`` (default None)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **rename_bandwidths(fn.__qualname__, kwargs))

    signature = inspect.signature(fn)
    old_names = [
        inspect.Parameter(old, inspect.Parameter.KEYWORD_ONLY, default=None)
        for old, new in RENAMED_BANDWIDTHS.items()
        if new in signature.parameters
    ]
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *old_names])
    return wrapper
