"""Image features computed once per (folder, encoder, image hashes) and kept as safetensors.

``sparke evaluate`` writes ``features-<encoder>-<key>.safetensors`` beside the metrics file: the tensor
``features`` (n, d) float32, unit rows in the folder's record order, and string metadata (``format``
``sparke.features``, ``encoder``, ``key``, ``folder``, ``height``/``width`` of the first image). The key hashes
the encoder (its name, and for a local model folder the names, sizes and times of its files) and every
image's file name and sha256, so a changed image or model makes a new file (which replaces the folder's
older one for that encoder); other kernels, bandwidths or metrics read the same one back. Such a file is also what ``--reference`` accepts in place of a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sparke.core.files import atomic_write

from .config import RunError
from .folder import file_sha256

__all__ = ["FEATURES_FORMAT", "image_features", "read_features_file"]

FEATURES_FORMAT = "sparke.features"
PARTIAL_FORMAT = "sparke.features.partial"  # the rows done before an interrupt (``done`` of them, in order)
PARTIAL_SUFFIX = ".partial.safetensors"
CHECKPOINT_ROWS = 4096  # rows between two saves of the partial file (a crash loses at most these)


def _encoder_fingerprint(name: str) -> list[list[str | int]]:
    folder = Path(name)
    if not folder.is_dir():
        return [[name]]
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [[name]] + [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cache_key(run: Any, encoder: str) -> str:
    """sha256 of the encoder's fingerprint and of every image's name and content."""
    images = [[r["file"], file_sha256(run.path / r["file"])] for r in run.records]
    blob = json.dumps({"encoder": _encoder_fingerprint(encoder), "images": images}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_file(directory: Path, encoder: str, key: str) -> Path:
    slug = (
        re.sub(r"[^A-Za-z0-9._-]+", "-", Path(encoder.rstrip("/\\")).name or encoder).strip("-.") or "model"
    )
    return directory / f"features-{slug[:40]}-{key[:16]}.safetensors"


def read_features_file(file: Path, encoder: str | None = None, key: str | None = None) -> torch.Tensor:
    """The ``features`` rows of a file written here; ``RunError`` naming the file when it does not fit."""
    return _read(file, encoder, key)[0]


def _read(file: Path, encoder: str | None, key: str | None) -> tuple[torch.Tensor, dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FEATURES_FORMAT or "features" not in handle.keys():  # noqa: SIM118
                raise RunError(f"{file}: not a features file written by `sparke evaluate`")
            rows = handle.get_tensor("features")
    except (OSError, SafetensorError) as error:
        raise RunError(f"{file}: unreadable features file ({error})") from None
    if encoder is not None and meta.get("encoder") != encoder:
        raise RunError(f"{file}: features of encoder {meta.get('encoder')!r}, not of --features {encoder}")
    if key is not None and meta.get("key") != key:
        raise RunError(f"{file}: made from other images")
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise RunError(f"{file}: features of shape {tuple(rows.shape)}, expected (rows, columns)")
    return rows.float(), meta


def image_features(
    run: Any,
    extractor: Any,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Unit feature rows (n, d) of a ``RunImages``' or ``FolderImages``' images (by ``extractor``, a
    ``runs.evaluation.FeatureExtractor``) in record order and the first image's (height, width); read back
    from, or else written to, the cache file in ``cache_dir`` when given.

    The images are streamed ``extractor.batch_size`` at a time (decoded by threads while the model runs), so
    memory is set by the batch, not the folder. With ``cache_dir``, the rows done so far are kept in
    ``features-...partial.safetensors`` every ``CHECKPOINT_ROWS`` images and when the work stops on an error
    or an interrupt; the next call resumes after them. ``progress(done, total)`` is called after each batch.
    """
    key = cache_key(run, extractor.name) if cache_dir is not None else ""
    file = cache_file(Path(cache_dir), extractor.name, key) if cache_dir is not None else None
    if file is not None and file.is_file():
        try:
            rows, meta = _read(file, extractor.name, key)
            if rows.shape[0] == len(run.records):
                if progress is not None:
                    progress(len(run.records), len(run.records))
                return rows, (int(meta.get("height", 0)), int(meta.get("width", 0)))
        except (RunError, ValueError):
            pass  # damaged or foreign: computed again and replaced
    partial = None if file is None else file.with_name(file.name.replace(".safetensors", PARTIAL_SUFFIX))
    features, size, done = _resume(partial, extractor.name, key, len(run.records))
    total = len(run.records)
    if progress is not None:
        progress(done, total)
    saved = done
    try:
        for rows, images in run.iter_batches(extractor.batch_size, range(done, total)):
            batch = extractor(images)
            if features is None:
                features = torch.empty(total, batch.shape[1])
                size = (int(images.shape[-2]), int(images.shape[-1]))
            features[rows] = batch
            done = rows[-1] + 1
            if progress is not None:
                progress(done, total)
            if partial is not None and done - saved >= CHECKPOINT_ROWS and done < total:
                _write(partial, features[:done], _meta(run, extractor, key, size, done, PARTIAL_FORMAT))
                saved = done
    except BaseException:
        if partial is not None and features is not None and done > saved:
            _write(partial, features[:done], _meta(run, extractor, key, size, done, PARTIAL_FORMAT))
        raise
    assert features is not None  # a run has at least one image
    if file is not None:
        meta = _meta(run, extractor, key, size, total, FEATURES_FORMAT)
        _write(file, features, meta)
        if partial is not None:
            partial.unlink(missing_ok=True)
        _remove_superseded(file, meta)
    return features, size


