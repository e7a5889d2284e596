"""Shared plumbing of the baselines: a guide object that attaches per-step hooks for one pipeline call.

Every baseline (and SPARKE itself) is a callable ``guide(pipe, **call_kwargs) -> the pipeline's output``
with a ``scale`` knob where 0 means exactly the unguided call. The hooks are those of
``sparke.guidance.attach``: ``on_step`` moves the latents before each scheduler step, ``on_model_input``
rewrites the denoiser's inputs (a forward pre-hook), so each method runs on the stock diffusers pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparke.guidance.attach import Attachment, Step, attach, split_batch
from sparke.guidance.prompts import batch_prompts

__all__ = ["AttachedGuide", "GuideStats", "split_batch"]


@dataclass
class GuideStats:
    """What the last guided call did."""

    steps: int = 0  # denoising steps
    guided: int = 0  # steps (or model calls, for conditioning methods) that the method changed


def call_batch(kwargs: dict[str, Any]) -> int | None:
    """Images B the pipeline call will make, from its kwargs (None when it cannot tell)."""
    prompts, _, per = batch_prompts(None, kwargs)
    if prompts is not None:
        return len(prompts) * per
    embeds = kwargs.get("prompt_embeds")
    if embeds is not None:
        return int(embeds.shape[0]) * per
    return None


class AttachedGuide:
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
        """Called before each pipeline call (after ``self.batch`` is set)."""

    def __call__(self, pipe: Any, **kwargs: Any) -> Any:
        """Run ``pipe(**kwargs)`` with this method attached for that call only."""
        self.batch = call_batch(kwargs)
        self.stats = GuideStats()
        active = self.scale > 0
        if active:
            self.begin(pipe, kwargs)
        on_step = self.on_step if (active and self.uses_step) else None
        on_input = self.on_model_input if (active and self.uses_model_input) else None
        with attach(pipe, on_step, on_input) as run:
            self._run = run
            try:
                out = pipe(**kwargs)
            finally:
                self._run = None
        self.stats.steps = run.steps
        return out

    def num_steps(self) -> int:
        """Denoising steps of the running call (known once ``set_timesteps`` ran)."""
        from sparke.guidance.attach import _num_steps  # the attachment's own count, so both agree

        run = self._run
        if run is not None and run.num_steps is not None:
            return run.num_steps
        return _num_steps(run.scheduler) if run is not None else 1
