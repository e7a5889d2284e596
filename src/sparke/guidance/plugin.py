"""``SPARKE``: prompt-aware diversity (and novelty) guidance for a stock diffusers pipeline call.

    guide = SPARKE()  # the defaults of sparke.guidance.options
    out = guide(pipe, prompt=["a cat", "a dog"], num_images_per_prompt=2, generator=g)
    len(guide.bank)  # grew by 4

At each guided denoising step (``every``, ``window``) every sample's latents z move along the gradient of its
features' inner product with the core's ascent direction of log S(bank U batch) (plus ``novelty`` times the
novelty direction away from ``reference``), by the rule of ``update`` (``sparke.guidance.update``). After the call
every image's FINAL latents, in the feature space, are added to ``guide.bank`` with its prompt features. The
attachment lives for that call only (``sparke.guidance.attach``).

The step itself, ``step_latents(z, x0_of, y)``, needs no diffusers pipeline: the ComfyUI node calls it too.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sparke.core import novelty_direction
from sparke.core.auto import KINDS as BANK_KINDS
from sparke.core.kernels import kernel_mass
from sparke.core.repel import any_within
from sparke.core.spec import MEDIAN, KernelSpec

from .attach import Attachment, Step, denoiser_of, split_batch
from .bank import bank_placement, check_bank, check_dims, check_metadata, own_bank, reference_bank
from .filters import displacement, first_order_warp, lowpass, warp
from .guide import Guide, check_scale
from .options import DEFAULTS, PAPER, PAPER_SCALE, names
from .prompts import PromptEncoder, batch_prompts, encode_prompts
from .schedule import SPAN_BAND, Schedule
from .spaces import (
    Space,
    centred,
    decode,
    encode_images,
    image_size,
    is_packed,
    noise_share,
    space_label,
    unit_rows,
    x0_estimate,
)
from .update import (
    FIELDS,
    Update,
    cfg_direction,
    crowding_factor,
    median_distance,
    relative_factor,
    relative_step,
    without_component,
)

__all__ = ["SPARKE", "Host"]

REMOVAL = "0.3"  # the release that drops the keywords SPARKE took before Update


@dataclass
class Host:
    """What a guided step needs from the sampler besides z, x0 and y; the defaults fit (B, C, H, W) latents.

    unpack / pack: packed latents (Flux: (B, seq, c)) to (B, C, H, W) and back, for ``motion``; to_image: the
    clean estimate to pixels (B, 3, H, W) in [-1, 1], for an image-encoder space; noise_share: sigma_t /
    sqrt(alpha_t^2 + sigma_t^2) (``step_schedule="noise"``); cfg: (B, D) cond - uncond (``orthogonal``);
    step_factor: this step's share of a full step of ``scale`` (the schedule's, ``Schedule.factor``)."""

    unpack: Callable[[torch.Tensor], torch.Tensor] | None = None
    pack: Callable[[torch.Tensor], torch.Tensor] | None = None
    to_image: Callable[[torch.Tensor], torch.Tensor] | None = None
    noise_share: float = 1.0
    cfg: torch.Tensor | None = None
    name: str = ""  # the pipeline class, recorded in a new bank's metadata; "" outside diffusers
    step_factor: float = 1.0


@dataclass
class _Call:
    y: torch.Tensor | None  # (B, e) per-sample prompt features, on the pipeline's device
    height: int | None = None
    width: int | None = None
    due: int = 0  # guided steps attempted
    any_bad: torch.Tensor | None = None  # () int on the latents' device: steps with >= 1 sample dropped
    all_bad: torch.Tensor | None = None  # () int: steps with every sample dropped


def _old_keywords(init: Callable[..., None]) -> Callable[..., None]:
    """``SPARKE(motion=0, crossover=...)``, the keywords of before ``Update``: still taken, with a
    DeprecationWarning naming the new form, until ``REMOVAL``."""
    moved = {**{name: "update" for name in FIELDS}, **{name: "bank" for name in names("bank")}}

    @functools.wraps(init)
    def wrapper(self: SPARKE, *args: Any, **kwargs: Any) -> None:
        old = {name: kwargs.pop(name) for name in list(kwargs) if name in moved}
        fields = {k: v for k, v in old.items() if moved[k] == "update"}
        bank_options = {k: v for k, v in old.items() if moved[k] == "bank"}
        for given, new_form in ((fields, "update=sparke.Update"), (bank_options, "bank=sparke.AutoBank")):
            if given:
                text = ", ".join(f"{k}={v!r}" for k, v in given.items())
                message = f"SPARKE({text}) is deprecated and is removed in sparke {REMOVAL}: use SPARKE({new_form}({text}))"
                warnings.warn(message, DeprecationWarning, stacklevel=2)
        if fields:
            kwargs["update"] = (kwargs.get("update") or Update()).replace(**fields)
        init(self, *args, **kwargs)
        if bank_options:
            self.set_bank_options(**bank_options)

    return wrapper


class SPARKE(Guide):
    """Prompt-aware diversity guidance (arXiv 2506.10173) attached to a diffusers pipeline per call.

    Args:
        scale: step size eta; 0 gives exactly the unguided output.
        objective: "cond-rke" (default), "rke", "cond-vendi" or "vendi".
        sigma_image, sigma_prompt: kernel bandwidths on the unit-norm image and prompt features;
            ``sigma_image="median"``: at each guided step, the median distance between the batch and the bank.
        space: "x0" (the clean-sample estimate, compared with the bank's clean final latents), "latent" (the
            paper's: the noisy latents as they are), or a differentiable image encoder
            ``images (B, 3, H, W) in [-1, 1] -> (B, ...)``.
        update: how a guided step moves the latents (``sparke.Update``; ``Update.paper()``: the authors' step).
        every: guide at denoising steps 0, every, 2 * every, ...; "auto": 10 from 20 steps on, else
            ceil(steps / 5); "span": by noise level (``sparke.guidance.schedule.span_factors``), up to 5 steps
            spread over the log signal-to-noise band where the clean estimate shows the layout forming, each
            moving its share of 5 steps of ``scale`` (the number of guided steps and their total move change
            smoothly with the step count).
        window: (start, end) fractions of the trajectory in which to guide; 0 = first step, 1 = last.
        prompt_encoder: "pipeline", "minilm" or a callable ``list[str] -> Tensor (N, e)``.
        bank: "auto" (a new bank that follows the pipeline's device, fp16 on CUDA), "exact", "indexed", or a bank
            object (``sparke.Bank``, ``sparke.AutoBank``, or any ``sparke.core.BankLike``), which stays where it
            is. A saved bank: ``bank=sparke.AutoBank.load(path)``.
        reference: a Bank of features to stay away from (``encode_images``), used when novelty > 0.
        novelty: weight beta >= 0 of the novelty direction.

    Every setting, its default and what it does: docs/guide.md (generated from ``sparke.guidance.options``).
    """

    @_old_keywords
    def __init__(
        self,
        scale: float = DEFAULTS["scale"],
        objective: str = DEFAULTS["objective"],
        sigma_image: float | str = DEFAULTS["sigma_image"],
        sigma_prompt: float = DEFAULTS["sigma_prompt"],
        space: Space = DEFAULTS["space"],
        update: Update = Update(),  # noqa: B008 - frozen, never mutated
        every: int | str = DEFAULTS["every"],
        window: tuple[float, float] = DEFAULTS["window"],
        prompt_encoder: PromptEncoder = DEFAULTS["prompt_encoder"],
        bank: Any = "auto",
        reference: Any = None,
        novelty: float = DEFAULTS["novelty"],
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        if not isinstance(update, Update):
            raise ValueError(f"update: must be a sparke.Update, got {type(update).__name__}")
        self.spec = KernelSpec(objective, update.kernel, sigma_image, sigma_prompt, on_nonfinite="skip")
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
        self.space = space
        self.update = update.replace(centre=False) if callable(space) else update  # an encoder's own features
        self.prompt_encoder = prompt_encoder
        self.follows_pipeline = bank is None or (isinstance(bank, str) and bank in BANK_KINDS)
        self._bank_kind = bank or "auto"
        self.bank = own_bank(self._bank_kind, self.spec) if self.follows_pipeline else check_bank(bank)
        self.reference = reference
        self.novelty = float(novelty)
        self._warned: set[str] = set()
        self._call: _Call | None = None
        self._denoised: torch.Tensor | None = None  # the denoiser's last output (orthogonal)

    @classmethod
    def paper(cls, scale: float = PAPER_SCALE, **options: Any) -> SPARKE:
        """The paper's SPARKE: the noisy latents as they are, the plain relative step, eta 0.03 (arXiv 2506.10173)."""
        return cls(scale=scale, space=PAPER["space"], update=Update.paper(), **options)

    @classmethod
    def from_settings(cls, scale: float, settings: dict[str, Any], **objects: Any) -> SPARKE:
        """A guide from flat settings (``--set`` names, as run folders record them; no deprecation warning);
        ``objects``: constructor arguments that are Python objects (bank, reference)."""
        guide_kwargs = {k: v for k, v in settings.items() if k in names("guide") and k != "scale"}
        if "window" in guide_kwargs:
            guide_kwargs["window"] = tuple(guide_kwargs["window"])
        update = Update(**{k: v for k, v in settings.items() if k in FIELDS})
        guide = cls(scale=scale, update=update, **guide_kwargs, **objects)
        bank_options = {k: v for k, v in settings.items() if k in names("bank")}
        if bank_options:
            guide.set_bank_options(**bank_options)
        return guide

    def set_bank_options(self, **options: Any) -> None:
        """A new own bank with the index options ``crossover``, ``neighbors``, ``samples`` (an empty own bank only)."""
        if not self.follows_pipeline or len(self.bank):
            raise ValueError("bank options: apply to the guide's own empty bank; pass a bank object instead")
        self.bank = own_bank(self._bank_kind, self.spec, **options)

    def __getattr__(self, name: str) -> Any:
        # the update's fields read as the guide's own (guide.motion), as before Update; warp with "auto" resolved
        if name in FIELDS and "update" in self.__dict__:
            return self.update.warps if name == "warp" else getattr(self.update, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def every(self) -> int | str:
        return self.schedule.every

    @property
    def window(self) -> tuple[float, float]:
        return self.schedule.window

    @property
    def conditional(self) -> bool:
        return self.spec.conditional

    # the spec's fields, as attributes of the guide (set one: the spec is made again, and checked)
    objective = property(lambda self: self.spec.objective, lambda self, v: self._respec(objective=v))
    sigma_image = property(lambda self: self.spec.sigma_image, lambda self, v: self._respec(sigma_image=v))
    sigma_prompt = property(lambda self: self.spec.sigma_prompt, lambda self, v: self._respec(sigma_prompt=v))

    def _respec(self, **change: Any) -> None:
        self.spec = self.spec.replace(**change)

    def __repr__(self) -> str:
        space = self.space if isinstance(self.space, str) else type(self.space).__name__
        return (
            f"SPARKE(scale={self.scale}, objective={self.objective!r}, every={self.every!r}, window={self.window}, "
            f"space={space!r}, update={self.update!r}, bank={type(self.bank).__name__} of {len(self.bank)} rows)"
        )

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
        denoiser = denoiser_of(pipe) if self.update.orthogonal and self.scale > 0 else None
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
        """Forward hook (orthogonal): keep the denoiser's last output, whose CFG halves give cond - uncond."""
        out = getattr(output, "sample", output)
        if isinstance(out, (tuple, list)):
            out = out[0]
        self._denoised = out.detach() if isinstance(out, torch.Tensor) else None

    def begin(self, pipe: Any, kwargs: dict[str, Any]) -> None:
        batch, y = self._prompt_rows(pipe, kwargs, self._prompt_features)
        if batch is not None:
            self.batch = batch
        device, dtype = bank_placement(pipe)  # decided once per call
        self._call = _Call(y, kwargs.get("height"), kwargs.get("width"))
        if self.follows_pipeline and len(self.bank) == 0 and hasattr(self.bank, "to"):
            self.bank.to(device, dtype)
        elif (
            getattr(self.bank, "device", None) is not None
            and torch.device(self.bank.device).type != device.type
        ):
            self._warn_once(
                "device",
                f"SPARKE: the bank is on {self.bank.device} but the pipeline runs on {device}: every guided step "
                f"copies features between them; move it with bank.to({str(device)!r})",
            )
        steps = kwargs.get("num_inference_steps")
        if self.scale > 0 and isinstance(steps, int) and steps > 0:
            due = self.schedule.count(steps)  # None for "span": it warns after the call if it guided nothing
            # a one-step run guided at its one step is all there is
            if due is not None and due < min(2, steps):
                self._warn_once(
                    "weak",
                    f"SPARKE guides only {due} of {steps} denoising steps (every={self.every!r}, "
                    f"window={self.window}); lower `every` to guide at least 2",
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
                f"SPARKE: non-finite update in {any_bad} of {call.due} guided steps; those samples were left "
                "unguided at those steps",
                RuntimeWarning,
                stacklevel=3,
            )
        if self.scale > 0 and call.due == 0 and self.schedule.every == "span":
            self._warn_once(
                "span-none",
                f"SPARKE guided none of the {run.steps} denoising steps: every='span' guides the steps whose log "
                f"signal-to-noise ratio lies in {SPAN_BAND} and none of this schedule's does; pass every=1 to "
                "guide every step anyway",
            )
        b, _ = split_batch(run.final_latents, self.batch)
        self.add_to_bank(run.final_latents[:b].float(), call.y, self._host(pipe, call))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=5)  # the user's guide(pipe, ...) line

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
        factor = self.schedule.factor(step) if call is not None else 0.0
        if factor == 0:
            return None
        b, dup = split_batch(step.latents, self.batch)
        out = step.model_output[:b].float()

        def x0_of(z: torch.Tensor) -> torch.Tensor:
            return x0_estimate(step.scheduler, z, out, step.timestep)

        host = self._host(step.pipe, call, step)
        host.step_factor = factor
        if self.update.orthogonal:
            host.cfg = cfg_direction(self._denoised, step.latents[:b])
        new = self.step_latents(step.latents[:b], x0_of, call.y, host)
        return torch.cat([new, new]) if dup else new

    def _host(self, pipe: Any, call: _Call, step: Step | None = None) -> Host:
        """The pipeline's side of a guided step (and of recording the final latents: ``step`` None)."""
        host = Host(name=type(pipe).__name__)
        if step is not None and self.update.step_schedule == "noise":
            host.noise_share = noise_share(step.scheduler, step.timestep)
        size = image_size(pipe, call.height, call.width)
        if step is not None and is_packed(pipe, step.latents):
            host.unpack = lambda t: pipe._unpack_latents(t, *size, pipe.vae_scale_factor)
            host.pack = lambda t: pipe._pack_latents(t, t.shape[0], *t.shape[1:])
        if callable(self.space):
            host.to_image = lambda x0: decode(pipe, x0, height=call.height, width=call.width)
        return host

    def step_latents(
        self,
        z: torch.Tensor,
        x0_of: Callable[[torch.Tensor], torch.Tensor],
        y: torch.Tensor | None,
        host: Host | None = None,
    ) -> torch.Tensor:
        """One guided step: latents z (B, ...) -> the moved latents, same shape and dtype.

        x0_of: the differentiable clean estimate of z (the model's output held fixed); y: (B, e) unit prompt
        features (None for "rke"/"vendi"). A sample whose update is not finite keeps its latents. The schedule
        (``every``, ``window``) is the caller's; nothing is added to the bank (``add_to_bank``).
        """
        host = host or Host()
        call = self._call if self._call is not None else _Call(y)
        update = self.update
        with torch.enable_grad():
            zg = z.detach().float().requires_grad_(True)
            # x0 once a step; in the latent space only the motion fit reads it, outside the gradient's graph
            clean = x0_of(zg) if self.space != "latent" else (x0_of(zg.detach()) if update.motion else None)
            x = self._features(zg, clean, host)
            xd = x.detach()
            if call.due == 0:
                self._check_dims(xd.shape[1], y, host.name or "the sampler")
            spec = self.step_spec(xd)
            yy = None if y is None or not spec.conditional else y.to(xd.device)
            d = self.bank.direction(xd, yy, spec=spec).to(xd.device, torch.float32)
            if self.novelty > 0 and self.reference is not None and len(self.reference):
                d = d + self.novelty * self._novelty(xd, yy, spec).to(d.dtype)
            if update.gate > 0:  # SPELL-style sparsity: only samples with a similar earlier image move
                d = torch.where(self._gate_open(xd, yy)[:, None], d, torch.zeros_like(d))
            d_ok = torch.isfinite(d).all(1)
            (g,) = torch.autograd.grad(x, zg, torch.where(d_ok[:, None], d, torch.zeros_like(d)))
        return self._move(z, g, clean, d_ok, host, call, lambda: self._crowding(xd, yy, spec))

    def _move(
        self,
        z: torch.Tensor,
        g: torch.Tensor,
        clean: torch.Tensor | None,
        d_ok: torch.Tensor,
        host: Host,
        call: _Call,
        crowding: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """The latents z moved by the gradient g (z's shape) under ``update``'s rule; non-finite rows stay."""
        update = self.update
        flat = z.detach().float().flatten(1)
        move = None
        if update.motion and clean is not None and (z.ndim == 4 or host.unpack is not None):
            g, move = self._motion(g, clean.detach(), host)
        if update.smooth > 0:
            g = lowpass(g, update.smooth)
        g = without_component(g.flatten(1), host.cfg) if update.orthogonal else g.flatten(1)
        scale: float | torch.Tensor = self.scale * host.step_factor
        if update.step_schedule == "noise":
            scale = scale * host.noise_share
        if update.crowding > 0:
            scale = scale * crowding()[:, None]
        if update.step == "raw":
            delta = scale * g if move is None else move((scale * torch.ones_like(flat[:, :1]))[:, 0])
        else:
            delta = (
                relative_step(g, flat, scale) if move is None else move(relative_factor(g, flat, scale)[:, 0])
            )
        new = flat + delta
        # a sample whose direction or update is not finite keeps its latents: decided and counted on the device,
        # reported after the call, so the step never waits for the host
        ok = d_ok & torch.isfinite(new).all(1)
        bad = (~ok).to(torch.int32)
        call.due += 1
        call.any_bad = bad.amax() + (0 if call.any_bad is None else call.any_bad)
        call.all_bad = bad.amin() + (0 if call.all_bad is None else call.all_bad)
        return torch.where(ok[:, None], new, flat).view_as(z).to(z.dtype)

    def step_spec(self, x: torch.Tensor) -> KernelSpec:
        """The score of a guided step on features x (B, d): ``sigma_image="median"`` resolved from x and the bank."""
        if self.spec.sigma_image == MEDIAN:
            return self.spec.replace(sigma_image=median_distance(x, self.bank))
        return self.spec

    def _features(self, z: torch.Tensor, clean: torch.Tensor | None, host: Host) -> torch.Tensor:
        """(B, d) unit feature rows in the guide's space: of z ("latent"), of its clean estimate ("x0"), or the
        image encoder's of the decoded estimate."""
        source = z if self.space == "latent" else clean
        if self.space in ("latent", "x0"):
            centre = self.update.centre
            return unit_rows(centred(source, float(centre)) if centre else source)
        if host.to_image is None:
            raise ValueError(
                f"space: an image encoder needs the pipeline's decoder, which {host.name or 'the sampler'} lacks"
            )
        return unit_rows(encode_images(self.space, host.to_image(source)))

    def _motion(
        self, g: torch.Tensor, image: torch.Tensor, host: Host
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:
        """g's motion component -(grad x0 . v) against the clean estimate x0 (``displacement``), and with warp
        the move for real: per-sample step factors f (B,) -> warp(x0, f v) - x0, flattened (B, d). Packed latents
        are unpacked for it and packed back."""
        unpack = host.unpack or (lambda t: t)
        pack = host.pack or (lambda t: t)
        image4 = unpack(image)
        v = displacement(unpack(g), image4, self.update.motion)
        moved = pack(first_order_warp(image4, v)).view_as(g)
        if not self.update.warps:
            return moved, None

        def move(factor: torch.Tensor) -> torch.Tensor:
            out = pack(warp(image4, factor.view(-1, 1, 1, 1) * v) - image4).reshape(g.shape[0], -1)
            # resampling at the pixel centres is exact only to rounding: a sample with no move keeps its latents
            return torch.where((factor != 0)[:, None], out, torch.zeros_like(out))

        return moved, move

    def _novelty(self, x: torch.Tensor, y: torch.Tensor | None, spec: KernelSpec) -> torch.Tensor:
        """(B, d) the novelty direction away from ``reference`` (prompt-weighted where both have prompts)."""
        ref = self.reference
        ref_y = ref.y if (y is not None and ref.y is not None) else None
        return novelty_direction(
            x,
            y if ref_y is not None else None,
            ref.x.to(x.device, torch.float32),
            None if ref_y is None else ref_y.to(x.device, torch.float32),
            kernel=spec.kernel,
            sigma_image=spec.sigma_image,
            sigma_prompt=spec.sigma_prompt,
        )

    def _crowding(self, x: torch.Tensor, y: torch.Tensor | None, spec: KernelSpec) -> torch.Tensor:
        """(B,) m / (m + crowding), m the kernel mass of the bank rows around each sample (0: empty bank)."""
        if not len(self.bank):
            return torch.zeros(x.shape[0], device=x.device)
        mass = kernel_mass(x, self.bank.x, y, self.bank.y if y is not None else None, spec)
        return crowding_factor(mass, self.update.crowding)

    def _gate_open(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """(B,) bool: a bank row or another sample of the batch lies within ``gate`` of the sample's features,
        with a prompt within 2 ``sigma_prompt`` (prompt kernel >= exp(-2); any prompt for "rke"/"vendi")."""
        gate, near_prompt = self.update.gate, 2 * self.sigma_prompt
        open_ = any_within(x, y, x, y, gate, near_prompt, skip_self=True)
        if len(self.bank):
            open_ |= any_within(x, y, self.bank.x, self.bank.y if y is not None else None, gate, near_prompt)
        return open_

    def _check_dims(self, dim_x: int, y: torch.Tensor | None, name: str) -> None:
        """Refuse a bank or reference whose widths, feature space or prompt encoder differ from this guide's."""
        space = self.space if isinstance(self.space, str) else "image-encoder"
        dim_y = None if y is None else y.shape[1]
        banks = {"bank": self.bank, "reference": self.reference}
        check_dims(banks, dim_x, dim_y, space, name)
        check_metadata(banks, space_label(space, self.update.centre), self._encoder_name)

    @property
    def _encoder_name(self) -> str:
        return self.prompt_encoder if isinstance(self.prompt_encoder, str) else "callable"

    # -- the bank --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def add_to_bank(self, final: torch.Tensor, y: torch.Tensor | None, host: Host | None = None) -> None:
        """Add finished images to the bank: their clean latents ``final`` (B, ...) and prompt features y (B, e)."""
        host = host or Host()
        x = self._features(final.float(), final.float(), host)
        self._check_dims(x.shape[1], y, host.name or "the sampler")
        bank = self.bank
        if not len(bank) and isinstance(getattr(bank, "metadata", None), dict):
            space = space_label(
                self.space if isinstance(self.space, str) else "image-encoder", self.update.centre
            )
            record = dict(pipeline=host.name, space=space, prompt_encoder=self._encoder_name)
            for key, value in record.items():
                if value:  # outside diffusers there is no pipeline class to record
                    bank.metadata.setdefault(key, value)
        device = getattr(bank, "device", None) or x.device
        bank.add(x.to(device), None if y is None else y.to(device))

    @torch.no_grad()
    def encode_images(self, pipe: Any, images: Any, prompts: list[str] | None = None) -> Any:
        """A Bank of reference features of ``images`` in this guide's space (for ``reference=``).

        images: PIL images / arrays, or a tensor (N, 3, H, W) in [0, 1], at the generation resolution (latent
        features must have the generated latents' size). prompts: optional, one per image, to weight the
        novelty push by prompt similarity.
        """
        y = None if prompts is None else encode_prompts(self.prompt_encoder, pipe, list(prompts)).cpu()
        return reference_bank(pipe, images, self.space, self.update.centre, y)
