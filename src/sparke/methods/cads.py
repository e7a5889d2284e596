"""CADS: condition-annealed diffusion sampling (Sadat et al., "CADS: Unleashing the Diversity of Diffusion
Models through Condition-Annealed Sampling", ICLR 2024).

At diffusion time t (1 = pure noise at the first step, 0 = clean; here t = 1 - index / num_steps) the
conditioning y given to the denoiser is replaced by

    y_hat = sqrt(gamma(t)) y + s sqrt(1 - gamma(t)) n,      n ~ N(0, I) drawn afresh at every model call,
    gamma(t) = 1 for t <= tau1,  (tau2 - t) / (tau2 - tau1) for tau1 < t < tau2,  0 for t >= tau2,

then rescaled to the clean embedding's statistics, y_res = (y_hat - mean(y_hat)) / std(y_hat) * std(y) +
mean(y), and mixed y_final = psi y_res + (1 - psi) y_hat (mean/std per sample over all its tokens and
channels). The noise is always added to the clean y the pipeline passes in, so it never compounds across
steps. Only the conditional half of a classifier-free-guidance batch is noised (the paper anneals y, not the
null condition); diffusers concatenates [negative, positive], so the last B rows are the conditional ones.

Defaults are the paper's: tau1 = 0.6, tau2 = 0.9, s = 0.25 (``scale``), psi = 1. The scale knob is the noise
scale s; scale = 0 is exactly the unguided call.

Which inputs are noised: ``encoder_hidden_states`` (token embeddings: SD, SDXL, PixArt, SD3, Flux),
``pooled_projections`` (SD3, Flux), ``added_cond_kwargs["text_embeds"]`` (SDXL's pooled embedding) and a
floating-point ``class_labels`` (the embedded ShapesPipeline feeds its sentence embedding there too; when it
equals the single cross-attention token it receives the same noisy value).
"""

from __future__ import annotations

from typing import Any

import torch

from sparke.guidance import Guide, MethodSpec
from sparke.guidance.guide import check_scale
from sparke.guidance.spec import constructor_defaults

__all__ = ["CADS", "CADS_SPEC", "cads_gamma"]


def cads_gamma(t: float, tau1: float = 0.6, tau2: float = 0.9) -> float:
    """Annealing schedule gamma(t) in [0, 1]: 1 (clean condition) for t <= tau1, 0 for t >= tau2."""
    if t <= tau1:
        return 1.0
    if t >= tau2:
        return 0.0
    return (tau2 - t) / (tau2 - tau1)


