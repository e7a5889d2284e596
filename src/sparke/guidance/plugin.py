"""``SPARKE``: prompt-aware diversity (and novelty) guidance for a stock diffusers pipeline call.

    guide = SPARKE()  # scale 0.05, the warped motion step, every="auto" (every 10th step of a long run,
                      # every step of a 1-5 step run)
    out = guide(pipe, prompt=["a cat", "a dog"], num_images_per_prompt=2, generator=g)
    len(guide.bank)  # grew by 4

At every ``every``-th denoising step (``"auto"``: 10 from 20 steps on, else about 5 guided steps) inside
``window`` (fractions of the trajectory, 0 = first step), each
sample's latents z move by ``scale * |z| * g / |g|`` (``step="relative"``, the authors' step) or
``scale * g`` (``step="raw"``), where g is the gradient with respect to z of the features' inner product
with the core's ascent direction of log S(bank U batch) (plus ``novelty`` times the novelty direction away
from ``reference``). After the call every generated image's FINAL latents, in the chosen feature space, are
added to ``guide.bank`` with its prompt features. The attachment lives for that call only (see ``attach``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sparke.core import Bank, diversity_direction, novelty_direction
from sparke.core.auto import KINDS as BANK_KINDS
from sparke.core.auto import AutoBank, make_bank
from sparke.core.defaults import KERNEL, OBJECTIVE, SIGMA_IMAGE, SIGMA_PROMPT
from sparke.core.indexed import IndexedBank
from sparke.core.kernels import kernel_mass
from sparke.core.repel import any_within
from sparke.core.spec import MEDIAN, KernelSpec

from .attach import Attachment, Step, denoiser_of, split_batch
from .filters import displacement, first_order_warp, lowpass, warp
from .guide import Guide, Schedule, check_scale
from .prompts import PromptEncoder, batch_prompts, encode_prompts
from .spaces import (
    Space,
    centred,
    encode_images,
    encode_to_latents,
    features,
    image_size,
    is_packed,
    noise_share,
    space_label,
    unit_rows,
    x0_estimate,
)

__all__ = ["SPARKE", "cfg_direction", "crowding_factor", "execution_device", "lowpass", "median_distance"]


@dataclass
class _Call:
    y: torch.Tensor | None  # (B, e) per-sample prompt features
    height: int | None
    width: int | None
    due: int = 0  # guided steps attempted
    any_bad: torch.Tensor | None = None  # () int on the latents' device: steps with >= 1 sample dropped
    all_bad: torch.Tensor | None = None  # () int: steps with every sample dropped
    first_bad: str = ""


def execution_device(pipe: Any) -> torch.device:
    """The device the pipeline runs its denoiser on (``_execution_device`` under CPU offload)."""
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None) or "cpu"
    return torch.device(device)


class SPARKE(Guide):
    """Prompt-aware diversity guidance (arXiv 2506.10173) attached to a diffusers pipeline per call.

    Args:
        scale: step size eta; 0 gives exactly the unguided output.
        objective: "cond-rke" (default), "rke", "cond-vendi" or "vendi".
        kernel: "gaussian" or "cosine".
        sigma_image, sigma_prompt: kernel bandwidths on the unit-norm image and prompt features.
        every: guide at steps 0, every, 2 * every, ... (denoising steps, not scheduler calls); "auto"
            (default): 10 for runs of 20 steps or more, else ceil(steps / 5), so that a 1-8 step distilled
            run (LCM, turbo, lightning, schnell) is guided at about 5 of its steps or all of them.
        window: (start, end) fractions of the trajectory in which to guide; 0 = first step, 1 = last.
        space: "x0" (default: the clean-sample estimate, compared with the bank's clean final latents), "latent"
            (the paper's: the noisy latents as they are), or a differentiable image encoder
            ``images (B, 3, H, W) in [-1, 1] -> (B, ...)``.
        prompt_encoder: "pipeline", "minilm" or a callable ``list[str] -> Tensor (N, e)``.
        bank: "auto" (default: a new bank that follows the pipeline's device, fp16 on CUDA), "exact", "indexed",
            or a bank object (``sparke.Bank``, ``sparke.IndexedBank`` or any ``sparke.core.BankLike``), which stays
            where it is. A file path is refused: load it with ``sparke.Bank.load(path)``. With
            ``sigma_image="median"`` (a bandwidth that changes every step, which an index cannot follow) "auto"
            is an exact bank.
        crossover, neighbors, samples: options of a bank made from "auto" or "indexed" (``sparke.AutoBank``):
            rows past which it is indexed (None: the device's measured figure), and the index's nearest rows
            read exactly and rows sampled for the rest per step (None: 3 * neighbors).
        reference: a Bank of reference features to stay away from (``encode_images``), used when novelty > 0.
        novelty: weight beta >= 0 of the novelty direction.
        step: "relative" (``scale * |z| * g / |g|``) or "raw" (``scale * g``).
        step_schedule: "constant" (the authors') or "noise": each step times the sample's noise share
            sigma_t / sqrt(alpha_t^2 + sigma_t^2) (about 1 at the first step, 0 at the last).
        smooth: standard deviation, in latent pixels, of a Gaussian blur of g before the step (0: none);
            keeps the step from adding high-frequency noise (needs (B, C, H, W) latents).
        gate: SPELL-style sparsity gate (0, the default: off): a sample is guided at a step only when a bank
            row or another sample of the batch lies within this distance of its unit features, with a prompt
            within 2 ``sigma_prompt`` of its own (any prompt for "rke"/"vendi"); others are left alone.
        centre: in the latent and x0 spaces (default True), compare the latents minus each channel's spatial
            mean, so the step moves spatial structure (layout) and leaves global colour and brightness alone;
            a float in [0, 1] removes that fraction of each mean (0.5 keeps half: some background diversity
            back); an image encoder's features are used as they are. ``space="latent", centre=False,
            motion=0`` is the paper's setting; the defaults are the best trade-off measured by ``sparke bench``
            (docs/benchmark.md).
        orthogonal: remove from each sample's step its component along that step's classifier-free guidance
            direction (cond - uncond of the denoiser's output, in the latents' layout), so the push leaves
            alone what the prompt moves the sample towards; a call without a CFG batch (guidance scale 0 or 1,
            guidance-distilled Flux) takes the plain step.
        crowding: per-sample step scale m / (m + crowding) (0, the default: off, every sample takes the full
            step), where m is the kernel-weighted mass of bank rows near the sample's features with a similar
            prompt (Gaussian kernels of the guide's bandwidths, whatever ``kernel``; ``kernel_mass``): an isolated
            sample barely moves, a near-duplicate of earlier images takes nearly the whole step; with an
            empty bank nothing moves.
        motion: keep only the part of each step that moves what the sample's clean estimate already shows
            (default 2; 0: off, the plain gradient step): the step is replaced by -(grad x0 . v), v the
            displacement field that explains it best over a Gaussian window of this many latent pixels
            (``motion_component``), so the push shifts and resizes objects and paints nothing on flat regions, where a bank's other images
            would leave ghosts that the next steps turn into extra objects. ``"global"``: only one shift and one
            zoom of the whole estimate per sample (``layout_component``), which cannot bend a shape. For
            (B, C, H, W) latents and Flux's packed ones; flat (B, d) latents take the plain step.
        warp: "auto" (default: True wherever ``motion`` is on and neither ``smooth`` nor ``orthogonal`` is
            set), True or False. With ``motion``, move the clean estimate by the fitted displacement for real
            (bilinear resampling, ``sparke.guidance.filters.warp``) instead of adding its first-order change, which
            leaves a faint double of an edge moved by more than about a pixel; the same step to first order.
            Not with ``smooth`` or ``orthogonal``, which change the step after the fit.

    ``sigma_image="median"`` sets the image bandwidth at each guided step to the median distance between the
    batch's features and the bank's (and each other), instead of a fixed number.
    """

    def __init__(
        self,
        scale: float = 0.05,
        objective: str = OBJECTIVE,
        kernel: str = KERNEL,
        sigma_image: float = SIGMA_IMAGE,
        sigma_prompt: float = SIGMA_PROMPT,
        every: int | str = "auto",
        window: tuple[float, float] = (0.0, 1.0),
        space: Space = "x0",
        prompt_encoder: PromptEncoder = "pipeline",
        bank: Any = "auto",
        reference: Any = None,
        novelty: float = 0.0,
        step: str = "relative",
        step_schedule: str = "constant",
        smooth: float = 0.0,
        centre: bool | float = True,
        crossover: int | None = None,
        neighbors: int = 256,
        samples: int | None = None,
        gate: float = 0.0,
        orthogonal: bool = False,
        crowding: float = 0.0,
        motion: float | str = 2.0,
        warp: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        # the score, checked once: every guided step passes it to the bank as it is
        self.spec = KernelSpec(objective, kernel, sigma_image, sigma_prompt, on_nonfinite="skip")
        self.schedule = Schedule(every, tuple(window))
        if not (space in ("latent", "x0") or callable(space)):
            raise ValueError(f"space: must be 'latent', 'x0' or an image encoder callable, got {space!r}")
        if not (prompt_encoder in ("pipeline", "minilm") or callable(prompt_encoder)):
            raise ValueError(
                f"prompt_encoder: must be 'pipeline', 'minilm' or a callable, got {prompt_encoder!r}"
            )
        if isinstance(novelty, bool) or not (isinstance(novelty, (int, float)) and novelty >= 0):
            raise ValueError(f"novelty: must be a number >= 0, got {novelty!r}")
        if novelty > 0 and reference is None:
            raise ValueError(
                "novelty > 0 needs a reference bank (reference=guide.encode_images(pipe, images))"
            )
        if step not in ("relative", "raw"):
            raise ValueError(f"step: must be 'relative' or 'raw', got {step!r}")
        if step_schedule not in ("constant", "noise"):
            raise ValueError(f"step_schedule: must be 'constant' or 'noise', got {step_schedule!r}")
        if isinstance(smooth, bool) or not (isinstance(smooth, (int, float)) and 0 <= smooth < math.inf):
            raise ValueError(f"smooth: must be a blur width >= 0 (latent pixels), got {smooth!r}")
        self.space = space
        self.step_schedule = step_schedule
        self.smooth = float(smooth)
        if not (isinstance(centre, bool) or (isinstance(centre, (int, float)) and 0 <= centre <= 1)):
            raise ValueError(f"centre: must be True, False or a fraction in [0, 1], got {centre!r}")
        self.centre = False if callable(space) else centre  # an encoder's features are used as they are
        if isinstance(gate, bool) or not (isinstance(gate, (int, float)) and 0 <= gate < math.inf):
            raise ValueError(f"gate: must be a feature distance >= 0 (0: off), got {gate!r}")
        self.gate = float(gate)
        if not isinstance(orthogonal, bool):
            raise ValueError(f"orthogonal: must be True or False, got {orthogonal!r}")
        self.orthogonal = orthogonal
        if isinstance(crowding, bool) or not (
            isinstance(crowding, (int, float)) and 0 <= crowding < math.inf
        ):
            raise ValueError(f"crowding: must be a kernel mass >= 0 (0: off), got {crowding!r}")
        self.crowding = float(crowding)
        if motion != "global" and (
            isinstance(motion, bool) or not (isinstance(motion, (int, float)) and 0 <= motion < math.inf)
        ):
            raise ValueError(
                f"motion: must be a window width >= 0 (latent pixels; 0: off) or 'global', got {motion!r}"
            )
        self.motion: float | str = motion if motion == "global" else float(motion)
        if not (isinstance(warp, bool) or warp == "auto"):
            raise ValueError(f"warp: must be True, False or 'auto', got {warp!r}")
        if warp == "auto":  # the defaults' warped motion step, wherever the other options leave it possible
            warp = bool(self.motion) and self.smooth == 0 and not orthogonal
        if warp and (not self.motion or self.smooth > 0 or orthogonal):
            raise ValueError(
                "warp: moves by the fitted displacement of `motion`: needs motion > 0 or 'global', and neither "
                f"smooth nor orthogonal (got motion={motion!r}, smooth={smooth!r}, orthogonal={orthogonal!r})"
            )
        self.warp = warp
        self._denoised: torch.Tensor | None = None  # the denoiser's last output (orthogonal=True)
        self.prompt_encoder = prompt_encoder
        self.follows_pipeline = bank is None or (isinstance(bank, str) and bank in BANK_KINDS)
        self.bank = (
            _own_bank(bank or "auto", self.spec, crossover=crossover, neighbors=neighbors, samples=samples)
            if self.follows_pipeline
            else _check_bank(bank)
        )
        self.reference = reference
        self.novelty = float(novelty)
        self.step = step
        self._warned: set[str] = set()
        self._call: _Call | None = None

    @property
    def every(self) -> int | str:
        return self.schedule.every

    @property
    def window(self) -> tuple[float, float]:
        return self.schedule.window

    def __repr__(self) -> str:
        space = self.space if isinstance(self.space, str) else type(self.space).__name__
        return (
            f"SPARKE(scale={self.scale}, objective={self.objective!r}, every={self.every!r}, window={self.window}, "
            f"space={space!r}, step={self.step!r}, step_schedule={self.step_schedule!r}, smooth={self.smooth:g}, "
            f"centre={self.centre}, orthogonal={self.orthogonal}, crowding={self.crowding:g}, motion={self.motion!r}, "
            f"warp={self.warp}, "
            f"bank={type(self.bank).__name__} of {len(self.bank)} rows)"
        )

    @property
    def conditional(self) -> bool:
        return self.spec.conditional

    # the spec's fields, as attributes of the guide (set one: the spec is made again, and checked)
    objective = property(lambda self: self.spec.objective, lambda self, v: self._respec(objective=v))
    kernel = property(lambda self: self.spec.kernel, lambda self, v: self._respec(kernel=v))
    sigma_image = property(lambda self: self.spec.sigma_image, lambda self, v: self._respec(sigma_image=v))
    sigma_prompt = property(lambda self: self.spec.sigma_prompt, lambda self, v: self._respec(sigma_prompt=v))

    def _respec(self, **change: Any) -> None:
        self.spec = self.spec.replace(**change)

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
        self._prompt_features = prompt_features
        denoiser = denoiser_of(pipe) if self.orthogonal and self.scale > 0 else None
        hook = None if denoiser is None else denoiser.register_forward_hook(self._keep_output)
        try:
            return super().__call__(pipe, **kwargs)
        finally:
            if hook is not None:
                hook.remove()
            self._prompt_features = None
            self._call = None
            self._denoised = None

    def _keep_output(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Forward hook (orthogonal=True): keep the denoiser's last output, whose CFG halves give cond - uncond."""
        out = getattr(output, "sample", output)
        if isinstance(out, (tuple, list)):
            out = out[0]
        self._denoised = out.detach() if isinstance(out, torch.Tensor) else None

    def begin(self, pipe: Any, kwargs: dict[str, Any]) -> None:
        batch, y = self._prompt_rows(pipe, kwargs, self._prompt_features)
        if batch is not None:
            self.batch = batch
        self._call = _Call(y, kwargs.get("height"), kwargs.get("width"))
        self._place_bank(pipe)
        steps = kwargs.get("num_inference_steps")
        if self.scale > 0 and isinstance(steps, int) and steps > 0:
            due = self.schedule.count(steps)
            if due < min(2, steps):  # a one-step run guided at its one step is all there is
                self._warn_once(
                    "weak",
                    f"SPARKE guides only {due} of {steps} denoising steps (every={self.every!r}, "
                    f"window={self.window}); lower `every` to guide at least 2",
                    UserWarning,
                )

    def end(self, pipe: Any, run: Attachment) -> None:
        call = self._call
        assert call is not None
        if run.step_calls == 0 or run.final_latents is None:
            raise RuntimeError(
                f"{type(pipe).__name__} never called pipe.scheduler.step(): SPARKE attaches to the scheduler "
                "and cannot guide this pipeline"
            )
        # one host sync per call, not per step: the step kept its counts on the device
        any_bad = 0 if call.any_bad is None else int(call.any_bad)
        all_bad = 0 if call.all_bad is None else int(call.all_bad)
        self.stats.guided = call.due - all_bad
        self.stats.skipped = any_bad
        if any_bad:
            warnings.warn(
                f"SPARKE: non-finite {call.first_bad or 'update'} in {any_bad} of {call.due} guided steps; "
                "those samples were left unguided at those steps",
                RuntimeWarning,
                stacklevel=3,
            )
        self._record(pipe, call, run.final_latents)

    def _place_bank(self, pipe: Any) -> None:
        """A bank of our own follows the pipeline (fp16 on CUDA); a user's bank stays, with one warning."""
        device = execution_device(pipe)
        bank_device = getattr(self.bank, "device", None)
        if self.follows_pipeline and len(self.bank) == 0 and hasattr(self.bank, "to"):
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            self.bank.to(device, dtype)
        elif bank_device is not None and torch.device(bank_device).type != device.type:
            self._warn_once(
                "device",
                f"SPARKE: the bank is on {bank_device} but the pipeline runs on {device}: every guided step "
                f"copies features between them; move it with bank.to({str(device)!r})",
                UserWarning,
            )

    def _warn_once(self, key: str, message: str, category: type[Warning]) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, category, stacklevel=5)  # the user's guide(pipe, ...) line

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
    def on_step(self, step: Step) -> torch.Tensor | None:
        call = self._call
        if call is None or not self.schedule.due(step):
            return None
        latents = step.latents
        b, dup = split_batch(latents, self.batch)
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
                centre=self.centre,
            )
            y = None if call.y is None else call.y.to(x.device)
            self._check_dims(x.shape[1], y, type(step.pipe).__name__)
            spec = self._step_spec(x.detach())
            d = self._direction(x.detach(), y, spec)
            if self.gate > 0:  # SPELL-style sparsity: only samples with a similar earlier image move
                d = torch.where(self._gate_open(x.detach(), y)[:, None], d, torch.zeros_like(d))
            d_ok = torch.isfinite(d).all(1)
            (g,) = torch.autograd.grad(x, z, torch.where(d_ok[:, None], d, torch.zeros_like(d)))
        move = None
        if self.motion:  # what the estimate shows moves; nothing is painted where it is flat
            g, move = self._motion(step, z.detach(), g, call)
        if self.smooth > 0:
            g = lowpass(g, self.smooth)
        g = g.flatten(1)
        if self.orthogonal:
            g = _without_component(g, cfg_direction(self._denoised, z))
        flat = z.detach().flatten(1)
        scale: float | torch.Tensor = self.scale
        if self.step_schedule == "noise":
            scale *= noise_share(step.scheduler, step.timestep)
        if self.crowding > 0:
            scale = scale * self._crowding_factor(x.detach(), y, spec)[:, None]
        if self.step == "relative":
            g_norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
            z_norm = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
            # a zero gradient (single sample, empty bank) means no move, not 0/0
            if move is None:
                delta = torch.where(
                    g_norm > 0, scale * z_norm * g / g_norm.clamp_min(1e-30), torch.zeros_like(g)
                )
            else:  # warp: the move of that length made for real, not its first-order change
                factor = torch.where(
                    g_norm > 0, scale * z_norm / g_norm.clamp_min(1e-30), torch.zeros_like(g_norm)
                )
                delta = move(factor[:, 0])
        else:
            delta = scale * g if move is None else move((scale * torch.ones_like(flat[:, :1]))[:, 0])
        new = flat + delta
        # a sample whose direction, gradient or update is not finite keeps its latents: decided on the device,
        # counted there and reported after the call, so the step never waits for the host
        ok = d_ok & torch.isfinite(new).all(1)
        new = torch.where(ok[:, None], new, flat).view_as(z)
        bad = (~ok).to(torch.int32)
        call.due += 1
        call.any_bad = bad.amax() + (0 if call.any_bad is None else call.any_bad)
        call.all_bad = bad.amin() + (0 if call.all_bad is None else call.all_bad)
        new = new.to(latents.dtype)
        return torch.cat([new, new]) if dup else new

    def _motion(
        self, step: Step, z: torch.Tensor, g: torch.Tensor, call: _Call
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:
        """g's motion component -(grad x0 . v) (``motion_component``, or ``layout_component`` for "global")
        against the clean estimate x0 of z, both in the latents' layout, and with ``warp`` the move for real:
        a function of the per-sample step factors f (B,) giving warp(x0, f v) - x0, flattened (B, d). Flux's
        packed latents are unpacked to (B, C, H, W) for it and packed back. Latents without a spatial layout
        (flat (B, d) points) have nothing to move: the plain step, no warp."""
        packed = is_packed(step.pipe, z)
        if z.ndim != 4 and not packed:
            return g, None
        b = z.shape[0]
        image = x0_estimate(step.scheduler, z, step.model_output[:b].float(), step.timestep)
        pipe = step.pipe
        size = image_size(pipe, call.height, call.width) if packed else None

        def unpack(t: torch.Tensor) -> torch.Tensor:
            return pipe._unpack_latents(t, *size, pipe.vae_scale_factor) if packed else t

        def pack(t: torch.Tensor) -> torch.Tensor:
            return pipe._pack_latents(t, b, *t.shape[1:]).view_as(g) if packed else t

        image4 = unpack(image)
        v = displacement(unpack(g), image4, self.motion)
        moved = pack(first_order_warp(image4, v))
        if not self.warp:
            return moved, None

        def move(factor: torch.Tensor) -> torch.Tensor:
            moved = pack(warp(image4, factor.view(-1, 1, 1, 1) * v) - image4).flatten(1)
            # resampling at the pixel centres is exact only to rounding: a sample with no move keeps its latents
            return torch.where((factor != 0)[:, None], moved, torch.zeros_like(moved))

        return moved, move

    def _step_spec(self, x: torch.Tensor) -> KernelSpec:
        """The guide's kernel spec for this step: ``sigma_image="median"`` resolved once from x (B, d)."""
        if self.spec.sigma_image == MEDIAN:
            return self.spec.replace(sigma_image=median_distance(x, self.bank))
        return self.spec

    def _direction(
        self, x: torch.Tensor, y: torch.Tensor | None, spec: KernelSpec | None = None
    ) -> torch.Tensor:
        """Ascent direction (B, d) of log S(bank U batch) under ``spec`` (None: this step's, from x), plus
        novelty * the novelty direction."""
        spec = spec or self._step_spec(x)
        sigma_image = spec.sigma_image
        yy = y if self.conditional else None
        bank = self.bank
        if isinstance(bank, (Bank, AutoBank, IndexedBank)):
            d = bank.direction(x, yy, spec=spec)
        elif hasattr(bank, "direction"):  # a user's bank, which may take the keywords only
            d = bank.direction(x, yy, **spec.keywords())
        else:  # a minimal user bank: rows only
            n = len(bank)
            d = diversity_direction(
                x, yy, bank.x if n else None, bank.y if n and yy is not None else None, **spec.keywords()
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
                sigma_image=sigma_image,
                sigma_prompt=self.sigma_prompt,
            )
            d = d + self.novelty * nov.to(d.dtype)
        return d

    def _crowding_factor(
        self, x: torch.Tensor, y: torch.Tensor | None, spec: KernelSpec | None = None
    ) -> torch.Tensor:
        """(B,) m / (m + crowding), m the kernel mass of the bank rows around each sample (0: empty bank)
        under ``spec`` (None: this step's, from x)."""
        bank = self.bank
        if not len(bank):
            return torch.zeros(x.shape[0], device=x.device)
        yy = y if self.conditional else None
        bank_y = bank.y if yy is not None else None
        mass = kernel_mass(x, bank.x, yy, bank_y, spec or self._step_spec(x))
        return crowding_factor(mass, self.crowding)

    def _gate_open(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(B,) bool: a bank row or another sample of the batch lies within ``gate`` of the sample's features,
        with a prompt within 2 ``sigma_prompt`` (prompt kernel >= exp(-2); any prompt for "rke"/"vendi")."""
        yy = y if self.conditional else None
        near_prompt = 2 * self.sigma_prompt
        open_ = any_within(x, yy, x, yy, self.gate, near_prompt, skip_self=True)
        bank = self.bank
        if len(bank):
            bank_y = bank.y if yy is not None else None
            open_ |= any_within(x, yy, bank.x, bank_y, self.gate, near_prompt)
        return open_

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
        b, _ = split_batch(final, self.batch)
        x = features(
            self.space, pipe, final[:b].float(), height=call.height, width=call.width, centre=self.centre
        )
        y = call.y
        self._check_dims(x.shape[1], y, type(pipe).__name__)
        if not len(self.bank) and hasattr(self.bank, "metadata") and isinstance(self.bank.metadata, dict):
            space = space_label(self.space if isinstance(self.space, str) else "image-encoder", self.centre)
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
            latents = encode_to_latents(pipe, pixels)
            x = unit_rows(centred(latents, float(self.centre)) if self.centre else latents)
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


def crowding_factor(mass: torch.Tensor, crowding: float) -> torch.Tensor:
    """The per-sample step scale m / (m + crowding) of kernel masses m >= 0: 0 at m = 0, 1/2 at m = crowding,
    towards 1 for a crowded neighbourhood (strictly increasing in m)."""
    return mass / (mass + crowding)


def cfg_direction(denoised: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """(b, D) cond - uncond of a denoiser output over a CFG batch of 2b rows, flattened in ``like``'s layout
    (b, ...); None when the output is not such a batch (no CFG, or a layout this cannot read).

    Only the line matters (the step loses its component along it), so the halves' order (DiT puts the
    conditional half first) does not. A learned-variance output (PixArt, DiT: 2C channels) gives its first C.
    """
    b = like.shape[0]
    if denoised is None or denoised.ndim != like.ndim or denoised.shape[0] != 2 * b:
        return None
    out = denoised
    if out.ndim >= 3 and out.shape[1] == 2 * like.shape[1] and out.shape[2:] == like.shape[2:]:
        out = out[:, : like.shape[1]]
    if out.shape[1:] != like.shape[1:]:
        return None
    first, second = out.float().chunk(2)
    return (second - first).flatten(1).to(like.device)


def _without_component(g: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Rows of g (B, D) minus their projection on the rows of c (B, D); a zero row of c (or c None) removes
    nothing."""
    if c is None:
        return g
    cc = (c * c).sum(1, keepdim=True)
    coef = torch.where(cc > 0, (g * c).sum(1, keepdim=True) / cc.clamp_min(1e-30), torch.zeros_like(cc))
    return g - coef * c


def median_distance(x: torch.Tensor, bank: Any, max_rows: int = 4096) -> float:
    """The median Euclidean distance from the rows of x (B, d) to the bank's rows and to each other.

    The bandwidth of ``sigma_image="median"``; at most ``max_rows`` evenly spaced bank rows are read.
    Falls back to the fixed default when there is no pair (one sample, empty bank).
    """
    parts = []
    n = len(bank)
    if n:
        rows = bank.x
        if n > max_rows:
            rows = rows[torch.linspace(0, n - 1, max_rows, device=rows.device).long()]
        parts.append(torch.cdist(x, rows.to(x.device, x.dtype)).flatten())
    if len(x) > 1:
        i, j = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
        parts.append((x[i] - x[j]).norm(dim=1))
    if not parts:
        return SIGMA_IMAGE
    return max(float(torch.cat(parts).median()), 1e-3)


def _own_bank(kind: str, spec: KernelSpec, **index_options: Any) -> Any:
    """The guide's own new bank of ``kind``. "auto" is an exact bank for a score no index answers
    (``spec.indexable``: a per-step median bandwidth, the cosine kernel, the Vendi scores), which an
    ``AutoBank`` would otherwise rebuild or move back past its crossover."""
    if spec.sigma_image == MEDIAN and kind == "indexed":
        raise ValueError(
            'bank: "indexed" searches with one fixed bandwidth, but sigma_image="median" changes it every '
            'step; use bank="auto" or "exact" (both keep an exact bank), or a number for sigma_image'
        )
    if kind == "auto" and not spec.indexable:
        kind = "exact"
    return make_bank(kind, **({} if kind == "exact" else index_options))


def _check_bank(bank: Any) -> Any:
    """A user's bank, refused at construction when it cannot be one (a file path, say)."""
    if isinstance(bank, (str, os.PathLike)):
        raise ValueError(
            f"bank: got {os.fspath(bank)!r}; pass {', '.join(map(repr, BANK_KINDS))} or a bank object. To start "
            "from a saved "
            "bank, load it: bank=sparke.AutoBank.load(path, device=...) (it reads exact and indexed bank files)"
        )
    missing = [name for name in ("add", "x", "y", "__len__") if not hasattr(bank, name)]
    if missing:
        raise ValueError(
            f"bank: a {type(bank).__name__} lacks {', '.join(missing)}; pass a sparke.Bank, a "
            "sparke.IndexedBank or an object with add(x, y), x, y and len()"
        )
    return bank


def __getattr__(name: str) -> Any:
    """The method specs that lived here before they moved to ``sparke.methods.sparke`` (old import paths).

    Imported by name at first use: ``sparke.methods`` sits above this layer, so a module-level import would
    invert the layers (and cycle)."""
    if name in ("SPARKE_SPEC", "NONE_SPEC", "SPARKE_HELP"):
        import importlib

        return getattr(importlib.import_module("sparke.methods.sparke"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
