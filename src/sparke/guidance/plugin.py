"""``SPARKE``: prompt-aware diversity (and novelty) guidance for a stock diffusers pipeline call.

    guide = SPARKE(scale=0.03, every=10)
    out = guide(pipe, prompt=["a cat", "a dog"], num_images_per_prompt=2, generator=g)
    len(guide.bank)  # grew by 4

At every ``every``-th denoising step inside ``window`` (fractions of the trajectory, 0 = first step), each
sample's latents z move by ``scale * |z| * g / |g|`` (``step="relative"``, the authors' step) or
``scale * g`` (``step="raw"``), where g is the gradient with respect to z of the features' inner product
with the core's ascent direction of log S(bank U batch) (plus ``novelty`` times the novelty direction away
from ``reference``). After the call every generated image's FINAL latents, in the chosen feature space, are
added to ``guide.bank`` with its prompt features. The attachment lives for that call only (see ``attach``).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from sparke.core import Bank, diversity_direction, novelty_direction

from .attach import Step, attach, split_batch
from .prompts import PromptEncoder, batch_prompts, encode_prompts
from .spaces import Space, encode_images, encode_to_latents, features, unit_rows

__all__ = ["SPARKE"]

OBJECTIVES = ("rke", "vendi", "cond-rke", "cond-vendi")


@dataclass
class CallStats:
    """What the last guided call did (for logging and tests)."""

    step_calls: int = 0  # raw scheduler.step() calls (Heun: about twice the steps)
    steps: int = 0  # denoising steps
    guided: int = 0  # steps whose latents were moved
    skipped: int = 0  # guided steps skipped for a non-finite direction


@dataclass
class _Call:
    batch: int | None
    y: torch.Tensor | None  # (B, e) per-sample prompt features
    height: int | None
    width: int | None
    stats: CallStats
    warned: bool = False


class SPARKE:
    """Prompt-aware diversity guidance (arXiv 2506.10173) attached to a diffusers pipeline per call.

    Args:
        scale: step size eta; 0 gives exactly the unguided output.
        objective: "cond-rke" (default), "rke", "cond-vendi" or "vendi".
        kernel: "gaussian" or "cosine".
        sigma_image, sigma_prompt: kernel bandwidths on the unit-norm image and prompt features.
        every: guide at steps 0, every, 2 * every, ... (denoising steps, not scheduler calls).
        window: (start, end) fractions of the trajectory in which to guide; 0 = first step, 1 = last.
        space: "latent", "x0", or a differentiable image encoder ``images (B, 3, H, W) in [-1, 1] -> (B, ...)``.
        prompt_encoder: "pipeline", "minilm" or a callable ``list[str] -> Tensor (N, e)``.
        bank: a ``sparke.Bank`` (or any bank with add/x/y/len, optionally ``direction``); a new one if None.
        reference: a Bank of reference features to stay away from (``encode_images``), used when novelty > 0.
        novelty: weight beta >= 0 of the novelty direction.
        step: "relative" (``scale * |z| * g / |g|``) or "raw" (``scale * g``).
    """

    def __init__(
        self,
        scale: float = 0.03,
        objective: str = "cond-rke",
        kernel: str = "gaussian",
        sigma_image: float = 0.8,
        sigma_prompt: float = 0.3,
        every: int = 10,
        window: tuple[float, float] = (0.0, 1.0),
        space: Space = "latent",
        prompt_encoder: PromptEncoder = "pipeline",
        bank: Any = None,
        reference: Any = None,
        novelty: float = 0.0,
        step: str = "relative",
    ) -> None:
        if not (isinstance(scale, (int, float)) and scale >= 0 and scale == scale):
            raise ValueError(f"scale: must be a number >= 0, got {scale!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective: must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if kernel not in ("gaussian", "cosine"):
            raise ValueError(f"kernel: must be 'gaussian' or 'cosine', got {kernel!r}")
        for name, value in (("sigma_image", sigma_image), ("sigma_prompt", sigma_prompt)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name}: must be a number > 0, got {value!r}")
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every: must be an integer >= 1, got {every!r}")
        lo, hi = (float(v) for v in window)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"window: must be (start, end) with 0 <= start <= end <= 1, got {window!r}")
        if not (space in ("latent", "x0") or callable(space)):
            raise ValueError(f"space: must be 'latent', 'x0' or an image encoder callable, got {space!r}")
        if not (prompt_encoder in ("pipeline", "minilm") or callable(prompt_encoder)):
            raise ValueError(
                f"prompt_encoder: must be 'pipeline', 'minilm' or a callable, got {prompt_encoder!r}"
            )
        if not (isinstance(novelty, (int, float)) and novelty >= 0):
            raise ValueError(f"novelty: must be a number >= 0, got {novelty!r}")
        if novelty > 0 and reference is None:
            raise ValueError(
                "novelty > 0 needs a reference bank (reference=guide.encode_images(pipe, images))"
            )
        if step not in ("relative", "raw"):
            raise ValueError(f"step: must be 'relative' or 'raw', got {step!r}")
        self.scale = float(scale)
        self.objective = objective
        self.kernel = kernel
        self.sigma_image = float(sigma_image)
        self.sigma_prompt = float(sigma_prompt)
        self.every = every
        self.window = (lo, hi)
        self.space = space
        self.prompt_encoder = prompt_encoder
        self.bank = Bank() if bank is None else bank
        self.reference = reference
        self.novelty = float(novelty)
        self.step = step
        self.stats = CallStats()

    def __repr__(self) -> str:
        space = self.space if isinstance(self.space, str) else type(self.space).__name__
        return (
            f"SPARKE(scale={self.scale}, objective={self.objective!r}, every={self.every}, window={self.window}, "
            f"space={space!r}, step={self.step!r}, bank={len(self.bank)} rows)"
        )

    @property
    def conditional(self) -> bool:
        return self.objective.startswith("cond-")

    # -- the call --------------------------------------------------------------------------------------------
    def __call__(self, pipe: Any, *, prompt_features: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Run ``pipe(**kwargs)`` with guidance attached for this call; returns the pipeline's own output.

        ``prompt_features`` (N prompts or B samples, e): required when the call passes ``prompt_embeds``
        instead of ``prompt``; optional otherwise (it replaces the prompt encoder).
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "SPARKE cannot run under torch.inference_mode(): the guidance step needs autograd for its "
                "latent gradient. Call it outside inference_mode (torch.no_grad() is fine)."
            )
        batch, y = self._prompt_rows(pipe, kwargs, prompt_features)
        call = _Call(batch, y, kwargs.get("height"), kwargs.get("width"), CallStats())
        self.stats = call.stats
        active = self.scale > 0
        with attach(pipe, (lambda step: self._on_step(call, step)) if active else None) as run:
            out = pipe(**kwargs)
        call.stats.step_calls = run.step_calls
        call.stats.steps = run.steps
        if run.step_calls == 0 or run.final_latents is None:
            raise RuntimeError(
                f"{type(pipe).__name__} never called pipe.scheduler.step(): SPARKE attaches to the scheduler "
                "and cannot guide this pipeline"
            )
        self._record(pipe, call, run.final_latents)
        return out

    def _prompt_rows(
        self, pipe: Any, kwargs: dict[str, Any], given: torch.Tensor | None
    ) -> tuple[int | None, torch.Tensor | None]:
        """(batch size B or None if unknown, per-sample prompt features (B, e) or None)."""
        prompts, class_ids, per = batch_prompts(pipe, kwargs)
        if prompts is not None:
            n_prompts = len(prompts)
        elif kwargs.get("prompt_embeds") is not None:
            n_prompts = int(kwargs["prompt_embeds"].shape[0])
        else:
            n_prompts = None
        batch = None if n_prompts is None else n_prompts * per
        if given is not None:
            y = torch.nn.functional.normalize(torch.as_tensor(given).float(), dim=-1)
            if y.ndim != 2:
                raise ValueError(f"prompt_features: expected (N, e), got shape {tuple(y.shape)}")
            if batch is not None and y.shape[0] * per == batch and per > 1:
                y = y.repeat_interleave(per, dim=0)
            if batch is not None and y.shape[0] != batch:
                raise ValueError(
                    f"prompt_features: {y.shape[0]} rows, but the call makes {batch} images "
                    f"({n_prompts} prompts x {per} per prompt)"
                )
            return (batch or y.shape[0]), y
        if prompts is None:
            if not self.conditional:
                return batch, None
            what = "prompt_embeds" if kwargs.get("prompt_embeds") is not None else "no prompt"
            raise ValueError(
                f"SPARKE got {what}: the prompt-aware objective {self.objective!r} needs prompt features. Pass "
                "prompt=..., or prompt_features=Tensor (N prompts, e) to guide(...), or use objective='rke'."
            )
        y = encode_prompts(self.prompt_encoder, pipe, prompts, class_ids).repeat_interleave(per, dim=0)
        return batch, y

    # -- one denoising step ----------------------------------------------------------------------------------
    def _due(self, step: Step) -> bool:
        lo, hi = self.window
        return step.index % self.every == 0 and lo - 1e-9 <= step.fraction <= hi + 1e-9

    def _on_step(self, call: _Call, step: Step) -> torch.Tensor | None:
        if not self._due(step):
            return None
        latents = step.latents
        b, dup = split_batch(latents, call.batch)
        with torch.enable_grad():
            z = latents[:b].detach().float().requires_grad_(True)
            x = features(
                self.space,
                step.pipe,
                z,
                model_output=step.model_output[:b].float(),
                scheduler=step.scheduler,
                timestep=step.timestep,
                height=call.height,
                width=call.width,
            )
            y = None if call.y is None else call.y.to(x.device)
            self._check_dims(x.shape[1], y, type(step.pipe).__name__)
            d = self._direction(x.detach(), y)
            if not bool(torch.isfinite(d).all()):
                return self._skip(call, step, "direction")
            (g,) = torch.autograd.grad(x, z, d)
        g = g.flatten(1)
        if not bool(torch.isfinite(g).all()):
            return self._skip(call, step, "latent gradient")
        flat = z.detach().flatten(1)
        if self.step == "relative":
            g_norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
            z_norm = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
            # a zero gradient (single sample, empty bank) means no move, not 0/0
            delta = torch.where(
                g_norm > 0, self.scale * z_norm * g / g_norm.clamp_min(1e-30), torch.zeros_like(g)
            )
        else:
            delta = self.scale * g
        new = (flat + delta).view_as(z)
        if not bool(torch.isfinite(new).all()):
            return self._skip(call, step, "update")
        call.stats.guided += 1
        new = new.to(latents.dtype)
        return torch.cat([new, new]) if dup else new

    def _skip(self, call: _Call, step: Step, what: str) -> None:
        call.stats.skipped += 1
        if not call.warned:
            call.warned = True
            warnings.warn(
                f"SPARKE: non-finite {what} at denoising step {step.index}; that update is skipped "
                "(further skips in this call are not reported)",
                RuntimeWarning,
                stacklevel=2,
            )
        return None

    def _direction(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Ascent direction (B, d) of log S(bank U batch), plus novelty * the novelty direction."""
        opts = dict(
            objective=self.objective, kernel=self.kernel, sigma_x=self.sigma_image, sigma_y=self.sigma_prompt
        )
        yy = y if self.conditional else None
        bank = self.bank
        if hasattr(bank, "direction"):
            # pass the options a bank's direction() takes (an index-backed bank may fix them at build time)
            params = inspect.signature(bank.direction).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            d = bank.direction(x, yy, **{k: v for k, v in opts.items() if takes_any or k in params})
        else:
            n = len(bank)
            d = diversity_direction(
                x, yy, bank.x if n else None, bank.y if n and yy is not None else None, **opts
            )
        d = d.to(x.device, torch.float32)
        if self.novelty > 0 and self.reference is not None and len(self.reference):
            ref = self.reference
            ref_y = ref.y if (y is not None and ref.y is not None) else None
            nov = novelty_direction(
                x,
                y if ref_y is not None else None,
                ref.x.to(x.device, torch.float32),
                None if ref_y is None else ref_y.to(x.device, torch.float32),
                kernel=self.kernel,
                sigma_x=self.sigma_image,
                sigma_y=self.sigma_prompt,
            )
            d = d + self.novelty * nov.to(d.dtype)
        return d

    def _check_dims(self, dim_x: int, y: torch.Tensor | None, pipe_name: str) -> None:
        space = self.space if isinstance(self.space, str) else "image-encoder"
        for label, bank in (("bank", self.bank), ("reference", self.reference)):
            if bank is None:  # an empty Bank has no dims yet; an IndexedBank has them from the start
                continue
            bank_dim = getattr(bank, "dim_x", None)
            if bank_dim is not None and bank_dim != dim_x:
                raise ValueError(
                    f"{label} holds image features of dim {bank_dim}, but space={space!r} on {pipe_name} gives "
                    f"dim {dim_x}: use a bank made with the same pipeline, resolution and space"
                )
            dim_y = getattr(bank, "dim_y", None)
            if y is not None and dim_y is not None and dim_y != y.shape[1]:
                raise ValueError(
                    f"{label} holds prompt features of dim {dim_y}, but the prompt encoder gives dim "
                    f"{y.shape[1]}: use the same prompt_encoder as the bank was made with"
                )

    # -- after the call --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _record(self, pipe: Any, call: _Call, final: torch.Tensor) -> None:
        b, _ = split_batch(final, call.batch)
        x = features(self.space, pipe, final[:b].float(), height=call.height, width=call.width)
        y = call.y
        self._check_dims(x.shape[1], y, type(pipe).__name__)
        if not len(self.bank) and hasattr(self.bank, "metadata") and isinstance(self.bank.metadata, dict):
            space = self.space if isinstance(self.space, str) else "image-encoder"
            encoder = self.prompt_encoder if isinstance(self.prompt_encoder, str) else "callable"
            meta = dict(pipeline=type(pipe).__name__, space=space, prompt_encoder=encoder)
            for key, value in meta.items():
                self.bank.metadata.setdefault(key, value)
        device = getattr(self.bank, "device", None) or x.device
        self.bank.add(x.to(device), None if y is None else y.to(device))

    # -- novelty reference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, pipe: Any, images: Any, prompts: list[str] | None = None) -> Bank:
        """A Bank of reference features of `images` in this guide's space (for ``reference=``).

        images: a list of PIL images / arrays, or a tensor (N, 3, H, W) in [0, 1], at the generation
        resolution (latent features must have the generated latents' size). prompts: optional, one per image,
        to weight the novelty push by prompt similarity.
        """
        pixels = _to_pixels(pipe, images)
        if self.space in ("latent", "x0"):
            x = unit_rows(encode_to_latents(pipe, pixels))
        else:
            x = unit_rows(encode_images(self.space, pixels))
        y = None
        if prompts is not None:
            if len(prompts) != x.shape[0]:
                raise ValueError(f"prompts: {len(prompts)} prompts for {x.shape[0]} images")
            y = encode_prompts(self.prompt_encoder, pipe, list(prompts)).cpu()
        bank = Bank(metadata=dict(kind="reference", pipeline=type(pipe).__name__))
        bank.add(x.cpu(), y)
        return bank


def _to_pixels(pipe: Any, images: Any) -> torch.Tensor:
    """Images -> (N, 3, H, W) float in [-1, 1] on the pipeline's device."""
    processor = getattr(pipe, "image_processor", None)
    if processor is not None and hasattr(processor, "preprocess"):
        pixels = processor.preprocess(images)
    else:
        if isinstance(images, torch.Tensor):
            pixels = images.float()
        else:
            import numpy as np

            arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
            pixels = torch.from_numpy(arr).permute(0, 3, 1, 2)
        pixels = pixels * 2 - 1
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", "cpu")
    return pixels.to(device)
