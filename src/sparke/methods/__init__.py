"""Generation methods by name: one table for ``sparke generate --method``, ``sparke bench`` and ``sparke methods``.

Each method module declares its ``MethodSpec`` (SPARKE's and ``none``'s in ``sparke.py``, beside the guide in
``sparke.guidance``); ``METHODS`` collects them:

- ``none``: the pipeline as is (``SPARKE`` at scale 0: nothing attached, the bank still records the images);
- ``sparke``: prompt-aware Cond-RKE guidance (``sparke.SPARKE``, the paper's method);
- ``rke``: latent RKE, SPARKE without the prompt kernel (``rke.LatentRKE``);
- ``vendi``: Vendi score guidance over a 150-sample sliding window, as in c-VSG (``vendi.VendiGuidance``);
- ``cads``: condition-annealed sampling, noise on the prompt embeddings (``cads.CADS``);
- ``pg``: particle guidance, in-batch RBF repulsion (``particle.ParticleGuidance``);
- ``interval``: classifier-free guidance only inside a band of noise levels (``interval.IntervalGuidance``);
- ``spell``: sparse repellency of the predicted clean images from the batch, earlier images and a shield
  (``spell.SpellGuidance``).

Adding a method is adding a spec: ``METHODS["mine"] = MethodSpec(name="mine", ..., build=...)``.
A guide is a callable ``guide(pipe, **pipe_kwargs) -> pipeline output``; when it has a ``bank`` the command line
saves it after each batch and restores it on resume.
"""

from __future__ import annotations

from typing import Any

from sparke.guidance.spec import GuideLike, MethodSpec, resolve_settings

from .cads import CADS, CADS_SPEC
from .interval import INTERVAL_SPEC, IntervalGuidance
from .particle import PARTICLE_SPEC, ParticleGuidance
from .rke import LATENT_RKE_SPEC, LatentRKE
from .sparke import NONE_SPEC, SPARKE_HELP, SPARKE_SPEC
from .spell import SPELL_SPEC, SpellGuidance
from .vendi import VENDI_SPEC, VendiGuidance

__all__ = [
    "CADS",
    "METHODS",
    "NONE_SPEC",
    "SPARKE_HELP",
    "SPARKE_SPEC",
    "IntervalGuidance",
    "NAMES",
    "GuideLike",
    "LatentRKE",
    "MethodSpec",
    "ParticleGuidance",
    "SpellGuidance",
    "VendiGuidance",
    "make",
    "resolve_settings",
]

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        NONE_SPEC,
        SPARKE_SPEC,
        LATENT_RKE_SPEC,
        VENDI_SPEC,
        CADS_SPEC,
        PARTICLE_SPEC,
        INTERVAL_SPEC,
        SPELL_SPEC,
    )
}
NAMES = tuple(METHODS)


def make(name: str, scale: float | None = None, **settings: Any) -> GuideLike:
    """A fresh guide for method ``name`` (see ``METHODS``); ``scale`` None = the method's default."""
    if name not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name].make(scale, **settings)
