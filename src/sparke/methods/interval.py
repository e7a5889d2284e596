"""Guidance interval: classifier-free guidance only at middle noise levels (Kynkäänniemi, Aittala, Karras, Laine,
Aila, Lehtinen, "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion
Models", NeurIPS 2024, arXiv 2404.07724).

Guidance at high noise levels is what collapses diversity (it drags every sample toward the same mode before
the layout is set); at low noise levels it does little. The paper applies the guidance weight w only for EDM
noise levels sigma in (lo, hi] and the plain conditional prediction D(x | c) outside. Its interval for
Stable Diffusion XL is (0.28, 5.42] (EDM2-S on ImageNet-512: (0.28, 2.90]); that SD-XL interval is our default
for every SD-class latent model.

Noise levels of a diffusers scheduler are mapped to EDM's sigma by ``sparke.guidance.spaces.step_sigma``: a
sample alpha x0 + s eps has sigma = s / alpha (VP schedulers: sqrt((1 - abar) / abar); flow matching:
s / (1 - s); Euler/DPM-Solver/UniPC already store that sigma). The interval is read at the sigma the
denoising step starts from, the one the model is evaluated at.

How, with no fork and no copied ``__call__``: a forward pre-hook on the denoiser copies the conditional half
of every batch-shaped input (prompt embeddings, pooled embeddings, class labels) onto the unconditional half
at steps outside the interval, so both halves predict D(x | c) and the pipeline's own CFG combination
uncond + w (cond - uncond) returns exactly the conditional prediction. ``scale`` in [0, 1] is the share of
the guidance removed outside the interval: the unconditional inputs become the mix uncond + scale (cond -
uncond) (1, the default, is the paper's method; 0 is exactly the unguided call). Unlike the paper's sampler
this does not save the unconditional evaluations outside the interval. A call with no unconditional batch
(guidance scale <= 1: distilled models) has nothing to limit and is left unchanged.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from sparke.guidance import Guide, MethodSpec
from sparke.guidance.guide import check_scale
from sparke.guidance.spaces import step_sigma
from sparke.guidance.spec import constructor_defaults

__all__ = ["INTERVAL_SPEC", "SDXL_INTERVAL", "IntervalGuidance"]

SDXL_INTERVAL = (0.28, 5.42)  # the paper's (sigma_lo, sigma_hi] for Stable Diffusion XL


class IntervalGuidance(Guide):
    """Classifier-free guidance limited to EDM noise levels sigma in (lo, hi], attached per call.

    Args:
        scale: share of the guidance removed outside the interval (1: the paper's conditional-only
            prediction there; 0: the unguided call).
        lo, hi: the interval's bounds in EDM sigma (see the module docstring for the scheduler mapping).
    """

    uses_step = False
    uses_model_input = True

    def __init__(
        self, scale: float = 1.0, lo: float = SDXL_INTERVAL[0], hi: float = SDXL_INTERVAL[1]
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        if self.scale > 1:
            raise ValueError(f"scale: the share of guidance removed must be in [0, 1], got {scale!r}")
        if not (0.0 <= float(lo) < float(hi)):
            raise ValueError(f"lo, hi: need 0 <= lo < hi (EDM noise levels), got {lo!r}, {hi!r}")
        self.lo, self.hi = float(lo), float(hi)
        self.sigmas: list[float] = []  # the noise level of each model call of the last call (for tests)
        self._cfg: Any = None  # the guidance scale of the current call

    def __repr__(self) -> str:
        return f"IntervalGuidance(scale={self.scale}, lo={self.lo}, hi={self.hi})"

    def begin(self, pipe: Any, kwargs: dict[str, Any]) -> None:
        self.sigmas = []
        self._cfg = kwargs.get("guidance_scale")

    def end(self, pipe: Any, run: Any) -> None:
        """Warn when the call had no classifier-free guidance to limit (so the method changed nothing)."""
        cfg = self._cfg
        no_cfg = isinstance(cfg, (int, float)) and cfg <= 1
        outside = any(not self.inside(sigma) for sigma in self.sigmas)  # steps where it had work to do
        if self.scale == 0 or self.stats.guided or run.step_calls == 0 or not (no_cfg or outside):
            return
        why = (
            f"the guidance scale (cfg) is {cfg:g} <= 1, so the pipeline runs no classifier-free guidance"
            if no_cfg
            else "the pipeline ran no unconditional batch (a distilled or guidance-embedded model)"
        )
        warnings.warn(
            f"interval: {why}; there is nothing to limit and the images are the unguided ones (use cfg > 1)",
            UserWarning,
            stacklevel=2,
        )

    def inside(self, sigma: float) -> bool:
        """True where the pipeline's guidance applies: lo < sigma <= hi."""
        return self.lo < sigma <= self.hi

    def on_model_input(self, index: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        run = self._run
        b = self.batch
        if run is None or b is None:
            return None
        sigma = step_sigma(run.scheduler, index)
        self.sigmas.append(sigma)
        if self.inside(sigma):
            return None
        uncond_first = not _dit_style(kwargs, b)
        changed = [False]

        def limit(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: limit(v) for k, v in value.items()}
            if not (isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == 2 * b):
                return value
            u, c = (value[:b], value[b:]) if uncond_first else (value[b:], value[:b])
            if torch.equal(u, c):
                return value
            changed[0] = True
            mixed = c if (self.scale >= 1 or not value.is_floating_point()) else u + self.scale * (c - u)
            return torch.cat([mixed, c] if uncond_first else [c, mixed])

        new_args = tuple(limit(a) for a in args)
        new_kwargs = {k: limit(v) for k, v in kwargs.items()}
        if not changed[0]:
            return None  # no unconditional batch (guidance scale <= 1) or nothing differs
        self.stats.guided += 1
        return new_args, new_kwargs


def _dit_style(kwargs: dict, b: int) -> bool:
    """True when the conditional half comes first: DiT stacks [labels, null class] (integer class labels)."""
    labels = kwargs.get("class_labels")
    if not (isinstance(labels, torch.Tensor) and not labels.is_floating_point() and labels.shape[0] == 2 * b):
        return False
    null = labels.max()
    return bool((labels[b:] == null).all()) and not bool((labels[:b] == null).all())


INTERVAL_SPEC = MethodSpec(
    name="interval",
    doc="classifier-free guidance only at EDM noise levels in (lo, hi]; the conditional prediction outside",
    paper="Kynkäänniemi et al., Applying Guidance in a Limited Interval, NeurIPS 2024, arXiv 2404.07724",
    default_scale=constructor_defaults(IntervalGuidance, ["scale"])["scale"],
    defaults=constructor_defaults(IntervalGuidance, ["lo", "hi"]),
    build=lambda scale, settings: IntervalGuidance(scale, **settings),
    help={
        "lo": "lower end of the guided noise levels (EDM sigma; the paper's SD-XL value)",
        "hi": "upper end of the guided noise levels (EDM sigma; higher noise gets no guidance)",
    },
)
