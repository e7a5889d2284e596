"""Latent RKE guidance: SPARKE's unconditional ablation (Jalali et al., arXiv 2506.10173, the "latent RKE"
baseline of its tables).

The same plug-in as SPARKE with ``objective="rke"``: each new sample is pushed away from every earlier sample
in the bank, whatever its prompt (no prompt kernel), so a red circle is also pushed away from blue squares.
Defaults are the plug-in's (every 10th step, sigma 0.8, whole-history bank) at scale 0.03, with the paper's step:
the latents as they are (``space="latent"``, ``centre=False``) and the plain gradient step (``motion=0``),
whatever SPARKE's own defaults.
"""

from __future__ import annotations

from typing import Any

from sparke.guidance import SPARKE, MethodSpec
from sparke.guidance.spec import constructor_defaults

from .sparke import SPARKE_HELP

__all__ = ["LATENT_RKE_SPEC", "LatentRKE"]

SETTINGS = ("every", "window", "step", "sigma_image")
SPACE_SETTINGS = ("space", "centre", "motion")  # pinned to the paper's latent step (see the module docstring)


def LatentRKE(  # noqa: N802 - a class-like factory
    scale: float = 0.03,
    space: Any = "latent",
    centre: bool = False,
    motion: float | str = 0.0,
    **options: Any,
) -> SPARKE:
    """A ``sparke.SPARKE`` guide with objective "rke"; ``options`` go to ``SPARKE``."""
    return SPARKE(scale=scale, objective="rke", space=space, centre=centre, motion=motion, **options)


def _build(scale: float, settings: dict[str, Any]) -> SPARKE:
    return LatentRKE(scale, **{**settings, "window": tuple(settings["window"])})


LATENT_RKE_SPEC = MethodSpec(
    name="rke",
    doc="latent RKE guidance: SPARKE without the prompt kernel (pushes away from every earlier image)",
    paper="Jalali, Lei, Gohari, Farnia, SPARKE, arXiv 2506.10173 (latent RKE baseline)",
    default_scale=constructor_defaults(LatentRKE, ["scale"])["scale"],
    defaults={**constructor_defaults(SPARKE, SETTINGS), **constructor_defaults(LatentRKE, SPACE_SETTINGS)},
    build=_build,
    help={k: SPARKE_HELP[k] for k in (*SETTINGS, *SPACE_SETTINGS)},
)
