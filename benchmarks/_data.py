"""Synthetic guidance-like features and a timer shared by the benchmarks: unit image rows in prompt clusters."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def clustered(
    n: int,
    d: int,
    e: int = 32,
    *,
    prompts: int = 100,
    modes: int = 4,
    spread: float = 0.5,
    prompt_spread: float = 0.15,
    seed: int = 0,
    centres_seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (n, d) unit rows, y: (n, e) unit rows.

    ``prompts`` prompt clusters (y near one of ``prompts`` unit centres, angular noise ``prompt_spread``);
    each has ``modes`` image modes (x near one of ``modes`` unit centres per prompt, noise ``spread``):
    the regime of guidance, where a sample's prompt neighbours are a small part of the bank.
    ``centres_seed`` draws the centres from their own seed, so several calls sample one distribution.
    """
    gen = torch.Generator().manual_seed(seed if centres_seed is None else centres_seed)
    p_centres = torch.nn.functional.normalize(torch.randn(prompts, e, generator=gen), dim=1)
    x_centres = torch.nn.functional.normalize(torch.randn(prompts * modes, d, generator=gen), dim=1)
    if centres_seed is not None:  # same centres, other samples: chunks of one bank, or queries
        gen = torch.Generator().manual_seed(seed)
    x = torch.empty(n, d, dtype=dtype)
    y = torch.empty(n, e, dtype=dtype)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        p = torch.randint(0, prompts, (m,), generator=gen)
        k = p * modes + torch.randint(0, modes, (m,), generator=gen)
        xs = x_centres[k] + spread * torch.randn(m, d, generator=gen) / d**0.5
        ys = p_centres[p] + prompt_spread * torch.randn(m, e, generator=gen) / e**0.5
        x[start : start + m] = torch.nn.functional.normalize(xs, dim=1)
        y[start : start + m] = torch.nn.functional.normalize(ys, dim=1)
    return x, y


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median milliseconds of ``reps`` calls of ``fn``, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)
