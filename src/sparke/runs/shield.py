"""SPELL shields from images (``sparke shield``): a folder of images, a run folder's images, or a bank that
already holds the model's x0 rows, turned into a bank file for ``--method spell --shield FILE``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import RunError
from .folder import MANIFEST_FILE

__all__ = ["make_shield", "shield_images"]


def shield_images(source: str | os.PathLike) -> tuple[Any, str]:
    """The images a shield is made of, and a note on where they came from: a run folder's (through its
    manifest), an image folder's (its metadata's files, else every image in and below it), or, for a bank file
    of unit-norm features (a sparke or none run's ``bank.safetensors``), the images of the run folder it
    sits in. ``RunError`` naming what exists otherwise."""
    from .evaluation import load_run
    from .imagefolder import load_reference_folder

    path = Path(source)
    if path.is_file():
        run = path.parent
        if not (run / MANIFEST_FILE).is_file():
            raise RunError(
                f"{path}: a bank file outside a run folder; a shield needs the model's x0 rows: give a spell "
                "run's bank to --shield as it is, or a folder of images here"
            )
        folder = load_run(run)
        return folder, (
            f"{path.name} holds unit-norm directions, not x0 rows: the shield is made from the "
            f"{len(folder.records):,} images of {run}"
        )
    if not path.is_dir():
        raise RunError(f"{path}: no such folder or bank file")
    if (path / MANIFEST_FILE).is_file():
        folder = load_run(path)
        return folder, f"from the {len(folder.records):,} images of run {path}"
    folder = load_reference_folder(path)
    folder.verify()
    return folder, f"from the {len(folder.records):,} images of {path}"


def make_shield(
    folder: Any,
    pipe: Any,
    size: tuple[int, int] | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """A shield bank of ``folder``'s images (``ImageRecords``) as ``pipe``'s x0 rows
    (``SpellGuidance.encode_images``), streamed ``batch_size`` at a time. ``size``: (height, width) the images
    are resized to (shorter side, bicubic, antialiased; centre crop), None to keep their own (one size)."""
    from sparke.core import Bank
    from sparke.methods.spell import SpellGuidance

    from .imagefolder import to_unit_range

    bank = Bank(metadata={"kind": "spell-shield", "space": "x0-raw", **(metadata or {})})
    shape = None
    done = 0
    for rows, images in folder.iter_batches(batch_size):
        pixels = to_unit_range(images)
        if size is not None:
            pixels = fit(pixels, size)
        if shape is None:
            shape = tuple(pixels.shape[-2:])
        elif tuple(pixels.shape[-2:]) != shape:
            raise RunError(
                f"{folder.path / folder.records[rows[0]]['file']}: {pixels.shape[-1]}x{pixels.shape[-2]}, the "
                f"others {shape[1]}x{shape[0]}; give --height and --width to bring them to one size"
            )
        bank.add(SpellGuidance.encode_images(pipe, pixels, batch_size).x)
        done += len(rows)
        if progress is not None:
            progress(done, len(folder.records))
    bank.metadata.update(height=int(shape[0]), width=int(shape[1]), n_images=done)  # type: ignore[index]
    return bank


def fit(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3, height, width): scaled to cover (bicubic, antialiased), centre crop."""
    h, w = x.shape[-2:]
    height, width = size
    if (h, w) == (height, width):
        return x
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[..., top : top + height, left : left + width].clamp(-1, 1)
