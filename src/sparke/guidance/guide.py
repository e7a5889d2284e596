"""The guide base class: a callable ``guide(pipe, **call_kwargs)`` that attaches per-step hooks for one call.

SPARKE and every baseline are ``Guide`` subclasses with a ``scale`` knob where 0 means exactly the unguided
call. A subclass defines ``on_step`` (moves the latents before each scheduler step) and/or
``on_model_input`` (rewrites the denoiser's inputs), and may override ``begin`` (before the call) and ``end``
(after it, with the attachment's record). The hooks are those of ``sparke.guidance.attach``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .attach import Attachment, Step, attach, num_steps_of
from .prompts import batch_prompts

__all__ = ["Guide", "GuideStats", "call_batch", "check_scale"]


@dataclass
class GuideStats:
    """What the last call did (for logging and tests)."""

    step_calls: int = 0  # raw scheduler.step() calls (Heun: about twice the steps)
    steps: int = 0  # denoising steps
    guided: int = 0  # steps (or model calls, for conditioning methods) that the method changed
    skipped: int = 0  # guided steps skipped for a non-finite update


def check_scale(scale: Any) -> float:
    """``scale`` as a float >= 0 (a ValueError naming it otherwise)."""
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not (math.isfinite(scale) and scale >= 0)
    ):
        raise ValueError(f"scale: must be a finite number >= 0, got {scale!r}")
    return float(scale)


def call_batch(kwargs: dict[str, Any]) -> int | None:
    """Images B the pipeline call will make, from its kwargs (None when it cannot tell)."""
    prompts, _, per = batch_prompts(None, kwargs)
    if prompts is not None:
        return len(prompts) * per
    embeds = kwargs.get("prompt_embeds")
    if embeds is not None:
        return int(embeds.shape[0]) * per
    return None


class Guide:
    """Base class: subclasses define ``on_step`` and/or ``on_model_input`` and may use ``self.batch``."""

    scale: float = 0.0
    uses_step: bool = True  # attach on_step
    uses_model_input: bool = False  # attach on_model_input

    def __init__(self) -> None:
        self.stats = GuideStats()
        self.batch: int | None = None
        self._run: Attachment | None = None

    def on_step(self, step: Step) -> torch.Tensor | None:  # pragma: no cover - overridden
        return None

    def on_model_input(self, index: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return None  # pragma: no cover - overridden

    def begin(self, pipe: Any, kwargs: dict[str, Any]) -> None:
        """Called before each pipeline call (after ``self.batch`` is set), also at scale 0."""

    def end(self, pipe: Any, run: Attachment) -> None:
        """Called after each pipeline call that returned, with the attachment's record of it."""

    def __call__(self, pipe: Any, **kwargs: Any) -> Any:
        """Run ``pipe(**kwargs)`` with this method attached for that call only; returns the pipeline's output."""
        self.batch = call_batch(kwargs)
        self.stats = GuideStats()
        self.begin(pipe, kwargs)
        active = self.scale > 0
        on_step = self.on_step if (active and self.uses_step) else None
        on_input = self.on_model_input if (active and self.uses_model_input) else None
        with attach(pipe, on_step, on_input) as run:
            self._run = run
            try:
                out = pipe(**kwargs)
            finally:
                self._run = None
        self.stats.step_calls = run.step_calls
        self.stats.steps = run.steps
        self.end(pipe, run)
        return out

    def num_steps(self) -> int:
        """Denoising steps of the running call (known once ``set_timesteps`` ran)."""
        run = self._run
        if run is not None and run.num_steps is not None:
            return run.num_steps
        return num_steps_of(run.scheduler) if run is not None else 1
