"""``MethodSpec`` entries of the baselines for ``sparke.methods.METHODS`` (``sparke generate --method``)."""

from __future__ import annotations

from typing import Any

__all__ = ["baseline_specs"]

_SPARKE_LIKE_HELP = {
    "every": "guide at denoising steps 0, every, 2*every, ...",
    "window": "(start, end) fractions of the trajectory where guidance acts",
    "space": "feature space: latent or x0 (clean-sample estimate)",
    "step": "relative (scale * |z| * g/|g|) or raw (scale * g)",
    "sigma_image": "bandwidth of the Gaussian kernel on the unit-norm features",
}


def _sparke_like(scale: float, settings: dict[str, Any], factory: Any) -> Any:
    options = dict(settings)
    if "window" in options:
        options["window"] = tuple(options["window"])
    return factory(scale=scale, **options)


def _build_vendi(scale: float, settings: dict[str, Any]) -> Any:
    from .vendi import VendiGuidance

    options = dict(settings)
    rows = options.pop("memory")
    options["window"] = tuple(options["window"])
    return VendiGuidance(scale=scale, memory=rows, **options)


def baseline_specs() -> dict[str, Any]:
    """name -> ``MethodSpec`` for rke, vendi, cads and pg."""
    from sparke.methods import MethodSpec

    from .cads import CADS
    from .particle import ParticleGuidance
    from .rke import LatentRKE
    from .vendi import WINDOW

    sparke_like = {
        "every": 10,
        "window": [0.0, 1.0],
        "space": "latent",
        "step": "relative",
        "sigma_image": 0.8,
    }
    return {
        "rke": MethodSpec(
            name="rke",
            doc="latent RKE guidance: SPARKE without the prompt kernel (pushes away from every earlier image)",
            paper="Jalali, Lei, Gohari, Farnia, SPARKE, arXiv 2506.10173 (latent RKE baseline)",
            default_scale=0.03,
            defaults=sparke_like,
            build=lambda scale, s: _sparke_like(scale, s, LatentRKE),
            help=_SPARKE_LIKE_HELP,
        ),
        "vendi": MethodSpec(
            name="vendi",
            doc=f"Vendi score guidance over a sliding window of the last {WINDOW} images (as in c-VSG)",
            paper="Askari Hemmat et al., contextualized Vendi Score Guidance (c-VSG), ECCV 2024",
            default_scale=0.03,
            defaults={**sparke_like, "memory": WINDOW},
            build=_build_vendi,
            help={
                **_SPARKE_LIKE_HELP,
                "memory": "rows of the sliding memory (the last images generated)",
            },
        ),
        "cads": MethodSpec(
            name="cads",
            doc="condition-annealed sampling: scheduled Gaussian noise on the prompt embeddings, rescaled",
            paper="Sadat et al., CADS: Condition-Annealed Sampling, ICLR 2024",
            default_scale=0.25,
            defaults={"tau1": 0.6, "tau2": 0.9, "psi": 1.0, "rescale": True, "seed": 0},
            build=lambda scale, s: CADS(scale=scale, **s),
            help={
                "tau1": "diffusion time below which the condition is clean (1 = first step)",
                "tau2": "diffusion time above which the condition is pure (rescaled) noise",
                "psi": "mix of the rescaled embedding (1 = fully rescaled)",
                "rescale": "rescale the noisy embedding to the clean one's mean and std",
                "seed": "seed of the CADS noise generator",
            },
        ),
        "pg": MethodSpec(
            name="pg",
            doc="particle guidance: in-batch RBF repulsion of the latents, median-heuristic bandwidth",
            paper="Corso et al., Particle Guidance: non-I.I.D. Diverse Sampling, ICLR 2024",
            default_scale=0.05,
            defaults={"every": 1, "window": [0.0, 0.8]},
            build=lambda scale, s: _sparke_like(scale, s, ParticleGuidance),
            help={
                "every": "repel at denoising steps 0, every, 2*every, ...",
                "window": "(start, end) fractions of the trajectory where the particles repel",
            },
        ),
    }
