"""Latent RKE guidance: SPARKE's unconditional ablation (Jalali et al., arXiv 2506.10173, the "latent RKE"
baseline of its tables).

The same plug-in as SPARKE with ``objective="rke"``: each new sample is pushed away from every earlier sample
in the bank, whatever its prompt (no prompt kernel), so a red circle is also pushed away from blue squares.
Defaults are the plug-in's: scale 0.03, every 10th step, sigma 0.8, latent space, whole-history bank.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LatentRKE"]


def LatentRKE(scale: float = 0.03, **options: Any):  # noqa: N802 - a class-like factory
    """A ``sparke.SPARKE`` guide with objective "rke"; ``options`` go to ``SPARKE``."""
    from sparke.guidance import SPARKE

    return SPARKE(scale=scale, objective="rke", **options)
