"""Feature spaces for guidance: the latents, the clean-sample estimate x0, or an image encoder.

Features are always (B, d) float32 rows, L2-normalised, differentiable with respect to the latents:
- ``"latent"``: the flattened current latents (the paper's choice; no network involved);
- ``"x0"``: the flattened estimate of the clean latents from the model output under the scheduler's
  parametrisation (epsilon, v-prediction, sample, flow matching), the model output held fixed;
- a callable ``encoder(images) -> (B, ...)``: x0 decoded by ``pipe.vae`` into images (B, 3, H, W) in [-1, 1]
  (diffusers' convention; pixel-space pipelines with ``vae=None`` pass x0 through unchanged), then encoded.
  Gradients flow back through the encoder and the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "centred",
    "decode",
    "encode_to_latents",
    "features",
    "image_size",
    "is_packed",
    "noise_share",
    "space_label",
    "step_sigma",
    "unit_rows",
    "x0_estimate",
]

Space = str | Callable[[torch.Tensor], Any]


def unit_rows(z: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, d) flattened rows scaled to unit L2 norm (float32)."""
    return F.normalize(z.flatten(1).float(), dim=1, eps=1e-12)


def _index(scheduler: Any, timestep: Any) -> int:
    """Position of `timestep` in the scheduler's sigma/timestep arrays for the current step() call."""
    idx = getattr(scheduler, "step_index", None)
    if idx is not None:
        return int(idx)
    begin = getattr(scheduler, "begin_index", None)
    if begin is not None:
        return int(begin)
    if hasattr(scheduler, "index_for_timestep"):
        return int(scheduler.index_for_timestep(timestep))
    t = torch.as_tensor(timestep).to(scheduler.timesteps.device)
    hits = (scheduler.timesteps == t).nonzero()
    return int(hits[0]) if len(hits) else 0


def _is_flow(scheduler: Any) -> bool:
    config = scheduler.config
    if config.get("prediction_type") == "flow_prediction" or config.get("use_flow_sigmas"):
        return True
    return "FlowMatch" in type(scheduler).__name__


def _ddpm_style_sigma(scheduler: Any) -> bool:
    # Euler, Heun, LMS, KDPM2...: `sample` is x0 + sigma * eps (not variance preserving); their initial
    # noise has standard deviation sigma_max > 1, unlike the VP schedulers (DDIM, DPM-Solver, UniPC: 1.0).
    return float(torch.as_tensor(getattr(scheduler, "init_noise_sigma", 1.0)).max()) > 1.0 + 1e-6


def x0_estimate(
    scheduler: Any, sample: torch.Tensor, model_output: torch.Tensor, timestep: Any
) -> torch.Tensor:
    """Clean-sample estimate from `sample` (differentiable) and `model_output` (held fixed), same shape.

    Parametrisation from ``scheduler.config.prediction_type`` and the scheduler family: flow matching
    (x0 = x - sigma v), sigma-space Euler/Heun (x0 = x - sigma eps), or variance-preserving
    (x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)); "sample" prediction is x0 itself, made to pass the latent
    gradient straight through (d x0 / d x = I) so that guidance in this space is not a no-op.
    """
    out = model_output.detach().to(sample.dtype)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "sample":
        return out + (sample - sample.detach())
    if _is_flow(scheduler):
        sigma = scheduler.sigmas[_index(scheduler, timestep)].to(sample.device, sample.dtype)
        return sample - sigma * out
    if _ddpm_style_sigma(scheduler) and hasattr(scheduler, "sigmas"):
        sigma = scheduler.sigmas[_index(scheduler, timestep)].to(sample.device, sample.dtype)
        if kind == "epsilon":
            return sample - sigma * out
        if kind == "v_prediction":
            return sample / (sigma**2 + 1) - out * sigma / (sigma**2 + 1) ** 0.5
        raise ValueError(f"x0 space: unsupported prediction_type {kind!r} for {type(scheduler).__name__}")
    alpha_t, sigma_t = (v.to(sample.device, sample.dtype) for v in _vp_alpha_sigma(scheduler, timestep))
    if kind == "epsilon":
        return (sample - sigma_t * out) / alpha_t
    if kind == "v_prediction":
        return alpha_t * sample - sigma_t * out
    raise ValueError(f"x0 space: unsupported prediction_type {kind!r} for {type(scheduler).__name__}")


