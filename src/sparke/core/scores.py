"""Kernel-entropy diversity scores of the SPARKE paper, exact.

With K~ = K / trace(K) (= K / n for both kernels):
- RKE   = exp(H2) = 1 / ||K~||_F^2, the order-2 Renyi kernel entropy score;
- Vendi = exp(H1) = exp(-sum lambda log lambda) over the eigenvalues of K~;
- their prompt-conditional versions use the Hadamard product K_x o K_y and subtract the prompt entropy:
  Cond-RKE = exp(H2(K_x o K_y) - H2(K_y)),  Cond-Vendi = exp(H1(K_x o K_y) - H1(K_y)).

RKE and Cond-RKE are blockwise sums, O(n^2 d) time and O(n) memory. Vendi needs a spectrum: for the cosine
kernel it comes from the d x d dual (X^T X has the non-zero eigenvalues of X X^T), O(n d^2); for the
Gaussian kernel it is an n x n eigendecomposition, O(n^3) time and O(n^2) memory, refused above
``MAX_DENSE_ROWS`` (8,192) rows; Cond-Vendi likewise, its cosine dual having d*e dimensions. Beyond that they
raise a ``ValueError``: use the random-feature estimates of ``sparke.metrics``.

The default bandwidths (``defaults.SIGMA_IMAGE`` = 0.8, ``defaults.SIGMA_PROMPT`` = 0.3, the paper's) assume
L2-normalised features; ``sigma_image``/``sigma_prompt`` replace the deprecated ``sigma_x``/``sigma_y``.
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import (
    as_features,
    check_bandwidths,
    check_kernel,
    check_nonzero_rows,
    check_rows_match,
    check_sigma,
    kernel_features,
    renamed_bandwidths,
)
from .defaults import KERNEL, SIGMA_IMAGE, SIGMA_PROMPT
from .kernels import kernel_matrix, squared_kernel_sum, unit_rows

Array = torch.Tensor | np.ndarray

# Largest matrix whose spectrum is computed: 8,192 x 8,192 is 0.5 GiB in float64 and takes about a minute to
# decompose on 2 CPU cores (4,096: about 5 s).
MAX_DENSE_ROWS = 8_192


def _prepare(x: Array, name: str, kernel: str) -> torch.Tensor:
    return kernel_features(x, name, check_kernel(kernel))


def _prepare_pair(x: Array, y: Array, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = _prepare(x, "x", kernel)
    y = _prepare(y, "y", kernel)
    check_rows_match(x, y, "x", "y")
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(device=x.device, dtype=dtype)


def rke(x: Array, *, kernel: str = KERNEL, sigma: float = SIGMA_IMAGE) -> float:
    """RKE score 1 / ||K~_x||_F^2 of x: (n, d). Between 1 (all alike) and n (all far apart)."""
    x = _prepare(x, "x", kernel)
    sigma = check_sigma(sigma, "sigma")
    n = x.shape[0]
    return n * n / squared_kernel_sum(x, x, kernel=kernel, sigma_image=sigma, same=True)


@renamed_bandwidths
def cond_rke(
    x: Array,
    y: Array,
    *,
    kernel: str = KERNEL,
    sigma_image: float = SIGMA_IMAGE,
    sigma_prompt: float = SIGMA_PROMPT,
) -> float:
    """Conditional RKE ||K~_y||_F^2 / ||(K_x o K_y)~||_F^2 of images x: (n, d) given prompts y: (n, e)."""
    x, y = _prepare_pair(x, y, kernel)
    sigma_image, sigma_prompt = check_bandwidths(sigma_image, sigma_prompt)
    prompt = squared_kernel_sum(y, y, kernel=kernel, sigma_image=sigma_prompt, same=True)
    joint = squared_kernel_sum(
        x, x, y, y, kernel=kernel, sigma_image=sigma_image, sigma_prompt=sigma_prompt, same=True
    )
    return prompt / joint


def von_neumann_entropy(eigenvalues: torch.Tensor) -> torch.Tensor:
    """-sum lambda log lambda over the eigenvalues of a unit-trace PSD matrix; 0 log 0 = 0.

    Differentiable; eigenvalues that rounding pushed to or below zero contribute nothing.
    """
    positive = eigenvalues > 0
    safe = torch.where(positive, eigenvalues, torch.ones_like(eigenvalues))
    return -(torch.where(positive, safe * torch.log(safe), torch.zeros_like(safe))).sum()


def _spectral_entropy(gram_features: torch.Tensor | None, kernel_mat: torch.Tensor | None) -> float:
    """H1 of the normalised kernel, from n x p features (K = F F^T, dual when p < n) or a dense K."""
    if gram_features is not None:
        n = gram_features.shape[0]
        _check_dense_size(min(gram_features.shape))
        f = gram_features.to(torch.float64)
        gram = f.T @ f if f.shape[1] < n else f @ f.T
        eigenvalues = torch.linalg.eigvalsh(gram / n)
    else:
        n = kernel_mat.shape[0]
        eigenvalues = torch.linalg.eigvalsh(kernel_mat / n)
    return float(von_neumann_entropy(eigenvalues))


def _check_dense_size(size: int) -> None:
    if size > MAX_DENSE_ROWS:
        raise ValueError(
            f"x: the exact Vendi spectrum would need a {size} x {size} eigendecomposition, beyond the limit of "
            f"{MAX_DENSE_ROWS}; use fewer rows, kernel='cosine' with fewer feature dimensions (its dual is "
            "d x d, d*e for the conditional score), or the random-feature estimates of sparke.metrics"
        )


def _dense_kernel(x: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    dtype = torch.float64 if x.shape[0] <= 4096 else torch.float32
    return kernel_matrix(x.to(dtype), kernel, sigma)


def vendi(x: Array, *, kernel: str = KERNEL, sigma: float = SIGMA_IMAGE) -> float:
    """Vendi score exp(H1(K~_x)) of x: (n, d). Cosine: O(n d^2) via the dual; Gaussian: O(n^3)."""
    x = _prepare(x, "x", kernel)
    sigma = check_sigma(sigma, "sigma")
    if x.shape[0] == 1:
        return 1.0
    if kernel == "cosine":
        return float(np.exp(_spectral_entropy(unit_rows(x), None)))
    _check_dense_size(x.shape[0])
    return float(np.exp(_spectral_entropy(None, _dense_kernel(x, kernel, sigma))))


@renamed_bandwidths
def cond_vendi(
    x: Array,
    y: Array,
    *,
    kernel: str = KERNEL,
    sigma_image: float = SIGMA_IMAGE,
    sigma_prompt: float = SIGMA_PROMPT,
) -> float:
    """Conditional Vendi exp(H1((K_x o K_y)~) - H1(K~_y)) of images x: (n, d) given prompts y: (n, e).

    Cosine: K_x o K_y is the linear kernel of the row-wise outer products (d*e features), so the dual is
    used while d*e < n; otherwise, and for the Gaussian kernel, an n x n eigendecomposition.
    """
    x, y = _prepare_pair(x, y, kernel)
    sigma_image, sigma_prompt = check_bandwidths(sigma_image, sigma_prompt)
    n = x.shape[0]
    if n == 1:
        return 1.0
    if kernel == "cosine":
        xu, yu = unit_rows(x), unit_rows(y)
        h_prompt = _spectral_entropy(yu, None)
        if xu.shape[1] * yu.shape[1] < n:
            joint_features = (xu.unsqueeze(2) * yu.unsqueeze(1)).reshape(n, -1)
            h_joint = _spectral_entropy(joint_features, None)
        else:
            _check_dense_size(n)
            h_joint = _spectral_entropy(None, (xu @ xu.T) * (yu @ yu.T))
        return float(np.exp(h_joint - h_prompt))
    _check_dense_size(n)
    k_y = _dense_kernel(y, kernel, sigma_prompt)
    h_prompt = _spectral_entropy(None, k_y)
    h_joint = _spectral_entropy(None, _dense_kernel(x, kernel, sigma_image) * k_y)
    return float(np.exp(h_joint - h_prompt))


def in_batch_similarity(x: Array) -> float:
    """Mean cosine similarity over ordered pairs i != j of x: (n, d); 1.0 for a single sample. O(n d)."""
    x = as_features(x, "x")
    check_nonzero_rows(x, "x")
    n = x.shape[0]
    if n == 1:
        return 1.0
    total = unit_rows(x).to(torch.float64).sum(0)
    return float((total @ total - n) / (n * (n - 1)))
