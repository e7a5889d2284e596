"""Which denoising steps a per-step method acts on, and how far each guided step moves.

Three rules, chosen by ``every``:

- an integer k: steps 0, k, 2k, ... (each a full step of ``scale``);
- ``"auto"``: k from the step count (``auto_every``), kept for the run folders made with it;
- ``"span"``: steps placed by their noise level (``span_factors``): up to 5 guided steps spread over a band of
  log signal-to-noise ratios, each step's length its share of the band, so the number of guided steps and the
  move they add up to change smoothly with the step count.

``window`` keeps only the steps whose position in the run (0 = first, 1 = last) lies inside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .attach import Step
from .spaces import step_sigma

__all__ = ["SPAN_BAND", "SPAN_BINS", "Schedule", "auto_every", "log_snr", "span_factors"]

AUTO_EVERY_LONG = 20  # from this many denoising steps on, "auto" guides every 10th step (the paper's rule)

# The band of log signal-to-noise ratios lambda = -log(sigma) (EDM sigma) that "span" guides. Below -4 the
# clean estimate is still noise: a move there is a move of noise that a few-step run cannot undo (at 4 steps
# guiding step 0 alone, lambda -5.06, cost 13.5 fidelity points). Above 0.5 the layout is set. Chosen and
# confirmed in experiments/ (round eleven).
SPAN_BAND = (-4.0, 0.5)
SPAN_BINS = 5  # at most this many guided steps; a fine schedule adds up to this many steps of `scale`


def auto_every(num_steps: int) -> int:
    """The step interval of ``every="auto"`` for a run of ``num_steps`` denoising steps.

    10 from 20 steps on (the paper's every 10th step; what ``every=10`` always did), else ceil(num_steps / 5):
    about 5 guided steps, i.e. every step of a 1-5 step distilled run, every 2nd of 6-10 steps.
    """
    if num_steps >= AUTO_EVERY_LONG:
        return 10
    return max(1, math.ceil(num_steps / 5))


def span_factors(
    log_snrs: Sequence[float], band: tuple[float, float] = SPAN_BAND, bins: int = SPAN_BINS
) -> list[float]:
    """Per-step step-length factors of ``every="span"``: 0 for an unguided step, else in (0, 1].

    log_snrs: lambda_i = -log(sigma_i) of each denoising step's input, increasing (sigma: EDM noise level).
    A step inside the band [a, b] covers lambda_i to min(lambda_{i+1}, b) (the last step: to b); its weight is
    that length over b - a. The band is cut into ``bins`` equal bins; the first step of each non-empty bin is
    guided with the summed weight w of its bin's steps, and moves ``scale * min(1, bins * w)``. A fine schedule
    adds up to ``bins`` full steps wherever the band falls; a coarse one to less, no step more than ``scale``.
    """
    a, b = band
    if not (math.isfinite(a) and math.isfinite(b) and a < b) or bins < 1:
        raise ValueError(f"span: needs a finite band a < b and bins >= 1, got band={band!r}, bins={bins!r}")
    lam = [float(v) for v in log_snrs]
    factors = [0.0] * len(lam)
    weights: dict[int, float] = {}  # bin -> summed weight
    first: dict[int, int] = {}  # bin -> its first step
    for i, lo in enumerate(lam):
        if not a <= lo <= b:
            continue
        hi = min(lam[i + 1], b) if i + 1 < len(lam) else b
        k = min(int((lo - a) / (b - a) * bins), bins - 1)
        weights[k] = weights.get(k, 0.0) + max(hi - lo, 0.0) / (b - a)
        first.setdefault(k, i)
    for k, i in first.items():
        factors[i] = min(1.0, bins * weights[k])
    return factors


def log_snr(scheduler: Any, num_steps: int) -> list[float]:
    """lambda_i = -log(sigma_i) of each of the call's ``num_steps`` denoising steps (-inf where sigma is inf)."""
    out = []
    for i in range(num_steps):
        sigma = step_sigma(scheduler, i)
        out.append(-math.inf if not math.isfinite(sigma) else (math.inf if sigma <= 0 else -math.log(sigma)))
    return out


@dataclass(frozen=True)
class Schedule:
    """Which denoising steps a per-step method acts on, and each one's step-length factor.

    ``every``: an integer k (steps 0, k, 2k, ...), ``"auto"`` (k from the step count, ``auto_every``) or
    ``"span"`` (by noise level, ``span_factors``). ``window``: (start, end) fractions of the trajectory, 0 = first
    step, 1 = last; steps outside it are not guided.
    """

    every: int | str = 10
    window: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        every = self.every
        if every not in ("auto", "span") and not (
            isinstance(every, int) and not isinstance(every, bool) and every >= 1
        ):
            raise ValueError(f"every: must be an integer >= 1, 'auto' or 'span', got {every!r}")
        try:
            lo, hi = (float(v) for v in self.window)
        except (TypeError, ValueError):
            raise ValueError(f"window: must be (start, end) fractions, got {self.window!r}") from None
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"window: must be (start, end) with 0 <= start <= end <= 1, got {self.window!r}")
        object.__setattr__(self, "window", (lo, hi))

    def interval(self, num_steps: int) -> int:
        """The step interval for a call of ``num_steps`` denoising steps (``"span"`` has none: 1)."""
        if self.every == "span":
            return 1
        return auto_every(num_steps) if self.every == "auto" else int(self.every)

    def factor(self, step: Step) -> float:
        """This step's step-length factor: 0 when it is not guided, 1 for a full step of ``scale``."""
        if not self._inside(step.fraction):
            return 0.0
        if self.every == "span":
            return self._span_factors(step)[step.index]
        return 1.0 if step.index % self.interval(step.num_steps) == 0 else 0.0

    def _span_factors(self, step: Step) -> list[float]:
        """``span_factors`` of the call's schedule, computed once per call (each step would repeat O(steps) work):
        kept until the scheduler or its timesteps change (``set_timesteps`` makes a new tensor)."""
        scheduler, timesteps = step.scheduler, getattr(step.scheduler, "timesteps", None)
        ends = () if timesteps is None or not len(timesteps) else (float(timesteps[0]), float(timesteps[-1]))
        key = (id(scheduler), id(timesteps), ends, step.num_steps, getattr(scheduler, "_begin_index", None))
        cached = self.__dict__.get("_span_cache")
        if cached is None or cached[0] != key:
            cached = (key, span_factors(log_snr(scheduler, step.num_steps)))
            object.__setattr__(self, "_span_cache", cached)  # a cache, not a field: equality is unchanged
        return cached[1]

    def due(self, step: Step) -> bool:
        return self.factor(step) > 0

    def count(self, num_steps: int) -> int | None:
        """How many of ``num_steps`` denoising steps are due (None for ``"span"``: it needs the noise levels)."""
        if self.every == "span":
            return None
        last = max(num_steps - 1, 1)
        return sum(1 for i in range(0, num_steps, self.interval(num_steps)) if self._inside(i / last))

    def _inside(self, fraction: float) -> bool:
        lo, hi = self.window
        return lo - 1e-9 <= fraction <= hi + 1e-9