def _rows_stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and std over all non-batch dims, shaped for broadcasting against y."""
    flat = y.flatten(1)
    shape = (y.shape[0],) + (1,) * (y.ndim - 1)
    return flat.mean(1).view(shape), flat.std(1).view(shape)


def _mix(seed: int, image_seed: int) -> int:
    """A 63-bit seed from the guide's seed and an image's: distinct pairs give unrelated streams."""
    h = (seed * 0x9E3779B97F4A7C15 + image_seed * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    h ^= h >> 31
    return (h * 0xD6E8FEB86659FD93 % (1 << 64)) >> 1


class CADS(Guide):
    """Condition-annealed sampling attached to a diffusers pipeline per call.

    Args:
        scale: noise scale s (paper: 0.25); 0 leaves the call unchanged.
        tau1, tau2: annealing thresholds on diffusion time t in [0, 1] (paper: 0.6, 0.9).
        psi: mixing factor of the rescaled embedding (paper: 1, full rescaling).
        rescale: apply the mean/std rescaling at all (paper: yes).
        seed: seed of the noise. When the call passes one CPU generator per image (as ``sparke generate``
            does), image i's noise comes from its own stream, seeded by ``seed`` and that generator's
            initial seed: an image gets the same noise whatever batch it falls in, so a resumed run equals
            an uninterrupted one. Otherwise one stream advances across calls.
    """

    uses_step = False
    uses_model_input = True

    def __init__(
        self,
        scale: float = 0.25,
        tau1: float = 0.6,
        tau2: float = 0.9,
        psi: float = 1.0,
        rescale: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_scale(scale)
        if not 0.0 <= tau1 < tau2 <= 1.0:
            raise ValueError(f"tau1, tau2: need 0 <= tau1 < tau2 <= 1, got {tau1}, {tau2}")
        if not 0.0 <= psi <= 1.0:
            raise ValueError(f"psi: must be in [0, 1], got {psi}")
        self.scale = float(scale)
        self.tau1, self.tau2, self.psi, self.rescale = float(tau1), float(tau2), float(psi), bool(rescale)
        self.seed = int(seed)
        self.generator = torch.Generator("cpu").manual_seed(self.seed)
        self._image_generators: list[torch.Generator] | None = None

    def __repr__(self) -> str:
        return f"CADS(scale={self.scale}, tau1={self.tau1}, tau2={self.tau2}, psi={self.psi})"

    def begin(self, pipe: Any, kwargs: dict[str, Any]) -> None:
        """One noise stream per image when the call brings one generator per image (read, never advanced)."""
        gens = kwargs.get("generator")
        self._image_generators = None
        if (
            isinstance(gens, list)
            and len(gens) == self.batch
            and all(isinstance(g, torch.Generator) for g in gens)
        ):
            self._image_generators = [
                torch.Generator("cpu").manual_seed(_mix(self.seed, g.initial_seed())) for g in gens
            ]

    def time(self, index: int) -> float:
        """Diffusion time t of denoising step ``index``: 1 at the first step, 1/n at the last."""
        return 1.0 - index / max(self.num_steps(), 1)

    def anneal(self, y: torch.Tensor, gamma: float) -> torch.Tensor:
        """The annealed, rescaled condition for clean rows y (same shape); fresh noise on every call."""
        y32 = y.float()
        noise = self._noise(y32.shape).to(y32.device)
        y_hat = gamma**0.5 * y32 + self.scale * (1.0 - gamma) ** 0.5 * noise
        if self.rescale:
            mean_in, std_in = _rows_stats(y32)
            mean_hat, std_hat = _rows_stats(y_hat)
            y_res = (y_hat - mean_hat) / std_hat.clamp_min(1e-12) * std_in + mean_in
            y_hat = self.psi * y_res + (1.0 - self.psi) * y_hat
        return y_hat.to(y.dtype)

    def _noise(self, shape: torch.Size) -> torch.Tensor:
        streams = self._image_generators
        if streams is None or shape[0] != len(streams):
            return torch.randn(shape, generator=self.generator)
        return torch.stack([torch.randn(shape[1:], generator=g) for g in streams])

    def _conditional_rows(self, rows: int) -> slice:
        """The rows of a denoiser input that carry the prompt (the last B under classifier-free guidance)."""
        b = self.batch
        if b is None or rows <= b:
            return slice(0, rows)
        return slice(rows - b, rows)

    def _noised(self, value: Any, gamma: float) -> Any:
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim >= 2):
            return value
        rows = self._conditional_rows(value.shape[0])
        out = value.clone()
        out[rows] = self.anneal(value[rows], gamma)
        return out

    def on_model_input(self, index: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        gamma = cads_gamma(self.time(index), self.tau1, self.tau2)
        if gamma >= 1.0:
            return None
        kwargs = dict(kwargs)
        changed = False
        hidden = kwargs.get("encoder_hidden_states")
        if hidden is not None:
            noised = self._noised(hidden, gamma)
            labels = kwargs.get("class_labels")
            if (
                isinstance(labels, torch.Tensor)
                and labels.is_floating_point()
                and hidden.ndim == 3
                and hidden.shape[1] == 1
                and labels.shape == hidden[:, 0].shape
                and torch.equal(labels, hidden[:, 0])
            ):
                kwargs["class_labels"] = noised[:, 0]  # one condition given twice: one noisy value
            elif labels is not None:
                kwargs["class_labels"] = self._noised(labels, gamma)
            kwargs["encoder_hidden_states"] = noised
            changed = True
        if kwargs.get("pooled_projections") is not None:
            kwargs["pooled_projections"] = self._noised(kwargs["pooled_projections"], gamma)
            changed = True
        added = kwargs.get("added_cond_kwargs")
        if isinstance(added, dict) and added.get("text_embeds") is not None:
            kwargs["added_cond_kwargs"] = {**added, "text_embeds": self._noised(added["text_embeds"], gamma)}
            changed = True
        if not changed:
            return None
        self.stats.guided += 1
        return args, kwargs


CADS_SPEC = MethodSpec(
    name="cads",
    doc="condition-annealed sampling: scheduled Gaussian noise on the prompt embeddings, rescaled",
    paper="Sadat et al., CADS: Condition-Annealed Sampling, ICLR 2024",
    default_scale=constructor_defaults(CADS, ["scale"])["scale"],
    defaults=constructor_defaults(CADS, ["tau1", "tau2", "psi", "rescale", "seed"]),
    build=lambda scale, settings: CADS(scale=scale, **settings),
    help={
        "tau1": "diffusion time below which the condition is clean (1 = first step)",
        "tau2": "diffusion time above which the condition is pure (rescaled) noise",
        "psi": "mix of the rescaled embedding (1 = fully rescaled)",
        "rescale": "rescale the noisy embedding to the clean one's mean and std",
        "seed": "seed of the CADS noise generator",
    },
)
