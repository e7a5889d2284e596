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

__all__ = ["Guide", "GuideStats", "Schedule", "auto_every", "call_batch", "check_scale"]


@dataclass
class GuideStats:
    """What the last call did (for logging and tests)."""

    step_calls: int = 0  # raw scheduler.step() calls (Heun: about twice the steps)
    steps: int = 0  # denoising steps
    guided: int = 0  # steps (or model calls, for conditioning methods) that the method changed
    skipped: int = 0  # guided steps skipped for a non-finite update


AUTO_EVERY_LONG = 20  # from this many denoising steps on, "auto" guides every 10th step (the paper's rule)


def auto_every(num_steps: int) -> int:
    """The step interval of ``every="auto"`` for a run of ``num_steps`` denoising steps.

    10 from 20 steps on (the paper's every 10th step; what ``every=10`` always did), else ceil(num_steps / 5):
    about 5 guided steps, i.e. every step of a 1-5 step distilled run (LCM, turbo, lightning, schnell), every
    2nd of 6-10 steps. A fixed ``every=10`` would guide only step 0 of such runs.
    """
    if num_steps >= AUTO_EVERY_LONG:
        return 10
    return max(1, math.ceil(num_steps / 5))


@dataclass(frozen=True)
class Schedule:
    """Which denoising steps a per-step method acts on: indices 0, every, 2 * every, ... inside ``window``.

    ``window`` is (start, end) as fractions of the trajectory: 0 = first step, 1 = last. ``every="auto"``
    takes the interval from the call's step count (``auto_every``).
    """

    every: int | str = 10
    window: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        every = self.every
        if every != "auto" and not (isinstance(every, int) and not isinstance(every, bool) and every >= 1):
            raise ValueError(f"every: must be an integer >= 1 or 'auto', got {every!r}")
        try:
            lo, hi = (float(v) for v in self.window)
        except (TypeError, ValueError):
            raise ValueError(f"window: must be (start, end) fractions, got {self.window!r}") from None
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"window: must be (start, end) with 0 <= start <= end <= 1, got {self.window!r}")
        object.__setattr__(self, "window", (lo, hi))

    def interval(self, num_steps: int) -> int:
        """The step interval for a call of ``num_steps`` denoising steps."""
        return auto_every(num_steps) if self.every == "auto" else int(self.every)

    def due(self, step: Step) -> bool:
        return step.index % self.interval(step.num_steps) == 0 and self._inside(step.fraction)

    def count(self, num_steps: int) -> int:
        """How many of ``num_steps`` denoising steps are due (fractions as ``attach`` computes them)."""
        last = max(num_steps - 1, 1)
        return sum(1 for i in range(0, num_steps, self.interval(num_steps)) if self._inside(i / last))

    def _inside(self, fraction: float) -> bool:
        lo, hi = self.window
        return lo - 1e-9 <= fraction <= hi + 1e-9


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
