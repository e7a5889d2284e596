"""How a guided step moves the latents: ``Update``, its research options, and the step's pure functions.

``SPARKE(update=Update(...))`` takes them; the defaults (``sparke.guidance.options``) are what ``SPARKE()`` uses.
Each option is checked once, here. ``Update.paper()`` is the authors' step: the latents as they are
(``centre=False``) and the plain relative gradient step (``motion=0``).

The step of a sample with latents z (flattened (d,)) and gradient g of its features' inner product with the
score's ascent direction: ``step="relative"`` moves z by ``scale * |z| * g / |g|``, ``"raw"`` by ``scale * g``.
With ``motion`` the gradient is first replaced by the part of it that moves what the clean estimate shows
(``sparke.guidance.filters``), and with ``warp`` that move is made for real (resampling) instead of to first
order.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from sparke.core.defaults import SIGMA_IMAGE

from .options import DEFAULTS, PAPER

__all__ = [
    "Update",
    "cfg_direction",
    "crowding_factor",
    "median_distance",
    "relative_factor",
    "relative_step",
    "without_component",
]


def _number(value: Any, name: str, what: str) -> float:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value < math.inf):
        raise ValueError(f"{name}: must be {what}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Update:
    """How a guided step moves the latents (see the module docstring and docs/guide.md's options table).

    centre: in the latent and x0 spaces, compare the latents minus each channel's spatial mean (True), or that
        fraction of it; the step then moves layout, not global colour.
    motion: window width (latent pixels) of the displacement field the step is fitted by; "global": one shift
        and one zoom per image; 0: the plain gradient step.
    warp: with motion, move the clean estimate by the field for real; "auto": wherever motion is on and neither
        smooth nor orthogonal is set.
    step: "relative" (``scale * |z| * g / |g|``) or "raw" (``scale * g``).
    kernel: the score's kernel on the unit-norm features, "gaussian" or "cosine".
    step_schedule: "constant", or "noise": each step times the sample's noise share.
    smooth: Gaussian blur of the gradient, in latent pixels (0: none).
    gate: guide a sample only when a similar-prompt bank row or batch sample lies within this distance (0: off).
    orthogonal: drop each step's component along the step's CFG direction (cond - uncond).
    crowding: per-sample step scale m / (m + crowding), m the kernel mass of nearby bank rows (0: off).
    """

    centre: bool | float = DEFAULTS["centre"]
    motion: float | str = DEFAULTS["motion"]
    warp: bool | str = DEFAULTS["warp"]
    step: str = DEFAULTS["step"]
    kernel: str = DEFAULTS["kernel"]
    step_schedule: str = DEFAULTS["step_schedule"]
    smooth: float = DEFAULTS["smooth"]
    gate: float = DEFAULTS["gate"]
    orthogonal: bool = DEFAULTS["orthogonal"]
    crowding: float = DEFAULTS["crowding"]

    def __post_init__(self) -> None:
        centre = self.centre
        if not (isinstance(centre, bool) or (isinstance(centre, (int, float)) and 0 <= centre <= 1)):
            raise ValueError(f"centre: must be True, False or a fraction in [0, 1], got {centre!r}")
        if self.motion != "global":
            what = "a window width >= 0 (latent pixels; 0: off) or 'global'"
            object.__setattr__(self, "motion", _number(self.motion, "motion", what))
        if not (isinstance(self.warp, bool) or self.warp == "auto"):
            raise ValueError(f"warp: must be True, False or 'auto', got {self.warp!r}")
        if self.step not in ("relative", "raw"):
            raise ValueError(f"step: must be 'relative' or 'raw', got {self.step!r}")
        if self.kernel not in ("gaussian", "cosine"):
            raise ValueError(f"kernel: must be 'gaussian' or 'cosine', got {self.kernel!r}")
        if self.step_schedule not in ("constant", "noise"):
            raise ValueError(f"step_schedule: must be 'constant' or 'noise', got {self.step_schedule!r}")
        for name, what in (
            ("smooth", "a blur width >= 0 (latent pixels)"),
            ("gate", "a feature distance >= 0"),
        ):
            object.__setattr__(self, name, _number(getattr(self, name), name, what + " (0: off)"))
        object.__setattr__(
            self, "crowding", _number(self.crowding, "crowding", "a kernel mass >= 0 (0: off)")
        )
        if not isinstance(self.orthogonal, bool):
            raise ValueError(f"orthogonal: must be True or False, got {self.orthogonal!r}")
        if self.warp is True and (not self.motion or self.smooth > 0 or self.orthogonal):
            raise ValueError(
                "warp: moves by the fitted displacement of `motion`: needs motion > 0 or 'global', and neither "
                f"smooth nor orthogonal (got motion={self.motion!r}, smooth={self.smooth!r}, "
                f"orthogonal={self.orthogonal!r})"
            )

    @classmethod
    def paper(cls, **changes: Any) -> Update:
        """The authors' step: uncentred latents, the plain relative gradient step."""
        return cls(**{**{k: v for k, v in PAPER.items() if k != "space"}, **changes})

    @property
    def warps(self) -> bool:
        """Whether the step is made for real by resampling (``warp``, with "auto" resolved)."""
        if self.warp == "auto":
            return bool(self.motion) and self.smooth == 0 and not self.orthogonal
        return bool(self.warp)

    def replace(self, **changes: Any) -> Update:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The fields as flat settings (``--set`` names and values)."""
        return dataclasses.asdict(self)


FIELDS = tuple(field.name for field in dataclasses.fields(Update))


def relative_factor(g: torch.Tensor, z: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """(B, 1) factors f with f * g the relative step ``scale * |z| * g / |g|`` of rows g, z (B, d); 0 where g is
    zero (a single sample with an empty bank has no direction: no move, not 0/0)."""
    g_norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
    z_norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    return torch.where(g_norm > 0, scale * z_norm / g_norm.clamp_min(1e-30), torch.zeros_like(g_norm))


def relative_step(g: torch.Tensor, z: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """The relative step ``scale * |z| * g / |g|`` (B, d) of rows g, z (B, d); 0 where g is zero."""
    g_norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
    z_norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    return torch.where(g_norm > 0, scale * z_norm * g / g_norm.clamp_min(1e-30), torch.zeros_like(g))


def crowding_factor(mass: torch.Tensor, crowding: float) -> torch.Tensor:
    """The per-sample step scale m / (m + crowding) of kernel masses m >= 0: 0 at m = 0, 1/2 at m = crowding,
    towards 1 for a crowded neighbourhood (strictly increasing in m)."""
    return mass / (mass + crowding)


def cfg_direction(denoised: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """(b, D) cond - uncond of a denoiser output over a CFG batch of 2b rows, flattened in ``like``'s layout
    (b, ...); None when the output is not such a batch (no CFG, or a layout this cannot read).

    Only the line matters (the step loses its component along it), so the halves' order (DiT puts the
    conditional half first) does not. A learned-variance output (PixArt, DiT: 2C channels) gives its first C.
    """
    b = like.shape[0]
    if denoised is None or denoised.ndim != like.ndim or denoised.shape[0] != 2 * b:
        return None
    out = denoised
    if out.ndim >= 3 and out.shape[1] == 2 * like.shape[1] and out.shape[2:] == like.shape[2:]:
        out = out[:, : like.shape[1]]
    if out.shape[1:] != like.shape[1:]:
        return None
    first, second = out.float().chunk(2)
    return (second - first).flatten(1).to(like.device)


def without_component(g: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Rows of g (B, D) minus their projection on the rows of c (B, D); a zero row of c (or c None) removes
    nothing."""
    if c is None:
        return g
    cc = (c * c).sum(1, keepdim=True)
    coef = torch.where(cc > 0, (g * c).sum(1, keepdim=True) / cc.clamp_min(1e-30), torch.zeros_like(cc))
    return g - coef * c


def median_distance(x: torch.Tensor, bank: Any, max_rows: int = 4096) -> float:
    """The median Euclidean distance from the rows of x (B, d) to the bank's rows and to each other.

    The bandwidth of ``sigma_image="median"``; at most ``max_rows`` evenly spaced bank rows are read.
    Falls back to the fixed default when there is no pair (one sample, empty bank).
    """
    parts = []
    n = len(bank)
    if n:
        rows = bank.x
        if n > max_rows:
            rows = rows[torch.linspace(0, n - 1, max_rows, device=rows.device).long()]
        parts.append(torch.cdist(x, rows.to(x.device, x.dtype)).flatten())
    if len(x) > 1:
        i, j = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
        parts.append((x[i] - x[j]).norm(dim=1))
    if not parts:
        return SIGMA_IMAGE
    return max(float(torch.cat(parts).median()), 1e-3)
