"""Image folders from any tool, read as the Hugging Face ``imagefolder`` dataset reads them.

A folder holds images and ``metadata.jsonl`` (one JSON object a line) or ``metadata.csv``, with a
``file_name`` column (the image's path inside the folder) and a prompt column (``prompt`` unless told
otherwise); an optional ``cluster`` column groups prompts as in run folders. ``FolderImages`` offers what
``runs.evaluation.RunImages`` offers (``path``, ``config``, ``records``, ``load_images``), so that
``evaluate_run`` takes either; run folders made by ``sparke generate`` are read by ``load_run``. A reference
folder needs no prompts: without metadata, every image in it (and below it) counts.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunError
from .folder import MANIFEST_FILE

__all__ = [
    "METADATA_FILES",
    "FolderImages",
    "ImageRecords",
    "image_groups",
    "read_image_folder",
    "load_reference_folder",
    "pixels_rgb8",
    "to_unit_range",
]

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ImageRecords:
    """Images listed by ``records`` (``{"file": path inside the folder, ...}``) in folder ``path``, with the
    folder's ``config`` ({} when it has none): what ``evaluate_run`` reads, from a run or a plain folder."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.path.name

    def _unreadable_hint(self) -> str:
        """What to add to the message about an unreadable image (a fix the folder's kind offers)."""
        return ""

    @contextlib.contextmanager
    def _opened(self, file: Path) -> Iterator[Any]:
        """The PIL image of ``file``; ``RunError`` naming the file when it cannot be decoded, or is larger than
        PIL's decompression-bomb limit (also when that shows while the block reads it)."""
        from PIL import Image

        try:
            with Image.open(file) as im:
                yield im
        except Image.DecompressionBombError as error:
            raise RunError(f"{file}: {_first_line(error)}{self._unreadable_hint()}") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise RunError(
                f"{file}: unreadable image ({_first_line(error)}){self._unreadable_hint()}"
            ) from None

    def read_image(self, record: dict[str, Any]) -> np.ndarray:
        """One image as (H, W, 3) uint8 (see ``pixels_rgb8``); ``RunError`` naming the file when it cannot be
        decoded, or is larger than PIL's decompression-bomb limit."""
        with self._opened(self.path / record["file"]) as im:
            return pixels_rgb8(im)

    def verify(self) -> None:
        """Open every image's header (format, size; not its pixels), so that a file that is no image, or one
        past the decompression-bomb limit, is refused before anything is computed. A file damaged further in
        is named when its pixels are read (the feature cache keeps what was done before it)."""
        for record in self.records:
            with self._opened(self.path / record["file"]) as im:
                im.size  # noqa: B018 (the header is read by open; size makes the intent plain)

    def iter_batches(
        self, batch_size: int, rows: Sequence[int] | None = None, workers: int | None = None
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """The images of ``rows`` (default: all) in order, ``batch_size`` at a time: (record indices, images
        (b, 3, H, W) uint8), one item per run of same-size images. Threads decode the next batch while the
        caller works on this one, so at most two batches of decoded images are held at once."""
        rows = list(range(len(self.records))) if rows is None else list(rows)
        chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="sparke-decode") as pool:
            pending: deque[tuple[list[int], list[Future]]] = deque()
            try:
                for chunk in chunks:
                    pending.append((chunk, [pool.submit(self.read_image, self.records[i]) for i in chunk]))
                    if len(pending) > 1:
                        yield from _same_size_runs(*pending.popleft())
                while pending:
                    yield from _same_size_runs(*pending.popleft())
            finally:
                for _, futures in pending:
                    for future in futures:
                        future.cancel()

    def load_groups(self) -> list[tuple[list[int], torch.Tensor]]:
        """The images grouped by size: (record indices, images (n, 3, H, W) float in [-1, 1]) per size. Holds
        every image in memory: for a few images (tests, the checker); ``iter_batches`` streams."""
        by_shape: dict[tuple[int, ...], list[tuple[list[int], torch.Tensor]]] = {}
        for rows, images in self.iter_batches(256):
            by_shape.setdefault(tuple(images.shape), []).append((rows, images))
        groups = []
        for parts in by_shape.values():
            rows = [i for part_rows, _ in parts for i in part_rows]
            groups.append((rows, to_unit_range(torch.cat([images for _, images in parts]))))
        return groups

    def load_images(self) -> torch.Tensor:
        """All images (N, 3, H, W) float in [-1, 1]; ``RunError`` when their sizes differ."""
        groups = self.load_groups()
        if len(groups) > 1:
            sizes = sorted({tuple(images.shape[-2:]) for _, images in groups})
            raise RunError(f"{self.path}: images of different sizes {sizes}")
        return groups[0][1]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1] (float input is returned as it is)."""
    if images.dtype != torch.uint8:
        return images
    return images.float().div_(127.5).sub_(1.0)  # in place: one float copy of the batch, not three


def _same_size_runs(rows: list[int], futures: list[Future]) -> Iterator[tuple[list[int], torch.Tensor]]:
    """A decoded batch as runs of consecutive same-size images: (record indices, (b, 3, H, W) uint8, a view
    of channels-last memory). Each image is copied into the batch and dropped at once, so that a batch is
    held once, not as a list of images plus their stack."""
    start = 0
    while start < len(futures):
        first = futures[start].result()
        stop = start + 1
        while stop < len(futures) and futures[stop].result().shape == first.shape:
            stop += 1
        batch = np.empty((stop - start, *first.shape), np.uint8)
        for k in range(start, stop):
            batch[k - start] = futures[k].result()
            futures[k] = _DONE  # the decoded image is freed once copied
        yield rows[start:stop], torch.from_numpy(batch).permute(0, 3, 1, 2)
        start = stop


_DONE: Future = Future()


def pixels_rgb8(im: Any) -> np.ndarray:
    """A PIL image as (H, W, 3) uint8 RGB. 16-bit and 32-bit greyscale (modes I;16, I, F) are scaled from their
    full range (65535, or 1.0 for float) instead of clipped to 255; images with an alpha channel (RGBA, LA,
    PA, or a palette with a transparent colour) are composited over white, as a viewer shows them."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or grey.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(grey / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


