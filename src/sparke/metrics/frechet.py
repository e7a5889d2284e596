"""Fréchet distance between two sets of feature rows, in any feature space (DINOv2, CLIP, ...).

|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of the Gaussians fitted to the rows (unbiased
covariances). Computed by torchmetrics' ``FrechetInceptionDistance`` with the rows themselves as its
"features" (an identity extractor), so the number is torchmetrics' FID formula in the chosen space; needs
the ``metrics`` extra.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.checks import as_features

Array = torch.Tensor | np.ndarray

__all__ = ["frechet_distance"]


class _Rows(torch.nn.Module):
    """The identity as a torchmetrics feature extractor: the rows are already features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return rows


def frechet_distance(real: Array, fake: Array) -> float:
    """Fréchet distance between the rows of real: (N, d) and fake: (M, d); N, M >= 2. Squared units of the
    features; 0 for identical sets."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError('frechet_distance needs torchmetrics: pip install "sparke[metrics]"') from err
    real = as_features(real, "real", min_rows=2, dtype=torch.float64)
    fake = as_features(fake, "fake", min_rows=2, dtype=torch.float64, device=real.device)
    if fake.shape[1] != real.shape[1]:
        raise ValueError(f"fake: has {fake.shape[1]} feature columns but real has {real.shape[1]}")
    metric = FrechetInceptionDistance(feature=_Rows(real.shape[1]), normalize=False).to(real.device)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return max(float(metric.compute()), 0.0)  # rounding can leave -1e-12 for identical sets
