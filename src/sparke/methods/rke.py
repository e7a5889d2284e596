"""Latent RKE guidance: SPARKE's unconditional ablation (Jalali et al., arXiv 2506.10173, the "latent RKE"
baseline of its tables).

The same plug-in as SPARKE with ``objective="rke"``: each new sample is pushed away from every earlier sample
in the bank, whatever its prompt (no prompt kernel), so a red circle is also pushed away from blue squares.
Defaults are the plug-in's (its step schedule, sigma 0.8, whole-history bank) at scale 0.03, with the paper's step:
the latents as they are (``space="latent"``, ``centre=False``) and the plain gradient step (``motion=0``),
whatever SPARKE's own defaults.
"""

from __future__ import annotations

from typing import Any

from sparke.guidance import SPARKE, MethodSpec
from sparke.guidance.options import PAPER, PAPER_SCALE, help_of

from .sparke import flat_defaults

__all__ = ["LATENT_RKE_SPEC", "LatentRKE"]

SETTINGS = ("every", "window", "step", "sigma_image")
SPACE_SETTINGS = ("space", "centre", "motion")  # pinned to the paper's latent step (see the module docstring)
SCALE = PAPER_SCALE


def LatentRKE(scale: float = SCALE, **settings: Any) -> SPARKE:  # noqa: N802 - a class-like factory
    """A ``sparke.SPARKE`` guide with objective "rke" and the paper's step; ``settings``: flat SPARKE settings."""
    return SPARKE.from_settings(scale, {**PAPER, **settings, "objective": "rke"})


LATENT_RKE_SPEC = MethodSpec(
    name="rke",
    doc="latent RKE guidance: SPARKE without the prompt kernel (pushes away from every earlier image)",
    paper="Jalali, Lei, Gohari, Farnia, SPARKE, arXiv 2506.10173 (latent RKE baseline)",
    default_scale=SCALE,
    defaults={**flat_defaults(*SETTINGS), **{k: PAPER[k] for k in SPACE_SETTINGS}},
    build=lambda scale, settings: LatentRKE(scale, **settings),
    help=help_of(*SETTINGS, *SPACE_SETTINGS),
)
