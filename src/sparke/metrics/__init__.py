"""Streaming diversity metrics in the style of torchmetrics: ``update``, ``compute``, ``merge``, ``reset``,
``sync`` (torch.distributed), with exact versions (rows kept) and random-Fourier-feature versions (bounded
memory, up to millions of rows); reference-based metrics of generated features against real ones: ``prdc``
(precision, recall, density, coverage) and ``frechet_distance``."""

from .base import StreamingMetric
from .exact import RKE, CondRKE, CondVendi, Vendi
from .frechet import frechet_distance
from .manifold import prdc
from .rff import RFFRKE, RFFCondRKE, RFFCondVendi, RFFVendi

__all__ = [
    "RKE",
    "RFFRKE",
    "CondRKE",
    "CondVendi",
    "RFFCondRKE",
    "RFFCondVendi",
    "RFFVendi",
    "StreamingMetric",
    "Vendi",
    "frechet_distance",
    "prdc",
]