def _meta(run: Any, extractor: Any, key: str, size: tuple[int, int], done: int, fmt: str) -> dict[str, str]:
    meta = {"format": fmt, "encoder": extractor.name, "key": key, "folder": str(run.path)}
    meta.update(height=str(size[0]), width=str(size[1]), done=str(done))
    return meta


def _write(file: Path, rows: torch.Tensor, meta: dict[str, str]) -> None:
    from safetensors.torch import save

    try:
        atomic_write(file, save({"features": rows.contiguous()}, metadata=meta))
    except OSError as error:
        raise RunError(f"{file}: cannot write ({error.strerror or error})") from None


def _resume(
    partial: Path | None, encoder: str, key: str, total: int
) -> tuple[torch.Tensor | None, tuple[int, int], int]:
    """(features (total, d) with the first rows filled from an interrupted call's partial file, its image
    size, the rows done), or (None, (0, 0), 0) when there is none for these images and this encoder."""
    nothing = None, (0, 0), 0
    if partial is None or not partial.is_file():
        return nothing
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(partial), "pt") as handle:
            meta = handle.metadata() or {}
            rows = handle.get_tensor("features").float()
    except (OSError, SafetensorError):
        return nothing
    fits = meta.get("format") == PARTIAL_FORMAT and meta.get("encoder") == encoder and meta.get("key") == key
    if (
        not fits
        or rows.ndim != 2
        or not 0 < rows.shape[0] < total
        or int(meta.get("done", -1)) != rows.shape[0]
    ):
        return nothing
    features = torch.empty(total, rows.shape[1])
    features[: rows.shape[0]] = rows
    return features, (int(meta.get("height", 0)), int(meta.get("width", 0))), rows.shape[0]


def _remove_superseded(kept: Path, meta: dict[str, str]) -> None:
    """Delete the older cache files of the same folder and encoder (their images changed since)."""
    for other in kept.parent.glob(kept.name.rsplit("-", 1)[0] + "-*.safetensors"):
        if other == kept:
            continue
        old = _metadata(other)
        ours = (
            old.get("format") in (FEATURES_FORMAT, PARTIAL_FORMAT) and old.get("encoder") == meta["encoder"]
        )
        if ours and old.get("folder") == meta["folder"]:  # not another encoder's, nor a foreign file
            other.unlink(missing_ok=True)


def _metadata(file: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "pt") as handle:
            return handle.metadata() or {}
    except (OSError, SafetensorError):
        return {}
