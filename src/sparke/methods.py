"""Generation methods by name, for ``sparke generate --method NAME`` and the benchmark.

``METHODS`` is a plain dict ``name -> MethodSpec``; adding a method is adding an entry:

    METHODS["mine"] = MethodSpec(
        name="mine", doc="one line", paper="Author et al., arXiv ...", default_scale=0.1,
        defaults={"every": 1}, build=lambda scale, settings: MyGuide(scale=scale, **settings),
    )

A guide is a callable ``guide(pipe, **pipe_kwargs) -> pipeline output``. When it has a ``bank`` attribute (a
``sparke.Bank``) the command line saves it after each batch and restores it on resume.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["METHODS", "Guide", "MethodSpec", "resolve_settings"]


class Guide(Protocol):
    """``guide(pipe, **pipe_kwargs)`` runs one (guided) pipeline call and returns the pipeline's output."""

    def __call__(self, pipe: Any, **pipe_kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class MethodSpec:
    """One generation method: its documentation, its defaults and how to build a guide.

    ``defaults`` lists every setting the method accepts (JSON-able values) besides ``scale``; ``build(scale,
    settings)`` receives all of them, defaults filled in. ``has_scale`` False: the method has no scale knob
    (only ``scale=0`` is accepted).
    """

    name: str
    doc: str
    paper: str
    default_scale: float
    defaults: Mapping[str, Any]
    build: Callable[[float, dict[str, Any]], Guide]
    has_scale: bool = True
    help: Mapping[str, str] = field(default_factory=dict)  # setting -> one-line description


def resolve_settings(spec: MethodSpec, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The method's defaults updated with ``overrides``; a setting the method lacks is a ``ValueError``."""
    unknown = sorted(set(overrides) - set(spec.defaults))
    if unknown:
        known = ", ".join(sorted(spec.defaults)) or "none"
        raise ValueError(
            f"method {spec.name!r} has no setting {', '.join(map(repr, unknown))} (its settings: {known})"
        )
    settings = dict(spec.defaults)
    settings.update(overrides)
    # settings are recorded in JSON files and compared on resume: keep them JSON-shaped (tuples -> lists)
    return json.loads(json.dumps(settings))


# -- none -----------------------------------------------------------------------------------------------------
def _build_none(scale: float, settings: dict[str, Any]) -> Guide:
    from sparke.guidance import SPARKE

    # scale 0 is exactly the unguided call (no hook is attached); SPARKE still records every image's final
    # latents in its bank, so an unguided run leaves a bank that a later guided run can start from.
    return SPARKE(scale=0.0, space=settings["space"], prompt_encoder=settings["prompt_encoder"])


# -- sparke ---------------------------------------------------------------------------------------------------
SPARKE_DEFAULTS: dict[str, Any] = {
    "objective": "cond-rke",
    "kernel": "gaussian",
    "sigma_image": 0.8,
    "sigma_prompt": 0.3,
    "every": 10,
    "window": [0.0, 1.0],
    "space": "latent",
    "step": "relative",
    "prompt_encoder": "pipeline",
}

SPARKE_HELP: dict[str, str] = {
    "objective": "score the guidance raises: cond-rke (SPARKE), rke, cond-vendi, vendi",
    "kernel": "kernel on the unit-norm features: gaussian or cosine",
    "sigma_image": "bandwidth of the image-feature kernel (unit-norm features)",
    "sigma_prompt": "bandwidth of the prompt-feature kernel (unit-norm features)",
    "every": "guide at denoising steps 0, every, 2*every, ...",
    "window": "(start, end) fractions of the trajectory where guidance acts",
    "space": "feature space: latent (the paper's) or x0 (clean-sample estimate)",
    "step": "relative (scale * |z| * g/|g|, the authors' rule) or raw (scale * g)",
    "prompt_encoder": "prompt features: pipeline (its own text encoder) or minilm",
}


def _build_sparke(scale: float, settings: dict[str, Any]) -> Guide:
    from sparke.guidance import SPARKE

    options = dict(settings)
    options["window"] = tuple(options["window"])
    return SPARKE(scale=scale, **options)


METHODS: dict[str, MethodSpec] = {
    "none": MethodSpec(
        name="none",
        doc="the pipeline as is (classifier-free guidance only); its bank records the images' latents",
        paper="Ho & Salimans, Classifier-Free Diffusion Guidance, arXiv 2207.12598",
        default_scale=0.0,
        defaults={"space": "latent", "prompt_encoder": "pipeline"},
        build=_build_none,
        has_scale=False,
        help={k: SPARKE_HELP[k] for k in ("space", "prompt_encoder")},
    ),
    "sparke": MethodSpec(
        name="sparke",
        doc="prompt-aware diversity guidance: raise the Cond-RKE of the bank plus the new images",
        paper="Jalali, Lei, Gohari, Farnia, SPARKE, arXiv 2506.10173",
        default_scale=0.03,
        defaults=SPARKE_DEFAULTS,
        build=_build_sparke,
        help=SPARKE_HELP,
    ),
}

# the paper's baselines (rke, vendi, cads, pg) live in sparke.baselines
from sparke.baselines.registry import baseline_specs  # noqa: E402

METHODS.update(baseline_specs())
