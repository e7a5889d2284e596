"""SPELL: sparse repellency (Kirchhof, Thornton, Béthune, Ablin, Ndiaye, Cuturi, "Shielded Diffusion: Generating
Novel and Diverse Images using Sparse Repellency", ICML 2025, arXiv 2410.06025). The authors released no code;
this follows the paper's description.

At each guided step every sample's predicted clean image x0 (in the model's own space: the VAE latents, or the
pixels of a pixel-space model; flattened, not normalised) is compared with reference points z_k, and moved by

    delta = lambda * sum_k relu(r / |x0 - z_k| - 1) (x0 - z_k)        (``sparke.core.repel.sparse_repellency``)

which is exactly zero unless x0 lies inside a ball of radius r around some z_k; a lone z_k at distance d < r
then puts x0 at distance r + (lambda - 1)(r - d), past the ball's edge, so that the trajectory leaves the ball
for good (overcompensation lambda = 1.6, the paper's). The references are:
- dynamic: the other samples of the batch (their x0 at the same step) and every earlier image (the guide's
  ``bank`` of final latents, which grows after each call and is saved and resumed by ``sparke generate``);
- static: an optional ``shield``, a saved bank file of rows in the same space: a spell run's bank, or one made
  from images by ``SpellGuidance.encode_images(pipe, images)`` (``sparke shield FOLDER --model ...`` on the
  command line: a folder of images, or a run folder's images).
Bank and shield neighbours come from ``sparke.core.repel.nearest_rows`` (an exact scan, or an
``IndexedBank``'s own index), and for an exact shield of ``PROJECTED_FROM`` rows or more from a
``ProjectedSearch`` built once (64-column random projection, exact re-ranking): only the ``neighbors`` nearest
rows of each sample can push, which is exact while fewer than that many lie within r (the paper: "typically
only 1").

The latents move so that the scheduler's own x0 estimate moves by delta: x0 is affine in the latents with a
scalar slope c (1/alpha for VP epsilon prediction, 1 for sigma-space Euler and flow matching), read by
autograd, and the latents move by delta / c.

``scale`` is the radius in per-coordinate RMS units: r = scale * sqrt(d) for d-dimensional x0 (a radius that
means the same at any resolution; SD-class latents have unit per-coordinate spread, so two independent images
are about sqrt(2) = 1.4 apart per coordinate). 0 is exactly the unguided call. Default 0.3: a fifth of the
distance between independent images, the per-coordinate RMS distance below which two unguided images of the
same prompt on the embedded model count as near-duplicates (docs/guide.md); sweep it per model.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from sparke.core import Bank
from sparke.core.auto import bank_file_kind
from sparke.core.indexed import IndexedBank
from sparke.core.repel import ProjectedSearch, nearest_rows, sparse_repellency
from sparke.guidance import Guide, MethodSpec, Schedule, Step
from sparke.guidance.attach import split_batch
from sparke.guidance.guide import check_scale
from sparke.guidance.spaces import x0_estimate
from sparke.guidance.spec import constructor_defaults

__all__ = ["OVERCOMPENSATION", "SPELL_SPEC", "SpellGuidance", "load_shield"]

OVERCOMPENSATION = 1.6  # the paper's lambda
PROJECTED_FROM = 65_536  # an exact shield at least this long is searched through a ProjectedSearch


def load_shield(path: str | os.PathLike) -> Any:
    """A saved bank (exact or indexed file) as a static shield; ``ValueError`` naming the file otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"shield: {path}: no such bank file")
    shield = IndexedBank.load(path) if bank_file_kind(path) == "indexed" else Bank.load(path)
    if len(shield) and torch.allclose(shield.x[:64].float().norm(dim=1), torch.ones(1), atol=1e-3):
        raise ValueError(
            f"shield: {path} holds unit-norm features (the bank of a sparke or none run: directions, not the "
            "images' x0 rows); SPELL's shield needs raw x0 rows in the model's own space: a spell run's bank, "
            "SpellGuidance.encode_images(pipe, images), or `sparke shield RUN_OR_IMAGE_FOLDER --model ...`"
        )
    return shield


