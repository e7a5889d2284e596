"""Reference-based metrics of a set of images: PRDC (k = 5) and the Fréchet distance, in the image-feature
space of ``sparke evaluate`` (``--features``), against a reference folder of images or a saved features file
(``features-*.safetensors``, written by ``sparke evaluate`` with the same encoder)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import RunError
from .feature_cache import image_features, read_features_file
from .imagefolder import FolderImages, load_reference_folder

__all__ = ["NEAREST_K", "Reference", "check_prdc_sizes", "open_reference", "reference_metrics"]

NEAREST_K = 5


@dataclass
class Reference:
    """A reference set: a folder of images (checked, not yet encoded) or a features file."""

    source: Path
    folder: FolderImages | None
    n_images: int
    rows: torch.Tensor | None = None  # the features once read or computed (several folders share them)

    def describe(self) -> dict[str, Any]:
        """What metrics.json says of the reference (an absolute path: ``sparke report`` reopens it from
        anywhere when the run changes)."""
        return {"source": str(self.source.absolute()), "n_images": self.n_images, "nearest_k": NEAREST_K}

    def features(
        self, extractor: Any, cache_dir: str | os.PathLike | None, progress: Any = None
    ) -> torch.Tensor:
        """Unit feature rows (n, d), from the file or the folder's images (through the feature cache)."""
        if self.rows is None:
            self.rows = image_features(self.folder, extractor, cache_dir, progress)[0]
        return self.rows


def open_reference(spec: str | os.PathLike, encoder: str) -> Reference:
    """Check a ``--reference``: a features file of ``encoder`` (``--features``), or a folder whose images all
    decode (encoded when used)."""
    path = Path(spec)
    if path.is_file():
        rows = read_features_file(path, str(encoder))
        return Reference(path, None, rows.shape[0], rows)
    folder = load_reference_folder(path)
    folder.verify()
    return Reference(path, folder, len(folder.records))


def check_prdc_sizes(n_images: int, reference: Reference, where: str | os.PathLike) -> None:
    """``RunError`` unless both sets have more than ``NEAREST_K`` images (a k-th nearest neighbour each)."""
    for count, name in ((n_images, str(where)), (reference.n_images, f"--reference {reference.source}")):
        if count <= NEAREST_K:
            raise RunError(f"{name}: PRDC with k={NEAREST_K} needs more than {NEAREST_K} images, got {count}")


def reference_metrics(x: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """PRDC (k = ``NEAREST_K``) and Fréchet distance of the rows x: (n, d) against reference: (m, d)."""
    from sparke.metrics import frechet_distance, prdc

    if reference.shape[1] != x.shape[1]:
        raise RunError(f"--reference: features have {reference.shape[1]} columns, the images' {x.shape[1]}")
    return {**prdc(reference, x, nearest_k=NEAREST_K), "frechet": frechet_distance(reference, x)}