def _vp_alpha_sigma(scheduler: Any, timestep: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) of a variance-preserving sample alpha_t x0 + sigma_t eps at this step."""
    if hasattr(scheduler, "sigmas") and hasattr(scheduler, "_sigma_to_alpha_sigma_t"):
        # DPM-Solver family: VP sample, with its own (possibly Karras) sigma schedule
        return scheduler._sigma_to_alpha_sigma_t(scheduler.sigmas[_index(scheduler, timestep)].float())
    t = int(torch.as_tensor(timestep).flatten()[0])
    abar = scheduler.alphas_cumprod[max(t, 0)].float()
    return abar.sqrt(), (1 - abar).sqrt()


def noise_share(scheduler: Any, timestep: Any) -> float:
    """Share of noise in the sample at this step, sigma / sqrt(alpha^2 + sigma^2): ~1 at the start, 0 clean.

    For the sample alpha x0 + sigma eps of each family: flow matching (1 - s, s), sigma-space Euler/Heun
    (1, sigma), variance-preserving (sqrt(abar), sqrt(1 - abar)).
    """
    if _is_flow(scheduler):
        s = float(scheduler.sigmas[_index(scheduler, timestep)])
        alpha, sigma = 1.0 - s, s
    elif _ddpm_style_sigma(scheduler) and hasattr(scheduler, "sigmas"):
        alpha, sigma = 1.0, float(scheduler.sigmas[_index(scheduler, timestep)])
    else:
        a, b = _vp_alpha_sigma(scheduler, timestep)
        alpha, sigma = float(a), float(b)
    return sigma / max((alpha**2 + sigma**2) ** 0.5, 1e-12)


def step_sigma(scheduler: Any, index: int) -> float:
    """EDM noise level sigma of denoising step ``index`` (0-based) of the scheduler's current schedule.

    The sample alpha x0 + s eps is x0 + (s / alpha) eps scaled by alpha, so sigma = s / alpha, the unit of
    Karras et al.'s EDM: flow matching (1 - s) x0 + s eps gives s / (1 - s) (inf at s = 1); Euler, Heun,
    DPM-Solver and UniPC keep that sigma in ``scheduler.sigmas``; DDIM, DDPM and LCM give
    sqrt((1 - abar_t) / abar_t) at the step's timestep. Second-order schedulers list each sigma twice.
    """
    pos = int(index) + int(getattr(scheduler, "_begin_index", None) or 0)
    if hasattr(scheduler, "state_in_first_order") and pos > 0:
        pos = 2 * pos - 1  # Heun-style schedules: [s0, s1, s1, s2, s2, ...]
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas):
        s = float(sigmas[min(pos, len(sigmas) - 1)])
        if _is_flow(scheduler):
            return math.inf if s >= 1.0 else s / (1.0 - s)
        return s
    t = int(torch.as_tensor(scheduler.timesteps[min(pos, len(scheduler.timesteps) - 1)]).flatten()[0])
    abar = float(scheduler.alphas_cumprod[max(t, 0)])
    return math.inf if abar <= 0 else ((1.0 - abar) / abar) ** 0.5


def space_label(space: str, centre: bool | float) -> str:
    """The feature space as banks record it: "latent", "x0", "latent-centred", "x0-centred", "image-encoder";
    a partial centring names its fraction ("x0-centred-0.5")."""
    if not centre:
        return space
    return f"{space}-centred" if float(centre) == 1.0 else f"{space}-centred-{float(centre):g}"


def centred(z: torch.Tensor, fraction: float = 1.0) -> torch.Tensor:
    """Latents minus ``fraction`` of each channel's spatial mean: (B, C, H, W) over H, W; packed (B, seq, C)
    over seq. ``fraction`` 1 removes the means, 0.5 keeps half of each, 0 keeps them.

    What is left is the spatial structure (where things are); the means carry global colour and brightness.
    Flat (B, d) latents have no spatial axis and come back as they are.
    """
    if z.ndim == 4:
        return z - fraction * z.mean(dim=(2, 3), keepdim=True)
    if z.ndim == 3:
        return z - fraction * z.mean(dim=1, keepdim=True)
    if z.ndim == 2:
        return z
    raise ValueError(
        f"centre: needs (B, C, H, W), packed (B, seq, C) or flat (B, d) latents, got {tuple(z.shape)}"
    )


def is_packed(pipe: Any, latents: torch.Tensor) -> bool:
    """Whether ``latents`` are Flux-style packed tokens (B, seq, C * 4) of a pipeline that unpacks them."""
    return latents.ndim == 3 and hasattr(pipe, "_unpack_latents")


def image_size(pipe: Any, height: int | None, width: int | None) -> tuple[int, int]:
    """The call's image (height, width) in pixels: those given, else the pipeline's default size."""
    default = getattr(pipe, "default_sample_size", 64) * getattr(pipe, "vae_scale_factor", 8)
    return int(height or default), int(width or default)


def _latent_stats(vae: Any, like: torch.Tensor) -> tuple[Any, Any]:
    """(mean, std) of the VAE's latent channels as (1, C, 1, 1) tensors (SDXL-style configs), or (0, 1)."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return 0.0, 1.0
    shape = (1, len(mean), 1, 1)
    return (
        torch.tensor(mean, dtype=like.dtype, device=like.device).view(shape),
        torch.tensor(std, dtype=like.dtype, device=like.device).view(shape),
    )


