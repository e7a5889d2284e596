"""A small CNN image encoder for evaluating diversity in the shapes world.

No pretrained CLIP/DINOv2 is available offline, so this stands in for them: a CNN trained
on rendered scenes to predict every attribute (shape, colour, size, background, count, grid
row/column, and the object's centre and radius). Its 128-d penultimate layer, L2-normalised,
is the feature space: distances there reflect position, size, background, shape and colour.
The spatial map is flattened (no global pooling) so that position survives.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparke.embedded import world as W

FEATURE_DIM = 128
WEIGHTS = Path(__file__).parent / "weights" / "encoder.safetensors"

# attribute heads: name -> number of classes (0 = regression of 3 values: cx, cy, r, scaled to ~[0, 1])
HEADS: dict[str, int] = {
    "shape": len(W.SHAPES),
    "colour": len(W.COLOURS),
    "size": len(W.SIZE_NAMES),
    "background": len(W.BACKGROUND_NAMES),
    "count": 2,
    "row": 3,
    "col": 3,
    "geom": 0,
}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


class ShapesEncoder(nn.Module):
    """images (N, 3, 32, 32) in [-1, 1] -> L2-normalised features (N, 128); differentiable."""

    def __init__(self, dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(3, 32),
            nn.AvgPool2d(2),  # 16
            _block(32, 64),
            nn.AvgPool2d(2),  # 8
            _block(64, 64),
            nn.AvgPool2d(2),  # 4
        )
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 256), nn.SiLU(), nn.Linear(256, dim))
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n if n else 3) for k, n in HEADS.items()})

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Un-normalised penultimate features (N, dim)."""
        return self.proj(self.body(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.embed(images), dim=-1)

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs: logits per attribute, (N, 3) geometry for ``geom``."""
        h = self.embed(images)
        return {k: head(h) for k, head in self.heads.items()}


def load_encoder(device: str | torch.device = "cpu", path: str | Path | None = None) -> ShapesEncoder:
    """The shipped encoder in eval mode (parameters frozen); call it on (N, 3, 32, 32) images in [-1, 1]."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: train it with `python -m sparke.embedded.train_encoder`")
    enc = ShapesEncoder()
    enc.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    enc.to(device).eval()
    enc.requires_grad_(False)
    return enc
