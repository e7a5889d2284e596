"""SPARKE and ``none`` as methods of ``sparke generate``, ``sparke bench`` and ``sparke methods``: their specs and
the command-line help of every SPARKE setting (shared by the rke and vendi methods built on the same guide).

The guide itself is ``sparke.guidance.plugin.SPARKE``; its defaults are read from its constructor.
"""

from __future__ import annotations

from typing import Any

from sparke.guidance import SPARKE, MethodSpec
from sparke.guidance.spec import constructor_defaults

__all__ = ["NONE_SPEC", "SPARKE_HELP", "SPARKE_SETTINGS", "SPARKE_SPEC"]

SPARKE_SETTINGS = (
    "objective",
    "kernel",
    "sigma_image",
    "sigma_prompt",
    "every",
    "window",
    "space",
    "step",
    "step_schedule",
    "smooth",
    "centre",
    "gate",
    "orthogonal",
    "crowding",
    "motion",
    "warp",
    "crossover",
    "neighbors",
    "samples",
)
SPARKE_HELP: dict[str, str] = {
    "objective": "score the guidance raises: cond-rke (SPARKE), rke, cond-vendi, vendi",
    "kernel": "kernel on the unit-norm features: gaussian or cosine",
    "sigma_image": "bandwidth of the image-feature kernel (unit-norm features), or median (per step, from distances)",
    "sigma_prompt": "bandwidth of the prompt-feature kernel (unit-norm features)",
    "every": "guide at denoising steps 0, every, 2*every, ...; auto: 10 from 20 steps on, else ceil(steps/5)",
    "window": "(start, end) fractions of the trajectory where guidance acts",
    "space": "feature space: latent (the paper's) or x0 (clean-sample estimate)",
    "step": "relative (scale * |z| * g/|g|, the authors' rule) or raw (scale * g)",
    "step_schedule": "constant, or noise: each step times the sample's noise share (large early, none late)",
    "centre": "compare latents minus each channel's spatial mean: move layout, not global colour (latent, x0); "
    "a fraction in [0, 1] removes that share of each mean",
    "orthogonal": "drop the step's component along the step's CFG direction (cond - uncond); no CFG: plain step",
    "crowding": "per-sample step scale m / (m + crowding), m: kernel mass of similar-prompt bank rows; 0: off",
    "motion": "keep only the step's part that moves what the clean estimate shows (a displacement field "
    "fit over a window of this many latent pixels): nothing painted on flat regions; global: one shift and one "
    "zoom of the whole image per sample; 0: off",
    "warp": "with motion: move the clean estimate by the fitted displacement for real (resampled), not by its "
    "first-order change; auto: wherever motion is on and neither smooth nor orthogonal is set",
    "gate": "guide a sample only when a bank image of a similar prompt is within this feature distance; 0: off",
    "smooth": "Gaussian blur (latent pixels) of the step's gradient, against high-frequency noise; 0: none",
    "prompt_encoder": "prompt features: pipeline (its own text encoder) or minilm",
    "crossover": "bank rows past which the bank is indexed (null: the device's measured figure)",
    "neighbors": "indexed bank: nearest rows read exactly per step",
    "samples": "indexed bank: rows sampled per step for the rest of the bank (null: 3 * neighbors)",
}


def _build(scale: float, settings: dict[str, Any]) -> SPARKE:
    options = dict(settings)
    if "window" in options:
        options["window"] = tuple(options["window"])
    return SPARKE(scale=scale, **options)


SPARKE_SPEC = MethodSpec(
    name="sparke",
    doc="prompt-aware diversity guidance: raise the Cond-RKE of the bank plus the new images",
    paper="Jalali, Lei, Gohari, Farnia, SPARKE, arXiv 2506.10173",
    default_scale=constructor_defaults(SPARKE, ["scale"])["scale"],
    defaults=constructor_defaults(SPARKE, [*SPARKE_SETTINGS, "prompt_encoder"]),
    build=_build,
    help=SPARKE_HELP,
)

# scale 0 is exactly the unguided call (no hook is attached); the guide still records every image's final
# latents in its bank, so an unguided run leaves a bank that a later guided run can start from.
NONE_SPEC = MethodSpec(
    name="none",
    doc="the pipeline as is (classifier-free guidance only); its bank records the images' latents",
    paper="Ho & Salimans, Classifier-Free Diffusion Guidance, arXiv 2207.12598",
    default_scale=0.0,
    defaults=constructor_defaults(SPARKE, ["space", "centre", "prompt_encoder"]),
    build=lambda scale, settings: SPARKE(scale=0.0, **settings),
    has_scale=False,
    help={k: SPARKE_HELP[k] for k in ("space", "centre", "prompt_encoder")},
)