@contextmanager
def _vae_precision(vae: Any):
    """The VAE as the pipelines run it: an fp16 VAE with ``force_upcast`` (SDXL's overflows in fp16) is moved
    to float32 for the call and back after, as ``StableDiffusionXLPipeline`` does before decoding."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield vae.dtype
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


def decode(
    pipe: Any, latents: torch.Tensor, *, height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """Latents in the pipeline's layout -> images (B, 3, H, W) float32 in about [-1, 1], differentiable.

    ``pipe.vae is None`` (pixel-space pipelines): identity. Flux's packed latents are unpacked with the call's
    height/width (default: the pipeline's default size). The VAE's ``scaling_factor``, ``shift_factor``,
    ``latents_mean``/``latents_std`` and ``force_upcast`` are applied as the pipelines apply them.
    """
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return latents.float()
    if is_packed(pipe, latents):
        h, w = image_size(pipe, height, width)
        latents = pipe._unpack_latents(latents, h, w, pipe.vae_scale_factor)
    scale = getattr(vae.config, "scaling_factor", 1.0) or 1.0
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    mean, std = _latent_stats(vae, latents)
    z = latents * std / scale + mean + shift
    with _vae_precision(vae) as dtype:
        images = vae.decode(z.to(dtype), return_dict=False)[0]
    return images.float()


def encode_to_latents(pipe: Any, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> latents in the pipeline's layout (the mean of the VAE posterior)."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return images
    stored = vae.dtype
    with _vae_precision(vae) as dtype:
        z = vae.encode(images.to(vae.device, dtype)).latent_dist.mean.to(stored)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scale = getattr(vae.config, "scaling_factor", 1.0) or 1.0
    mean, std = _latent_stats(vae, z)
    z = (z - shift - mean) * scale / std
    if hasattr(pipe, "_pack_latents"):
        b, c, h, w = z.shape
        z = pipe._pack_latents(z, b, c, h, w)
    return z


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "pooler_output", "last_hidden_state"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"image encoder returned {type(out).__name__}; expected a tensor (B, ...)")


def encode_images(encoder: Callable[[torch.Tensor], Any], images: torch.Tensor) -> torch.Tensor:
    """Run an image encoder on (B, 3, H, W) images; accepts tensors or transformers outputs."""
    return _as_tensor(encoder(images))


def features(
    space: Space,
    pipe: Any,
    latents: torch.Tensor,
    *,
    model_output: torch.Tensor | None = None,
    scheduler: Any = None,
    timestep: Any = None,
    height: int | None = None,
    width: int | None = None,
    centre: bool | float = False,
) -> torch.Tensor:
    """(B, d) unit feature rows of `latents` in `space`; without `model_output` the latents count as clean.

    Differentiable with respect to `latents` (the model output is held fixed). ``centre``: in the latent and
    x0 spaces, each channel's spatial mean (True), or that fraction of it (a float), is removed first
    (``centred``).
    """
    clean = latents
    if space != "latent" and model_output is not None:
        clean = x0_estimate(scheduler, latents, model_output, timestep)
    if space in ("latent", "x0"):
        return unit_rows(centred(clean, float(centre)) if centre else clean)
    images = decode(pipe, clean, height=height, width=width)
    return unit_rows(encode_images(space, images))
