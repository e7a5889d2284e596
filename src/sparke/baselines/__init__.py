"""The paper's baselines behind one interface: ``guide = make(name, scale=...); out = guide(pipe, **kw)``.

Every method attaches to a stock diffusers pipeline for one call through ``sparke.guidance.attach`` (per-step
latent hooks or a denoiser pre-hook) and has a ``scale`` knob where 0 means exactly the unguided call:

- ``none``: the pipeline as is;
- ``sparke``: prompt-aware Cond-RKE guidance (``sparke.SPARKE``, the paper's method);
- ``rke``: latent RKE, SPARKE without the prompt kernel (``rke.LatentRKE``);
- ``vendi``: Vendi score guidance over a 150-sample sliding window, as in c-VSG (``vendi.VendiGuidance``);
- ``cads``: condition-annealed sampling, noise on the prompt embeddings (``cads.CADS``);
- ``pg``: particle guidance, in-batch RBF repulsion (``particle.ParticleGuidance``).
"""

from __future__ import annotations

from typing import Any

from .cads import CADS
from .particle import ParticleGuidance
from .rke import LatentRKE
from .vendi import VendiGuidance

__all__ = [
    "CADS",
    "DEFAULT_SCALES",
    "LatentRKE",
    "NAMES",
    "ParticleGuidance",
    "Unguided",
    "VendiGuidance",
    "make",
]

NAMES = ("none", "sparke", "rke", "vendi", "cads", "pg")

# each method's own default scale (its paper's, or ours where the paper's unit does not carry over)
DEFAULT_SCALES: dict[str, float] = {
    "none": 0.0,
    "sparke": 0.03,
    "rke": 0.03,
    "vendi": 0.03,
    "cads": 0.25,
    "pg": 0.05,
}


class Unguided:
    """The ``none`` method: calls the pipeline unchanged (same interface as the guides)."""

    scale = 0.0

    def __repr__(self) -> str:
        return "Unguided()"

    def __call__(self, pipe: Any, **kwargs: Any) -> Any:
        return pipe(**kwargs)


def make(name: str, scale: float | None = None, **options: Any) -> Any:
    """A fresh guide for method ``name`` (see ``NAMES``); ``scale`` None = the method's default."""
    if name not in NAMES:
        raise ValueError(f"method: must be one of {', '.join(NAMES)}, got {name!r}")
    s = DEFAULT_SCALES[name] if scale is None else float(scale)
    if name == "none":
        if options:
            raise ValueError(f"method 'none' takes no options, got {sorted(options)}")
        return Unguided()
    if name == "sparke":
        from sparke.guidance import SPARKE

        return SPARKE(scale=s, **options)
    factory = {"rke": LatentRKE, "vendi": VendiGuidance, "cads": CADS, "pg": ParticleGuidance}[name]
    return factory(scale=s, **options)