class SpellGuidance(Guide):
    """Sparse repellency of the predicted clean images (SPELL), attached per call.

    Args:
        scale: ball radius in per-coordinate RMS units of x0 (r = scale * sqrt(d)); 0 leaves the call unchanged.
        overcompensation: lambda (paper: 1.6).
        shield: a bank object or the path of a saved bank file: static references in the same x0 space.
        neighbors: nearest bank and shield rows read per sample and step.
        batch: also repel from the other samples of the batch (the paper's dynamic reference).
        every, window: which denoising steps are guided (default: every step, as the paper).
        search: how an exact shield is searched: "projected" (``ProjectedSearch``), "exact", or "auto"
            (projected from ``PROJECTED_FROM`` rows on); an ``IndexedBank`` shield uses its own index.
    """

    def __init__(
        self,
        scale: float = 0.3,
        overcompensation: float = OVERCOMPENSATION,
        shield: Any = None,
        neighbors: int = 16,
        batch: bool = True,
        every: int | str = 1,
        window: tuple[float, float] = (0.0, 1.0),
        search: str = "auto",
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        if not (isinstance(overcompensation, (int, float)) and overcompensation > 0):
            raise ValueError(f"overcompensation: must be a number > 0, got {overcompensation!r}")
        if isinstance(neighbors, bool) or not (isinstance(neighbors, int) and neighbors >= 1):
            raise ValueError(f"neighbors: must be an integer >= 1, got {neighbors!r}")
        self.overcompensation = float(overcompensation)
        self.neighbors = neighbors
        if search not in ("auto", "exact", "projected"):
            raise ValueError(f"search: must be 'auto', 'exact' or 'projected', got {search!r}")
        self.search = search
        self.repel_batch = bool(batch)
        self.schedule = Schedule(every, tuple(window))
        self.shield = load_shield(shield) if isinstance(shield, (str, os.PathLike)) else shield
        self._shield_search: ProjectedSearch | None = None
        self.bank: Any = Bank(metadata={"kind": "spell", "space": "x0-raw"})
        self.pushed = 0  # (sample, step) pairs moved in the last call

    def __repr__(self) -> str:
        shield = 0 if self.shield is None else len(self.shield)
        return (
            f"SpellGuidance(scale={self.scale}, overcompensation={self.overcompensation}, "
            f"shield={shield} rows, bank={len(self.bank)} rows)"
        )

    @staticmethod
    @torch.no_grad()
    def encode_images(pipe: Any, images: Any, batch_size: int = 8, metadata: dict | None = None) -> Bank:
        """A shield: images as the model's x0 rows (N, d), in a bank to save (``bank.save(path)``) or pass as
        ``shield``. ``images``: (N, 3, H, W) float in [-1, 1] or uint8, or a sequence of PIL images or
        (H, W, 3) uint8 arrays, at the size the pipeline generates (their rows must have the x0 dimension of
        its calls). Latent pipelines encode them with ``pipe.vae`` (the posterior mean, scaled and packed as
        the pipeline's latents); pixel-space pipelines (``vae=None``) take the pixels as they are."""
        from sparke.guidance.spaces import encode_to_latents

        pixels = _as_image_tensor(images)
        bank = Bank(metadata={"kind": "spell-shield", "space": "x0-raw", **(metadata or {})})
        device = getattr(pipe, "device", "cpu")
        for start in range(0, pixels.shape[0], batch_size):
            chunk = pixels[start : start + batch_size].to(device)
            bank.add(encode_to_latents(pipe, chunk).flatten(1).float().cpu())
        return bank

    def radius(self, dim: int) -> float:
        """The ball radius r for d-dimensional x0 rows."""
        return self.scale * math.sqrt(dim)

    def begin(self, pipe: Any, kwargs: dict[str, Any]) -> None:
        self.pushed = 0

    def push(self, x0: torch.Tensor) -> torch.Tensor:
        """lambda * the sparse repellency (B, d) of rows x0: (B, d) from the batch, the bank and the shield."""
        b, d = x0.shape
        refs = []
        if self.repel_batch and b > 1:
            others = ~torch.eye(b, dtype=torch.bool, device=x0.device)
            refs.append(x0.unsqueeze(0).expand(b, -1, -1)[others].view(b, b - 1, d))
        for bank in (self.bank, self.shield):
            if bank is not None and len(bank):
                if bank.x.shape[1] != d:
                    raise ValueError(
                        f"spell: a bank or shield of rows of dim {bank.x.shape[1]}, but this pipeline's x0 "
                        f"has dim {d}: use one made with the same model and resolution"
                    )
                refs.append(self._nearest(bank, x0))
        if not refs:
            return torch.zeros_like(x0)
        return self.overcompensation * sparse_repellency(x0, torch.cat(refs, 1), self.radius(d))

    def _nearest(self, bank: Any, x0: torch.Tensor) -> torch.Tensor:
        """The ``neighbors`` nearest rows (B, k, d) of ``bank`` to each x0 row: a long exact shield through a
        ``ProjectedSearch`` built once (the shield is static), anything else through ``nearest_rows``."""
        projected = self.search == "projected" or (self.search == "auto" and len(bank) >= PROJECTED_FROM)
        if bank is self.shield and projected and not hasattr(bank, "_search_vectors"):
            if self._shield_search is None or len(self._shield_search) != len(bank):
                self._shield_search = ProjectedSearch(bank.x)
            return self._shield_search.search(x0, self.neighbors)[1]
        return nearest_rows(bank, x0, self.neighbors)[1]

    def on_step(self, step: Step) -> torch.Tensor | None:
        if not self.schedule.due(step):
            return None
        latents = step.latents
        b, dup = split_batch(latents, self.batch)
        with torch.enable_grad():
            z = latents[:b].detach().float().requires_grad_(True)
            x0 = x0_estimate(step.scheduler, z, step.model_output[:b].float(), step.timestep)
            (slope,) = torch.autograd.grad(x0.flatten()[0], z)
        c = float(slope.flatten()[0])  # d x0 / d z: one scalar for every parametrisation
        delta = self.push(x0.detach().flatten(1))
        moved = delta.abs().amax(1) > 0
        if not bool(moved.any()) or c == 0:
            return None
        self.pushed += int(moved.sum())
        self.stats.guided += 1
        new = (z.detach().flatten(1) + delta / c).view_as(z).to(latents.dtype)
        return torch.cat([new, new]) if dup else new

    def end(self, pipe: Any, run: Any) -> None:
        final = run.final_latents
        if final is None:
            return
        b, _ = split_batch(final, self.batch)
        self.bank.add(final[:b].detach().flatten(1).float().to(self.bank.device))


def _as_image_tensor(images: Any) -> torch.Tensor:
    """Images as (N, 3, H, W) float32 in [-1, 1]: from such a tensor, a uint8 one, or PIL images / arrays."""
    import numpy as np

    if isinstance(images, torch.Tensor):
        x = images
    else:
        arrays = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
        if not arrays:
            raise ValueError("images: none given")
        if len({a.shape for a in arrays}) > 1:
            raise ValueError(
                f"images: of different sizes {sorted({a.shape[:2] for a in arrays})}; give one size"
            )
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images: expected (N, 3, H, W), got {tuple(x.shape)}")
    return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()


def _build(scale: float, settings: dict[str, Any]) -> SpellGuidance:
    return SpellGuidance(scale, **{**settings, "window": tuple(settings["window"])})


SPELL_SPEC = MethodSpec(
    name="spell",
    doc="sparse repellency: push a predicted clean image out of any ball of radius r = scale * sqrt(d) around "
    "the batch, earlier images and an optional shield",
    paper="Kirchhof et al., Shielded Diffusion (SPELL), ICML 2025, arXiv 2410.06025",
    default_scale=constructor_defaults(SpellGuidance, ["scale"])["scale"],
    defaults=constructor_defaults(
        SpellGuidance, ["overcompensation", "shield", "neighbors", "batch", "every", "window", "search"]
    ),
    build=_build,
    help={
        "overcompensation": "lambda: how far past the ball's edge a sample is pushed (paper: 1.6)",
        "shield": "a saved bank file of rows in the same x0 space to stay away from (--shield FILE)",
        "neighbors": "nearest bank and shield rows that can push each sample per step",
        "batch": "also repel from the other samples of the batch",
        "every": "repel at denoising steps 0, every, 2*every, ...",
        "window": "(start, end) fractions of the trajectory where the repellency acts",
        "search": f"shield search: projected, exact, or auto (projected from {PROJECTED_FROM} rows)",
    },
)
