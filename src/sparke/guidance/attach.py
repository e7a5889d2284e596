"""Attach per-step latent guidance to a stock diffusers pipeline for one call, without a fork.

How: for the duration of a ``with attach(pipe, on_step):`` block, the pipeline's own scheduler object gets an
instance attribute ``step`` that shadows its class method: it calls ``on_step`` and then the real ``step``
with the latents ``on_step`` returned. On exit the attribute is deleted and the scheduler's whole state (its
``__dict__``) is put back as it was on entry, also when the call raised.

Why the scheduler, and why patch the instance rather than wrap the object:
- every denoising loop calls ``self.scheduler.step(model_output, t, latents)`` once per (sub)step, including
  PixArt and DiT, whose ``__call__`` swallows ``callback_on_step_end`` silently, and pixel-space pipelines;
- ``step`` sees the model output, so the clean-sample estimate (``space="x0"``) is available; a
  ``callback_on_step_end`` only sees the latents after the step;
- the scheduler stays the same object of the same class: the ~27 pipelines that test
  ``isinstance(self.scheduler, ...)`` behave as usual and ``pipe.config`` never records a wrapper class;
- ``functools.wraps`` keeps the real signature, which pipelines inspect to decide on ``eta``/``generator``.

Second-order schedulers (Heun, KDPM2) call ``step`` twice per denoising step; ``on_step`` runs only on the
first call of each pair (``scheduler.state_in_first_order``), so ``Step.index`` counts denoising steps.

The per-step interface, for SPARKE and for baselines:

    def on_step(step: Step) -> torch.Tensor | None

receives a ``Step`` (index, fraction, num_steps, latents, model_output, timestep, scheduler, pipe) before the
scheduler moves the latents, and returns new latents of the same shape and dtype (or None to leave them).
Example, in-batch repulsion (particle guidance in its simplest form):

    def repel(step):
        z = step.latents.flatten(1).float()
        push = z - z.mean(0, keepdim=True)
        return (z + 0.01 * push).view_as(step.latents).to(step.latents.dtype)

    with attach(pipe, repel) as run:
        out = pipe(prompt=["a cat"] * 4)
    run.final_latents  # what the last scheduler.step returned

Attachments nest: an inner ``attach`` wraps the outer one's patched ``step``, so methods compose (the
innermost ``on_step`` runs first) and each restores exactly what it found.

``on_model_input(index, args, kwargs) -> (args, kwargs) | None`` is an optional forward pre-hook on the
denoiser (``pipe.unet`` or ``pipe.transformer``), for methods that change the conditioning rather than the
latents (CADS adds noise to ``kwargs["encoder_hidden_states"]``); ``index`` is the current denoising step.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Attachment", "Step", "attach", "denoiser_of", "num_steps_of", "split_batch"]


@dataclass
class Step:
    """What a per-step guidance function sees, before the scheduler moves the latents."""

    index: int  # denoising step, 0-based (a second-order pair of step() calls counts once)
    fraction: float  # index / (num_steps - 1): 0.0 at the first step, 1.0 at the last
    num_steps: int  # denoising steps in this call
    latents: torch.Tensor  # `sample` given to scheduler.step: (B, C, H, W); Flux packs (B, seq, C*4)
    model_output: torch.Tensor  # the model output given to scheduler.step (after CFG), same layout
    timestep: torch.Tensor  # the scheduler's timestep t (for flow matching: sigma * 1000)
    scheduler: Any  # the pipeline's scheduler (the real one; `step` is patched only on the instance)
    pipe: Any  # the pipeline


OnStep = Callable[[Step], "torch.Tensor | None"]
OnModelInput = Callable[[int, tuple, dict], "tuple[tuple, dict] | None"]


def denoiser_of(pipe: Any) -> torch.nn.Module | None:
    """The pipeline's denoising network: ``unet`` or ``transformer`` (None if it has neither)."""
    for name in ("unet", "transformer", "prior"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _snapshot(obj: Any) -> dict[str, Any]:
    # Deep copies: schedulers mutate lists (DPM-Solver's model_outputs) and tensors in place. The frozen
    # config dict cannot be deep-copied (FrozenDict refuses item assignment) and is immutable anyway.
    state = {}
    for key, value in vars(obj).items():
        if key == "_internal_dict":
            state[key] = value
            continue
        try:
            state[key] = copy.deepcopy(value)
        except Exception:  # an uncopyable attribute: keep the reference, as found
            state[key] = value
    return state


def _restore(obj: Any, state: dict[str, Any]) -> None:
    vars(obj).clear()
    vars(obj).update(state)


def _second_order_pending(scheduler: Any) -> bool:
    """True between the two step() calls of a second-order scheduler's denoising step."""
    first = getattr(scheduler, "state_in_first_order", True)
    return not bool(first)


def num_steps_of(scheduler: Any) -> int:
    """Denoising steps left in this call, from the scheduler's timesteps (img2img begins part-way)."""
    timesteps = getattr(scheduler, "timesteps", None)
    total = len(timesteps) if timesteps is not None else 0
    begin = getattr(scheduler, "_begin_index", None) or 0
    calls = max(total - int(begin), 1)
    if hasattr(scheduler, "state_in_first_order"):
        # Heun-style: [t0, t1, t1, t2, t2, ...]: 2n - 1 timesteps for n steps
        return max((calls + 1) // 2, 1)
    return calls


class Attachment:
    """A live attachment: counts calls and keeps the last latents the scheduler produced."""

    def __init__(self, pipe: Any, on_step: OnStep | None = None, on_model_input: OnModelInput | None = None):
        if getattr(pipe, "scheduler", None) is None:
            raise ValueError(f"{type(pipe).__name__} has no `scheduler`: nothing to attach guidance to")
        self.pipe = pipe
        self.scheduler = pipe.scheduler
        self.on_step = on_step
        self.on_model_input = on_model_input
        self.step_calls = 0  # raw scheduler.step() calls
        self.steps = 0  # denoising steps begun (Heun's last step is a single first-order call)
        self.num_steps: int | None = None
        self.final_latents: torch.Tensor | None = None
        self._state: dict[str, Any] | None = None
        self._hook = None

    # -- the patched step ------------------------------------------------------------------------------------
    def _step(self, real_step: Callable, *args: Any, **kwargs: Any) -> Any:
        model_output, timestep, sample, args, kwargs = _split_step_args(args, kwargs)
        scheduler = self.scheduler
        if self.num_steps is None:
            self.num_steps = num_steps_of(scheduler)
        starting = not _second_order_pending(scheduler)
        if starting:
            self.steps += 1
        if starting and self.on_step is not None:
            n = self.num_steps
            index = self.steps - 1
            step = Step(
                index=index,
                fraction=index / max(n - 1, 1),
                num_steps=n,
                latents=sample,
                model_output=model_output,
                timestep=timestep,
                scheduler=scheduler,
                pipe=self.pipe,
            )
            new = self.on_step(step)
            if new is not None:
                if new.shape != sample.shape:
                    raise ValueError(
                        f"on_step returned shape {tuple(new.shape)}, expected {tuple(sample.shape)}"
                    )
                sample = new.to(dtype=sample.dtype, device=sample.device)
        self.step_calls += 1
        out = real_step(model_output, timestep, sample, *args, **kwargs)
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        self.final_latents = prev.detach()
        return out

    @property
    def index(self) -> int:
        """The current denoising step: the one the next model evaluation belongs to."""
        return self.steps - 1 if _second_order_pending(self.scheduler) else self.steps

    def _pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return self.on_model_input(self.index, args, kwargs)

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> Attachment:
        scheduler = self.scheduler
        self._state = _snapshot(scheduler)
        # the class's bound method, or an outer attachment's patched step: attachments nest (and compose)
        real_step = scheduler.step

        # a partial, not a closure: one Python frame fewer on every step; its signature is the real step's
        # (pipelines inspect it for ``eta`` and ``generator``)
        scheduler.step = functools.update_wrapper(functools.partial(self._step, real_step), real_step)
        if self.on_model_input is not None:
            denoiser = denoiser_of(self.pipe)
            if denoiser is None:
                self._restore()
                raise ValueError(f"{type(self.pipe).__name__} has no unet/transformer for on_model_input")
            self._hook = denoiser.register_forward_pre_hook(self._pre_hook, with_kwargs=True)
        return self

    def _restore(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._state is not None:
            _restore(self.scheduler, self._state)  # also drops the instance `step`
            self._state = None

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def attach(
    pipe: Any, on_step: OnStep | None = None, on_model_input: OnModelInput | None = None
) -> Attachment:
    """Context manager: run ``on_step`` before every denoising step of calls made inside the block.

    See the module docstring for the interface; with ``on_step=None`` it only records ``final_latents``.
    """
    return Attachment(pipe, on_step, on_model_input)


def _split_step_args(args: tuple, kwargs: dict) -> tuple[Any, Any, Any, tuple, dict]:
    """(model_output, timestep, sample, remaining args, remaining kwargs) from a scheduler.step call."""
    kwargs = dict(kwargs)
    args = list(args)
    names = ("model_output", "timestep", "sample")
    values = []
    for name in names:
        if name in kwargs:
            values.append(kwargs.pop(name))
        elif args:
            values.append(args.pop(0))
        else:
            raise TypeError(f"scheduler.step() called without `{name}`")
    return values[0], values[1], values[2], tuple(args), kwargs


def split_batch(latents: torch.Tensor, batch: int | None) -> tuple[int, bool]:
    """(B, duplicated): DiT steps its CFG batch [z, z] (2B equal rows); other pipelines step the B rows asked for."""
    n = latents.shape[0]
    if batch is None or n == batch:
        return n, False
    if n == 2 * batch and torch.equal(latents[:batch], latents[batch:]):
        return batch, True
    raise ValueError(f"the scheduler stepped {n} samples, but the call asked for {batch} images")
