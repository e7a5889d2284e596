"""A guided step a reader can follow: at most 8 Python frames from the scheduler's ``step`` (the attachment's
``_step``, what ``pipe.scheduler.step`` is during a guided call) down to the direction arithmetic
(``sparke.core.order2.order2_direction``), counted on a real call of a tiny SD pipeline."""

from __future__ import annotations

import sys

import pytest
import torch

import sparke.core.order2 as order2
from sparke import SPARKE, Update
from sparke.guidance.attach import Attachment
from tiny_pipelines import build, call_kwargs

pytestmark = pytest.mark.usefixtures("torch_one_thread")
MAX_FRAMES = 8


def _frames_from_step() -> int:
    """Frames from the caller's caller up to and including the attachment's ``_step``."""
    frame, count = sys._getframe(2), 0  # 0: this function, 1: the spy, 2: the arithmetic's caller
    while frame is not None:
        count += 1
        if frame.f_code is Attachment._step.__code__:
            return count + 1  # and the arithmetic itself
        frame = frame.f_back
    raise AssertionError("the arithmetic ran outside a scheduler step")


@pytest.mark.parametrize("update", [Update(), Update.paper()], ids=["defaults", "paper"])
def test_the_direction_arithmetic_is_at_most_8_frames_below_the_scheduler_step(update, monkeypatch):
    depths = []
    arithmetic = order2.order2_direction

    def spy(*args, **kwargs):
        depths.append(_frames_from_step())
        return arithmetic(*args, **kwargs)

    monkeypatch.setattr(order2, "order2_direction", spy)
    pipe = build("sd")
    guide = SPARKE(scale=0.1, every=1, update=update)
    for seed in (0, 1):  # an empty bank, then one with rows
        guide(pipe, **call_kwargs(pipe, num_images_per_prompt=2, seed=seed))
    assert len(depths) == 2 * 3 and len(guide.bank) == 8  # 3 steps per call, each guided
    assert max(depths) <= MAX_FRAMES, depths


def test_x0_is_computed_once_per_guided_step(monkeypatch):
    import sparke.guidance.plugin as plugin

    calls = []
    estimate = plugin.x0_estimate

    def spy(*args, **kwargs):
        calls.append(1)
        return estimate(*args, **kwargs)

    monkeypatch.setattr(plugin, "x0_estimate", spy)
    pipe = build("sd")
    guide = SPARKE(scale=0.1, every=1)  # x0 space and the motion step: both read the clean estimate
    guide(pipe, **call_kwargs(pipe))
    assert guide.stats.guided == 3 and len(calls) == 3
    assert torch.isfinite(guide.bank.x).all()
