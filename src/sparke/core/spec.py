"""``KernelSpec``: how a batch is scored against a bank, checked once and passed down as one argument.

    spec = KernelSpec(objective="cond-rke", sigma_image=0.8, sigma_prompt=0.3, on_nonfinite="skip")
    bank.direction(x, y, spec)                   # the same as the keywords: bank.direction(x, y, sigma_image=0.8, ...)

Banks take either a spec or the keywords (``objective``, ``kernel``, ``sigma_image``, ``sigma_prompt``,
``on_nonfinite``, and the deprecated ``sigma_x``/``sigma_y``): ``as_spec`` turns the keywords into a spec once, at
the bank's door, and everything below it reads the spec.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from .checks import (
    RENAMED_BANDWIDTHS,
    check_kernel,
    check_objective,
    check_on_nonfinite,
    check_sigma,
    rename_bandwidths,
)
from .defaults import KERNEL, OBJECTIVE, ON_NONFINITE, SIGMA_IMAGE, SIGMA_PROMPT

__all__ = ["MEDIAN", "KernelSpec", "ScoresBatches", "as_spec"]

# A bandwidth set at each step from the data (``SPARKE(sigma_image="median")``), not a number.
MEDIAN = "median"
KEYWORDS = ("objective", "kernel", "sigma_image", "sigma_prompt", "on_nonfinite")


@dataclass(frozen=True)
class KernelSpec:
    """The score (``objective``: "rke", "cond-rke", "vendi", "cond-vendi"), the kernel ("gaussian", "cosine") and
    its bandwidths on unit-norm features, and ``on_nonfinite`` ("raise" or "skip"). ``sigma_image`` may be
    "median" in a guide's spec (set at each step from the data); a bank is always given a number."""

    objective: str = OBJECTIVE
    kernel: str = KERNEL
    sigma_image: float | str = SIGMA_IMAGE
    sigma_prompt: float = SIGMA_PROMPT
    on_nonfinite: str = ON_NONFINITE

    def __post_init__(self) -> None:
        check_objective(self.objective)
        check_kernel(self.kernel)
        check_on_nonfinite(self.on_nonfinite)
        if self.sigma_image != MEDIAN:
            object.__setattr__(self, "sigma_image", check_sigma(self.sigma_image, "sigma_image"))
        object.__setattr__(self, "sigma_prompt", check_sigma(self.sigma_prompt, "sigma_prompt"))

    @property
    def conditional(self) -> bool:
        """Whether the prompt kernel counts (the "cond-" objectives)."""
        return self.objective.startswith("cond-")

    @property
    def order2(self) -> bool:
        """Whether the score is the order-2 one ("rke", "cond-rke"), whose direction a bank's kept sums speed up."""
        return self.objective in ("rke", "cond-rke")

    @property
    def indexable(self) -> bool:
        """Whether an index (``IndexedBank``) can answer it: the order-2 score with a Gaussian kernel of one
        fixed bandwidth (an index is built for its bandwidths; a per-step median would rebuild it each step)."""
        return self.order2 and self.kernel == "gaussian" and self.sigma_image != MEDIAN

    def replace(self, **changes: Any) -> KernelSpec:
        """A copy with ``changes`` (checked like a new spec)."""
        return dataclasses.replace(self, **changes)

    def keywords(self) -> dict[str, Any]:
        """The spec as the keywords of ``direction`` (for a user's bank that takes keywords only)."""
        return {name: getattr(self, name) for name in KEYWORDS}


def as_spec(spec: KernelSpec | None, options: dict[str, Any], base: KernelSpec | None = None) -> KernelSpec:
    """``spec``, or the keywords ``options`` over ``base`` (default: the defaults); None-valued keywords keep
    ``base``'s value; the old ``sigma_x``/``sigma_y`` are renamed with a DeprecationWarning
    (``renamed_bandwidths``). ``TypeError`` for an unknown keyword, or for a spec given with keywords."""
    options = rename_bandwidths("direction", dict(options), stacklevel=4)
    unknown = sorted(set(options) - set(KEYWORDS))
    if unknown:
        raise TypeError(
            f"direction: unexpected keyword {', '.join(unknown)} (a spec takes {', '.join(KEYWORDS)})"
        )
    given = {name: value for name, value in options.items() if value is not None}
    if spec is not None:
        if given:
            raise TypeError(f"direction: pass a KernelSpec or the keywords {', '.join(given)}, not both")
        if not isinstance(spec, KernelSpec):
            raise TypeError(f"spec: expected a sparke.core.spec.KernelSpec, got {type(spec).__name__}")
        return spec
    base = base or DEFAULT
    return base.replace(**given) if given else base


DEFAULT = KernelSpec()


class ScoresBatches:
    """Base of sparke's banks: one ``direction``, which turns its spec or keywords into a ``KernelSpec`` once
    and hands it to the bank's ``_spec_direction(x, y, spec, skipped)``."""

    def _base_spec(self) -> KernelSpec | None:
        """The spec that keywords left out fall back to (None: ``KernelSpec()``'s defaults)."""
        return None

    def direction(
        self, x: torch.Tensor, y: torch.Tensor | None = None, spec: KernelSpec | None = None, **options: Any
    ) -> torch.Tensor:
        """Ascent direction (B, d) of the diversity score of bank U batch for x: (B, d), y: (B, e) (L2-normalised
        features for the default bandwidths).

        ``spec``: a ``KernelSpec``, or its fields as keywords (``objective``, ``kernel``, ``sigma_image``,
        ``sigma_prompt``, ``on_nonfinite``; ``sigma_x``/``sigma_y``: deprecated names of the bandwidths).
        ``on_nonfinite="raise"`` raises ``ValueError`` naming the bad input; ``"skip"`` returns zero rows where
        the direction is not finite and adds their number to ``skipped=`` (a 0-d integer tensor, in place) when
        given. See the bank's ``_spec_direction``.
        """
        skipped = options.pop("skipped", None)
        if spec is not None and not options:
            return self._spec_direction(x, y, spec, skipped)  # the guide's path: its spec was checked once
        return self._spec_direction(x, y, as_spec(spec, options, self._base_spec()), skipped)

    def _spec_direction(
        self, x: torch.Tensor, y: torch.Tensor | None, spec: KernelSpec, skipped: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError


def _with_keywords(fn: Any) -> inspect.Signature:
    """``fn``'s signature with ``skipped``, the spec's fields and the old bandwidth names as keyword-only
    parameters (default None) in place of ``**options``: what ``direction`` takes, for a caller that reads it."""
    params = [
        p for p in inspect.signature(fn).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    names = ("skipped", *KEYWORDS, *RENAMED_BANDWIDTHS)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in names]
    return inspect.signature(fn).replace(parameters=[*params, *extra])


ScoresBatches.direction.__signature__ = _with_keywords(ScoresBatches.direction)
