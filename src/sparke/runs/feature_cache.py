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
from pathlib import Path
from typing import Any

import torch

from sparke.core.files import atomic_write

from .config import RunError
from .folder import file_sha256
from .imagefolder import image_groups

__all__ = ["FEATURES_FORMAT", "image_features", "read_features_file"]

FEATURES_FORMAT = "sparke.features"


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
    run: Any, extractor: Any, cache_dir: str | os.PathLike | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Unit feature rows (n, d) of a ``RunImages``' or ``FolderImages``' images (by ``extractor``, a
    ``runs.evaluation.FeatureExtractor``) in record order and the first image's (height, width);
    read back from, or else written to, the cache file in ``cache_dir`` when given."""
    from safetensors.torch import save

    key = cache_key(run, extractor.name) if cache_dir is not None else ""
    file = cache_file(Path(cache_dir), extractor.name, key) if cache_dir is not None else None
    if file is not None and file.is_file():
        try:
            rows, meta = _read(file, extractor.name, key)
            return rows, (int(meta.get("height", 0)), int(meta.get("width", 0)))
        except (RunError, ValueError):
            pass  # damaged or foreign: computed again and replaced
    features: torch.Tensor | None = None
    size = (0, 0)
    for rows, images in image_groups(run):
        batch = extractor(images)
        if features is None:
            features = torch.empty(len(run.records), batch.shape[1])
            size = tuple(images.shape[-2:])
        features[rows] = batch
    assert features is not None  # a run has at least one image
    if file is not None:
        meta = {"format": FEATURES_FORMAT, "encoder": extractor.name, "key": key, "folder": str(run.path)}
        meta.update(height=str(size[0]), width=str(size[1]))
        try:
            atomic_write(file, save({"features": features.contiguous()}, metadata=meta))
        except OSError as error:
            raise RunError(f"{file}: cannot write ({error.strerror or error})") from None
        _remove_superseded(file, meta)
    return features, size


def _remove_superseded(kept: Path, meta: dict[str, str]) -> None:
    """Delete the older cache files of the same folder and encoder (their images changed since)."""
    for other in kept.parent.glob(kept.name.rsplit("-", 1)[0] + "-*.safetensors"):
        if other == kept:
            continue
        try:
            old = _read(other, meta["encoder"], None)[1]
        except RunError:
            continue  # not ours, or another encoder's
        if old.get("folder") == meta["folder"]:
            other.unlink(missing_ok=True)
