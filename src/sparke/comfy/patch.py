"""The SPARKE patch on a ComfyUI model: a post-CFG function that moves each guided step's clean estimate,
and a sampler wrapper that adds every finished image to the bank.

The move is ``sparke.SPARKE.step_latents``, the diffusers guide's own update rule. ComfyUI's k-diffusion
samplers never let a patch change the sampler's latents x, but a post-CFG function returns the clean estimate
``denoised`` that the sampler integrates. With the noise prediction held fixed, moving x by delta moves the
clean estimate by the same delta (``x0_of(z) = denoised + (z - x)``), so the patch returns
``denoised + (step_latents(x, x0_of, y) - x)``: the sampler then steps towards a clean image moved by delta
(an Euler step from sigma to sigma' moves its next latents by delta * (1 - sigma' / sigma)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from sparke.guidance import Host
from sparke.guidance.schedule import span_factors

from .banks import NamedBank
from .features import prompt_rows

__all__ = ["SparkePatch", "guided_window"]

WRAPPER_KEY = "sparke"  # the key of our sampler wrapper in the model's wrappers


def guided_window(model_sampling: Any, start_percent: float, end_percent: float) -> tuple[float, float]:
    """(lowest, highest) sigma guided: ComfyUI's percent-of-schedule window mapped through the model's own
    ``percent_to_sigma`` (0 = the first step, 1 = the last)."""
    high = float(model_sampling.percent_to_sigma(start_percent))
    low = float(model_sampling.percent_to_sigma(end_percent))
    return low, high


class _Shared:
    """A patch part that ComfyUI's ``ModelPatcher.clone`` (a deep copy of model_options) keeps as it is:
    copies of the model share one guide and one bank, as a chained patch expects."""

    def __deepcopy__(self, memo: dict) -> Any:
        return self

    def __copy__(self) -> Any:
        return self


class SparkePatch(_Shared):
    """The guide and bank of one SPARKE Diversity node, and the guided sigma window."""

    def __init__(self, guide: Any, bank: NamedBank, start_percent: float, end_percent: float) -> None:
        self.guide = guide
        self.bank = bank
        self.start_percent = start_percent
        self.end_percent = end_percent
        self.guided_steps = 0  # post-CFG calls that moved the estimate (tests, logs)
        self._span_cache: tuple[Any, tuple[list[float], list[float]]] | None = None  # _span_factors' last run
        self.post_cfg = _PostCfg(self)
        self.wrapper = _RecordWrapper(self)

    def apply(self, model: Any) -> Any:
        """A clone of ComfyUI MODEL ``model`` with this patch added after any it already has."""
        from comfy.patcher_extension import WrappersMP

        patched = model.clone()
        patched.set_model_sampler_post_cfg_function(self.post_cfg)  # appended: earlier patches run first
        patched.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, self.wrapper)
        return patched

    def step(self, args: dict[str, Any]) -> torch.Tensor:
        """The post-CFG function: ``args["denoised"]`` moved by the guide inside the window, else as it is."""
        denoised = args["denoised"]
        if self.guide.scale == 0:
            return denoised
        sigma = float(torch.as_tensor(args["sigma"]).flatten()[0])
        model_sampling = args["model"].model_sampling
        low, high = guided_window(model_sampling, self.start_percent, self.end_percent)
        if not low - 1e-6 * abs(low) <= sigma <= high + 1e-6 * abs(high):
            return denoised
        factor = self._factor(args, model_sampling, sigma)
        if factor == 0:
            return denoised
        # ComfyUI samples under torch.inference_mode(); the step needs autograd on ordinary tensors
        with torch.inference_mode(False), torch.enable_grad():
            x = args["input"].detach().clone()
            fixed = denoised.detach().clone()
            y = prompt_rows(args.get("cond"), x.shape[0])
            self._place_bank(x.device)
            host = Host(step_factor=factor)
            moved = _guard(lambda: self.guide.step_latents(x, lambda z: fixed + (z - x), y, host))
            delta = (moved - x).to(denoised.dtype)
        self.guided_steps += 1
        return denoised + delta

    def _factor(self, args: dict[str, Any], model_sampling: Any, sigma: float) -> float:
        """The step-length factor of the guide's schedule at ``sigma``: 1 unless it is ``every="span"``, which
        reads the sampler's whole schedule (``sample_sigmas``); 0 at a sigma not on it (a second-order
        sampler's intermediate call)."""
        if self.guide.schedule.every != "span":
            return 1.0
        sigmas = args.get("model_options", {}).get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            return 1.0
        levels, factors = self._span_factors(sigmas, model_sampling)
        matches = [i for i, v in enumerate(levels) if abs(v - sigma) <= 1e-4 * max(abs(v), 1e-8)]
        return factors[matches[0]] if matches else 0.0

    def _span_factors(self, sigmas: Any, model_sampling: Any) -> tuple[list[float], list[float]]:
        """The sampler's step sigmas (the last, the end, left out) and their ``span_factors``, computed once per
        sampling run (every guided call of a run passes the same ``sample_sigmas``), as the plug-in does."""
        levels = [float(v) for v in torch.as_tensor(sigmas).flatten()[:-1]]
        key = (tuple(levels), type(model_sampling))  # values, not ids: a freed tensor's id can come back
        if self._span_cache is None or self._span_cache[0] != key:
            factors = span_factors([log_snr_of_sigma(model_sampling, v) for v in levels])
            self._span_cache = (key, (levels, factors))
        return self._span_cache[1]

    def record(self, executor: Callable[..., torch.Tensor], guider: Any, *args: Any, **kwargs: Any) -> Any:
        """The sampler wrapper: run the sampler, then add the finished latents (the model's own latent space,
        as the guided estimates) with their prompt features to the bank."""
        samples = executor(guider, *args, **kwargs)
        with torch.inference_mode(False):
            final = samples.detach().float().clone()
            y = prompt_rows(guider.conds.get("positive"), final.shape[0])
            self._place_bank(final.device)
            _guard(lambda: self.guide.add_to_bank(final, y))
        self.bank.after_run()
        return samples

    def _place_bank(self, device: torch.device) -> None:
        """Keep the bank on the sampling device (a GPU run reads it at every guided step); files stay CPU."""
        bank = self.bank.bank
        current = getattr(bank, "device", None)
        if current is not None and torch.device(current).type != device.type and hasattr(bank, "to"):
            bank.to(device)


class _PostCfg(_Shared):
    def __init__(self, patch: SparkePatch) -> None:
        self.patch = patch

    def __call__(self, args: dict[str, Any]) -> torch.Tensor:
        return self.patch.step(args)


class _RecordWrapper(_Shared):
    def __init__(self, patch: SparkePatch) -> None:
        self.patch = patch

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        return self.patch.record(executor, *args, **kwargs)


def log_snr_of_sigma(model_sampling: Any, sigma: float) -> float:
    """lambda = log(alpha / sigma) of a ComfyUI sigma: flow models (``CONST``) mix (1 - s) x0 + s eps, the
    others x0 + sigma eps."""
    from comfy.model_sampling import CONST

    if isinstance(model_sampling, CONST):
        return -math.inf if sigma >= 1 else (math.inf if sigma <= 0 else math.log((1 - sigma) / sigma))
    return math.inf if sigma <= 0 else -math.log(sigma)


def _guard(run: Callable[[], Any]) -> Any:
    """``run()``, with the guide's ValueError (a bank of other dimensions, say) as one line naming the node."""
    try:
        return run()
    except ValueError as error:
        raise ValueError(f"SPARKE Diversity: {str(error).splitlines()[0]}") from None
