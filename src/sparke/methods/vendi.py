"""Vendi score guidance with a sliding-window memory, as in c-VSG (Askari Hemmat, Hall, Sun, Ross, Drozdzal,
Romero-Soriano, "Improving Geo-diversity of Generated Images with Contextualized Vendi Score Guidance",
ECCV 2024; Vendi score guidance from Hemmat et al. 2023).

Each new sample's latents move up the gradient of log Vendi(window U batch): the order-1 kernel entropy
over the last ``memory`` generated samples (150) (a ``sparke.Bank`` with that capacity, oldest rows evicted) and
the current batch, via ``sparke.diversity_direction(objective="vendi")``: an eigendecomposition of the
(memory + B)^2 kernel matrix at every guided step, which is why c-VSG keeps only a window. The score is
unconditional: prompts are ignored (c-VSG's "contextualisation" with real exemplars is not reproduced; there
is no exemplar set here).

Built on the SPARKE plug-in (same attachment, step rule and feature spaces). Defaults: memory 150 rows, the
Gaussian kernel with sigma 0.8 on unit features, the plug-in's step schedule, relative step, ``scale`` = 0.03, in the
latent space with the plain step, as c-VSG and the SPARKE paper run it (``space="latent"``, ``centre=False``,
``motion=0``, whatever SPARKE's own defaults).
"""

from __future__ import annotations

from typing import Any

from sparke.core import Bank
from sparke.guidance import SPARKE, MethodSpec
from sparke.guidance.options import PAPER, help_of

from .rke import SCALE, SETTINGS, SPACE_SETTINGS
from .sparke import flat_defaults

__all__ = ["VENDI_SPEC", "WINDOW", "VendiGuidance"]

WINDOW = 150


def VendiGuidance(scale: float = SCALE, memory: int = WINDOW, **settings: Any) -> SPARKE:  # noqa: N802
    """A ``sparke.SPARKE`` guide with objective "vendi", the paper's step and a sliding bank of the last
    ``memory`` rows. ``settings``: flat SPARKE settings (every, window = the trajectory fractions, ...)."""
    if isinstance(memory, bool) or not (isinstance(memory, int) and memory >= 1):
        raise ValueError(f"memory: must be a positive integer, got {memory!r}")
    guide = SPARKE.from_settings(
        scale, {**PAPER, **settings, "objective": "vendi"}, bank=Bank(capacity=memory)
    )
    guide.follows_pipeline = (
        True  # our own sliding bank: it moves to the pipeline's device like a default one
    )
    return guide


VENDI_SPEC = MethodSpec(
    name="vendi",
    doc=f"Vendi score guidance over a sliding window of the last {WINDOW} images (as in c-VSG)",
    paper="Askari Hemmat et al., contextualized Vendi Score Guidance (c-VSG), ECCV 2024",
    default_scale=SCALE,
    defaults={**flat_defaults(*SETTINGS), **{k: PAPER[k] for k in SPACE_SETTINGS}, "memory": WINDOW},
    build=lambda scale, settings: VendiGuidance(scale, **settings),
    help={
        **help_of(*SETTINGS, *SPACE_SETTINGS),
        "memory": "rows of the sliding memory (the last images generated)",
    },
)
