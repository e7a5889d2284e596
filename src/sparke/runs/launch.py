"""``generate``: one entry point for a run, in one process or under a launcher (torchrun, accelerate)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .config import RunConfig
from .distributed import dist_env, generate_distributed
from .generation import GenerateSummary, Session, generate_single

__all__ = ["generate"]


def generate(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    device: str = "auto",
    pipe: Any = None,
    on_start: Callable[[Session], None] | None = None,
    on_batch: Callable[[Session, int], None] | None = None,
) -> GenerateSummary:
    """Generate (or resume) the run ``config`` in folder ``out``; the keywords are those of ``GenerateOptions``.

    Under a launcher (``WORLD_SIZE`` > 1) the processes share the work and one bank (``generate_distributed``).
    """
    run = generate_distributed if dist_env() is not None else generate_single
    return run(config, out, device=device, pipe=pipe, on_start=on_start, on_batch=on_batch)