@dataclass
class FolderImages(ImageRecords):
    """A plain image folder: records ``{"file", "prompt"[, "cluster"]}`` in metadata order, config {}."""


def image_groups(run: Any) -> list[tuple[list[int], torch.Tensor]]:
    """A ``FolderImages``' or a ``RunImages``' images by size, all in memory (see ``ImageRecords.load_groups``)."""
    return run.load_groups()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _metadata_rows(file: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, rows) of metadata.jsonl or metadata.csv; ``RunError`` naming the file and line."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise RunError(f"{file}: unreadable ({_first_line(error)})") from None
    if file.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        rows = list(reader)
        return list(reader.fieldnames or []), rows
    columns: dict[str, None] = {}
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise RunError(f"{file}: line {number} is not JSON ({_first_line(error)})") from None
        if not isinstance(row, dict):
            raise RunError(f"{file}: line {number} is not a JSON object")
        columns.update(dict.fromkeys(row))
        rows.append(row)
    return list(columns), rows


def _metadata_file(folder: Path) -> Path | None:
    found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if len(found) > 1:
        raise RunError(f"{folder}: has both {METADATA_FILES[0]} and {METADATA_FILES[1]}; keep one")
    return found[0] if found else None


def _records(folder: Path, file: Path, prompt_column: str | None) -> list[dict[str, Any]]:
    """Records of the metadata rows; every named image must exist inside the folder."""
    columns, rows = _metadata_rows(file)
    needed = ["file_name"] + ([prompt_column] if prompt_column else [])
    for column in needed:
        if column not in columns:
            hint = " (choose the prompt column with --prompt-column)" if column == prompt_column else ""
            raise RunError(f"{file}: no {column!r} column; it has {columns}{hint}")
    if not rows:
        raise RunError(f"{file}: no rows; the folder has nothing to evaluate")
    records = []
    line = 1 if file.suffix == ".csv" else 0  # the CSV header is line 1
    for number, row in enumerate(rows, start=line + 1):
        name = str(row.get("file_name") or "")
        image = (folder / name).resolve()
        if not name or not image.is_relative_to(folder.resolve()) or not image.is_file():
            what = "no file_name" if not name else f"names {name!r}, which is not an image in {folder}"
            raise RunError(f"{file}: row {number} {what}")
        record: dict[str, Any] = {"file": name}
        if prompt_column:
            record["prompt"] = "" if row.get(prompt_column) is None else str(row[prompt_column])
        if row.get("cluster") not in (None, ""):
            record["cluster"] = str(row["cluster"])
        records.append(record)
    return records


def read_image_folder(path: str | os.PathLike, prompt_column: str = "prompt") -> FolderImages:
    """A plain image folder with imagefolder metadata; ``RunError`` naming the file and the problem."""
    folder = Path(path)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such folder")
    file = _metadata_file(folder)
    if file is None:
        empty = "" if any(_images_below(folder)) else "it holds no images and "
        raise RunError(
            f"{folder}: {empty}has no {' or '.join(METADATA_FILES)} (columns file_name and {prompt_column}) "
            f"nor a {MANIFEST_FILE} of `sparke generate`"
        )
    return FolderImages(folder, {}, _records(folder, file, prompt_column))


def _images_below(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def load_reference_folder(path: str | os.PathLike) -> FolderImages:
    """Reference images: the files its metadata names, else every image in and below it; prompts unused."""
    folder = Path(path)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such folder")
    file = None if (folder / MANIFEST_FILE).is_file() else _metadata_file(folder)
    if file is not None:
        return FolderImages(folder, {}, _records(folder, file, None))
    names = _images_below(folder)
    if not names:
        raise RunError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return FolderImages(folder, {}, [{"file": name} for name in names])
