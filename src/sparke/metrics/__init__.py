"""Streaming diversity metrics in the style of torchmetrics: ``update``, ``compute``, ``merge``, ``reset``,
``sync`` (torch.distributed), with exact versions (rows kept) and random-Fourier-feature versions (bounded
memory, up to millions of rows)."""

from .base import StreamingMetric
from .exact import RKE, CondRKE, CondVendi, Vendi
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
]
