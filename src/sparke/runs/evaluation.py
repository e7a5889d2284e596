"""Diversity metrics of run folders (``sparke evaluate``): Vendi, RKE, Cond-Vendi, Cond-RKE, in-batch similarity.

Features:
- images: the embedded model's shapes encoder (``features="embedded"``, 128-d) or a transformers image model
  given by hub id or folder: CLIP (``image_embeds`` of ``CLIPVisionModelWithProjection``, or the pooled output
  of a bare ``CLIPVisionModel``), DINOv2 (the pooled CLS token) or another ``AutoModel`` (pooled output, else
  the mean of the last hidden states). Images are resized (bicubic, antialiased) to the model's input size and
  normalised with its preprocessor's mean and std (CLIP's or ImageNet's when it has no preprocessor file);
  no torchvision involved.
- prompts: all-MiniLM-L6-v2 sentence embeddings (384-d).

Every feature row is L2-normalised. Kernels (documented in metrics.json): Gaussian
``k(a, b) = exp(-|a - b|^2 / (2 sigma^2))`` with ``sigma_image`` on image features and ``sigma_prompt`` on
prompt features (the paper's 0.3), or cosine. Vendi/RKE use the image kernel alone; Cond-Vendi/Cond-RKE the
Hadamard product with the prompt kernel, minus the prompt entropy. In-batch similarity is the mean cosine
similarity of the images of one prompt, averaged over prompts with two images or more (lower = more diverse).
Every metric is given over the whole run and per prompt cluster (the ``cluster`` of the manifest, else each
prompt is its own cluster). For runs of the embedded model, the checker's prompt-match rate: the fraction of
images whose detected shape, colour, count (and background, size or position when the prompt states them)
match the prompt; and the same for shape, colour and count alone (``match_shape_colour``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparke.core.defaults import SIGMA_IMAGE, SIGMA_PROMPT
from sparke.core.scores import MAX_DENSE_ROWS
from sparke.embedded.requirements import is_embedded_model, required_from_prompt, unreadable_prompts

from .config import RunError, file_error
from .extractors import FeatureExtractor, load_features
from .folder import MANIFEST_FILE, RunFolder, atomic_write, file_sha256, repair_command
from .imagefolder import ImageRecords, to_unit_range

__all__ = [
    "METRICS_FILE",
    "FeatureExtractor",
    "RunImages",
    "evaluate_run",
    "load_features",
    "load_run",
    "open_images",
    "required_from_prompt",
]

METRICS_FILE = "metrics.json"
DEFAULT_SIGMA_IMAGE = SIGMA_IMAGE  # the paper's bandwidths on unit-norm features (sparke.core.defaults)
DEFAULT_SIGMA_PROMPT = SIGMA_PROMPT

# metric name -> (label, True when higher is better: more diverse, closer to the reference, better aligned)
METRICS: dict[str, tuple[str, bool]] = {
    "cond_vendi": ("Cond-Vendi", True),
    "cond_rke": ("Cond-RKE", True),
    "vendi": ("Vendi", True),
    "rke": ("RKE", True),
    "in_batch_similarity": ("In-batch sim", False),
    "match_rate": ("Match", True),
    "match_shape_colour": ("Shape+colour", True),
    "clip_score": ("CLIPScore", True),
    "precision": ("Precision", True),
    "recall": ("Recall", True),
    "density": ("Density", True),
    "coverage": ("Coverage", True),
    "frechet": ("Fréchet", False),
}


# -- reading a run ----------------------------------------------------------------------------------------------
@dataclass
class RunImages(ImageRecords):
    """A run folder's config (run.json dict, or {} when absent) and its manifest records sorted by index."""

    def _unreadable_hint(self) -> str:
        return f"; run `{repair_command(self.path)}` to make it again"


def load_run(path: str | os.PathLike) -> RunImages:
    """Read a run folder made by ``sparke generate``; ``RunError`` when it has no finished images."""
    folder = RunFolder(path)
    if not folder.path.is_dir():
        raise RunError(f"{folder.path}: no such run folder")
    if not folder.manifest_file.is_file():
        raise RunError(f"{folder.path}: no {MANIFEST_FILE}; is it a folder made by `sparke generate`?")
    config = folder.read_config() or {}
    records = folder.read_manifest()
    problems = folder.verify(records, deep=False)  # sizes (hashes cost a read of every image)
    if problems:
        index = min(problems)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RunError(
            f"{folder.path / records[index]['file']}: {problems[index]}{more}; run "
            f"`{repair_command(folder.path)}` to make {'them' if more else 'it'} again"
        )
    kept = [records[i] for i in sorted(records)]
    if not kept:
        raise RunError(f"{folder.path}: no finished images yet")
    return RunImages(folder.path, config, kept)


# -- the embedded model's checker -------------------------------------------------------------------------------
def is_embedded_run(run: RunImages) -> bool:
    """Whether the run's model is the embedded shapes model (shipped, or a saved ShapesPipeline folder)."""
    model = run.config.get("model") or (run.records[0].get("model") if run.records else None)
    return is_embedded_model(model)


def match_flags(run: RunImages, batch_size: int = 256) -> list[tuple[bool, bool] | None]:
    """Per image: (all required attributes found, shape + colour + count found) by the checker, or None
    when the prompt's requirements are unknown (images streamed ``batch_size`` at a time)."""
    flags: list[tuple[bool, bool] | None] = []
    cache: dict[str, dict | None] = {}
    for rows, images in run.iter_batches(batch_size):
        pixels = images.permute(0, 2, 3, 1).numpy()
        flags.extend(_batch_flags([run.records[i] for i in rows], pixels, cache))
    return flags


def _batch_flags(
    records: Sequence[dict[str, Any]], pixels: np.ndarray, cache: dict[str, dict | None]
) -> list[tuple[bool, bool] | None]:
    from sparke.embedded.checker import check, matches

    flags: list[tuple[bool, bool] | None] = []
    for record, image in zip(records, pixels, strict=True):
        required = record.get("required")
        if required is None:
            prompt = record["prompt"]
            if prompt not in cache:
                cache[prompt] = required_from_prompt(prompt)
            required = cache[prompt]
        if required is None:
            flags.append(None)
            continue
        detected = check(image)
        core = {k: required[k] for k in ("shape", "colour", "count") if k in required}
        flags.append((bool(matches(detected, required)), bool(matches(detected, core))))
    return flags


# -- metrics ----------------------------------------------------------------------------------------------------
def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def group_metrics(
    x: torch.Tensor,
    y: torch.Tensor,
    prompts: Sequence[str],
    *,
    kernel: str,
    sigma_image: float,
    sigma_prompt: float,
    flags: Sequence[tuple[bool, bool] | None] | None = None,
) -> dict[str, Any]:
    """All metrics of one group of images: x (n, d) image features, y (n, e) prompt features."""
    from sparke.core import cond_rke, cond_vendi, in_batch_similarity, rke, vendi

    n = x.shape[0]
    out: dict[str, Any] = {"n_images": n, "n_prompts": len(set(prompts))}
    kw = dict(kernel=kernel)
    bandwidths = dict(sigma_image=sigma_image, sigma_prompt=sigma_prompt)
    # past the exact limit (MAX_DENSE_ROWS, sparke.core.scores) the Gaussian scores are RFF estimates, all four:
    # Vendi's eigendecomposition is refused there, and exact RKE's memory grows with n (n x chunk blocks)
    estimate = n > MAX_DENSE_ROWS and kernel == "gaussian"
    for name, fn in (("vendi", vendi), ("rke", rke), ("cond_vendi", cond_vendi), ("cond_rke", cond_rke)):
        try:
            if estimate:
                raise ValueError(name)
            args = (x,) if name in ("vendi", "rke") else (x, y)
            opts = {"sigma": sigma_image} if name in ("vendi", "rke") else bandwidths
            out[name] = _finite(fn(*args, **opts, **kw))
        except ValueError:
            out[name] = _rff_score(name, x, y, kernel, sigma_image, sigma_prompt)
            if out[name] is not None:
                out.setdefault("estimated", {})[name] = f"random Fourier features (D = {RFF_FEATURES[name]})"
    sims = []
    for rows in _rows_by_value(prompts).values():
        if len(rows) > 1:
            sims.append(in_batch_similarity(x[rows]))
    out["in_batch_similarity"] = float(np.mean(sims)) if sims else None
    if flags is not None:
        known = [f for f in flags if f is not None]
        out["match_rate"] = float(np.mean([f[0] for f in known])) if known else None
        out["match_shape_colour"] = float(np.mean([f[1] for f in known])) if known else None
        out["match_n"] = len(known)
        out["match_unread"] = len(flags) - len(known)
    return out


RFF_FEATURES = {"vendi": 2048, "cond_vendi": 2048, "rke": 8192, "cond_rke": 8192}
RFF_CHUNK = 1024  # rows per RFF update: a (1024, D) block of features, 32 MB at D = 8192


def _rff_score(
    name: str, x: torch.Tensor, y: torch.Tensor, kernel: str, sigma_image: float, sigma_prompt: float
) -> float | None:
    """A kernel score past the exact limit, from its bounded-memory random-Fourier-feature estimate
    (``sparke.metrics.rff``; Gaussian kernel only: None for the cosine one), rows fed in chunks."""
    if kernel != "gaussian":
        return None
    from sparke import metrics as M

    classes = {"vendi": M.RFFVendi, "rke": M.RFFRKE, "cond_vendi": M.RFFCondVendi, "cond_rke": M.RFFCondRKE}
    conditional = name.startswith("cond_")
    bw = dict(sigma_image=sigma_image, sigma_prompt=sigma_prompt) if conditional else dict(sigma=sigma_image)
    metric = classes[name](features=RFF_FEATURES[name], **bw)
    for start in range(0, x.shape[0], RFF_CHUNK):
        metric.update(x[start : start + RFF_CHUNK], y[start : start + RFF_CHUNK] if conditional else None)
    return _finite(metric.compute())


def _rows_by_value(values: Sequence[Any]) -> dict[Any, list[int]]:
    """Each distinct value's row indices, in order of first appearance (one pass)."""
    rows: dict[Any, list[int]] = {}
    for i, value in enumerate(values):
        rows.setdefault(value, []).append(i)
    return rows


def evaluate_run(
    path: str | os.PathLike,
    extractor: FeatureExtractor,
    *,
    kernel: str = "gaussian",
    sigma_image: float = DEFAULT_SIGMA_IMAGE,
    sigma_prompt: float = DEFAULT_SIGMA_PROMPT,
    write: bool = True,
    out: str | os.PathLike | None = None,
    reference: Any = None,
    clip: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Metrics of a run folder (path or ``RunImages``; or a ``FolderImages``), overall and per cluster, written to
    ``out`` (default ``DIR/metrics.json``) when ``write``, with the features cached beside it; ``reference``: a
    ``runs.reference.Reference`` (PRDC, Fréchet), ``clip``: a ``runs.alignment.ClipScorer`` (CLIPScore).
    Images are streamed a batch at a time (``runs.feature_cache.image_features``); ``progress(what, done,
    total)`` is told the images done after each batch (``what``: "images" or "reference")."""
    from .feature_cache import image_features

    _check_kernel_settings(kernel, sigma_image, sigma_prompt)
    run = load_run(path) if isinstance(path, (str, os.PathLike)) else path
    target = Path(out) if out is not None else run.path / METRICS_FILE
    cache_dir = target.parent if write else None
    x, size = image_features(run, extractor, cache_dir, _labelled(progress, "images"))
    prompts, y = _prompt_features(run.records)
    flags, notes = _checker_flags(run, extractor.name, size)
    opts = dict(kernel=kernel, sigma_image=sigma_image, sigma_prompt=sigma_prompt)
    overall = group_metrics(x, y, prompts, flags=flags, **opts)
    # 95% bootstrap intervals over the prompt clusters (sparke.metrics.bootstrap); absent with one cluster
    from sparke.metrics.bootstrap import cluster_intervals

    intervals = cluster_intervals(
        x, y, [r.get("cluster") or r["prompt"] for r in run.records], overall, flags=flags, **opts
    )
    if intervals is not None:
        overall["ci"] = intervals
    if reference is not None:
        from .reference import reference_metrics

        rows = reference.features(extractor, cache_dir, _labelled(progress, "reference"))
        overall.update(reference_metrics(x, rows))
    alignment = None if clip is None else clip_scores(run, clip)
    if alignment is not None:
        overall["clip_score"] = float(alignment.mean())
    clusters = cluster_metrics(run, x, y, flags, alignment, opts)
    result = _record(run, extractor.name, int(x.shape[1]), opts, reference, clip)
    result.update(overall=overall, clusters=clusters)
    result["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result["manifest"] = manifest_stamp(run.path) if (run.path / MANIFEST_FILE).is_file() else None
    notes += estimate_notes(overall) + singleton_notes(clusters)
    if notes:
        result["notes"] = notes
    if write:
        try:
            atomic_write(target, (json.dumps(result, indent=1) + "\n").encode())
        except OSError as error:
            raise file_error(target, error, "write") from None
    return result


def _record(
    run: ImageRecords, encoder: str, dim: int, opts: dict[str, Any], reference: Any, clip: Any
) -> dict[str, Any]:
    """metrics.json's description of what was measured: the run's settings, features, kernels, reference."""
    first = run.records[0]
    kernel = opts["kernel"]
    return {
        "format": "sparke.metrics",
        "format_version": 1,
        "run": run.name,
        "method": run.config.get("method", first.get("method")),
        "scale": run.config.get("scale", first.get("scale")),
        "model": run.config.get("model", first.get("model")),
        "settings": run.config.get("settings", first.get("settings")),
        "n_images": len(run.records),
        "features": {"image": encoder, "image_dim": dim, "prompt": "all-MiniLM-L6-v2"},
        "reference": None if reference is None else reference.describe(),
        "alignment": None if clip is None else {"metric": "clip_score", "model": clip.name},
        "kernels": {
            "kernel": kernel,
            "sigma_image": opts["sigma_image"] if kernel == "gaussian" else None,
            "sigma_prompt": opts["sigma_prompt"] if kernel == "gaussian" else None,
            "note": "features L2-normalised; gaussian k = exp(-|a-b|^2 / (2 sigma^2))",
        },
    }


def _labelled(
    progress: Callable[[str, int, int], None] | None, what: str
) -> Callable[[int, int], None] | None:
    return None if progress is None else (lambda done, total: progress(what, done, total))


def estimate_notes(overall: dict[str, Any]) -> list[str]:
    """Which overall scores are estimates (past the exact limit), said in the output."""
    return [
        f"{METRICS[name][0]}: {len_rows(overall)} images are past the exact limit ({MAX_DENSE_ROWS:,}); "
        f"estimated with {how}"
        for name, how in (overall.get("estimated") or {}).items()
    ]


def len_rows(overall: dict[str, Any]) -> str:
    return f"{overall['n_images']:,}"


def singleton_notes(clusters: Sequence[dict[str, Any]]) -> list[str]:
    """A note when prompt clusters hold a single image: their Cond-Vendi is 1 and their in-batch similarity
    undefined by construction, and the overall Cond-Vendi then says nothing about diversity per prompt."""
    single = sum(1 for c in clusters if c["n_images"] == 1)
    if not single:
        return []
    every = single == len(clusters)
    which = "every prompt cluster holds" if every else f"{single:,} of {len(clusters):,} prompt clusters hold"
    return [
        f"{which} a single image: Cond-Vendi is 1 by construction there (diversity within a prompt needs two "
        "images or more of it; generate several per prompt, or group prompts with a cluster column)"
    ]


def _prompt_features(records: list[dict[str, Any]]) -> tuple[list[str], torch.Tensor]:
    """(each record's prompt, their MiniLM features (n, 384)), each distinct prompt encoded once."""
    from sparke.encoders.minilm import encode_minilm

    prompts = [r["prompt"] for r in records]
    position = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    return prompts, encode_minilm(list(position))[[position[p] for p in prompts]]


def _check_kernel_settings(kernel: str, sigma_image: float, sigma_prompt: float) -> None:
    if kernel not in ("gaussian", "cosine"):
        raise RunError(f"--kernel {kernel!r}: choose gaussian or cosine")
    for label, value in (("--sigma-image", sigma_image), ("--sigma-prompt", sigma_prompt)):
        if not value > 0:
            raise RunError(f"{label} must be > 0, got {value}")


def _checker_flags(
    run: RunImages, features: str, size: tuple[int, int]
) -> tuple[list[tuple[bool, bool] | None] | None, list[str]]:
    """The shapes checker's flags for a run of the embedded model (else None), and the warnings to give."""
    flags, notes = None, []
    mismatch = encoder_mismatch(run, features, size)
    if mismatch:
        notes.append(mismatch)
    if is_embedded_run(run):
        try:
            flags = match_flags(run)
        except ImportError as error:  # the checker needs scipy, which a minimal install may lack
            notes.append(
                f"no prompt-match rate: the shapes checker needs {error.name or 'scipy'} (pip install scipy)"
            )
    if flags is not None:
        notes += unread_notes([r for r, f in zip(run.records, flags, strict=True) if f is None], len(flags))
    return flags, notes


def unread_notes(unread: Sequence[dict[str, Any]], total: int) -> list[str]:
    """A warning naming the prompts whose requirements the checker cannot read: their images are left out
    of Match, which then describes the other images only (or is absent when none is left)."""
    if not unread:
        return []
    reasons = unreadable_prompts([r["prompt"] for r in unread if "required" not in r])
    example = next(iter(reasons.items()), None)
    why = f" (e.g. {example[0]!r}: {example[1]})" if example else ""
    left = "Match is not given" if len(unread) == total else f"Match counts the other {total - len(unread):,}"
    return [
        f"{len(unread):,} of {total:,} images have prompts the shapes checker cannot read{why}: they are left "
        f"out of Match; {left}"
    ]


def cluster_metrics(
    run: RunImages,
    x: torch.Tensor,
    y: torch.Tensor,
    flags: Sequence[tuple[bool, bool] | None] | None,
    alignment: torch.Tensor | None,
    opts: dict[str, Any],
) -> list[dict[str, Any]]:
    """``group_metrics`` (and the mean CLIPScore) of each prompt cluster, in order of first appearance."""
    prompts = [r["prompt"] for r in run.records]
    names = [r.get("cluster") or r["prompt"] for r in run.records]
    clusters = []
    for name, rows in _rows_by_value(names).items():
        sub_flags = None if flags is None else [flags[i] for i in rows]
        metrics = group_metrics(x[rows], y[rows], [prompts[i] for i in rows], flags=sub_flags, **opts)
        if alignment is not None:
            metrics["clip_score"] = float(alignment[rows].mean())
        clusters.append({"cluster": name, **metrics})
    return clusters


def clip_scores(run: RunImages, clip: Any) -> torch.Tensor:
    """CLIPScore of each image of the run with its prompt: (n,) float64, in record order."""

    scores = torch.empty(len(run.records), dtype=torch.float64)
    for rows, images in run.iter_batches(clip.batch_size):
        for start in range(0, len(rows), clip.batch_size):
            part = rows[start : start + clip.batch_size]
            pixels = to_unit_range(images[start : start + clip.batch_size])
            scores[part] = clip(pixels, [run.records[i]["prompt"] for i in part])
    return scores


def read_metrics(path: str | os.PathLike) -> dict[str, Any] | None:
    """``DIR/metrics.json`` as written by ``evaluate_run``, or None when absent or unreadable."""
    file = Path(path) / METRICS_FILE
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == "sparke.metrics" else None


# -- staleness and suitability ----------------------------------------------------------------------------------
def manifest_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256", "size"}`` of a run's manifest: a metrics.json is fresh while its stamp matches."""
    file = Path(path) / MANIFEST_FILE
    return {"sha256": file_sha256(file), "size": file.stat().st_size}


def metrics_stale(path: str | os.PathLike, metrics: dict[str, Any] | None = None) -> str | None:
    """Why ``DIR/metrics.json`` no longer describes the run (its manifest changed since, or it counts other
    images), or None when it is fresh (or absent)."""
    path = Path(path)
    metrics = read_metrics(path) if metrics is None else metrics
    if metrics is None:
        return None
    if not (path / MANIFEST_FILE).is_file():
        return _image_folder_stale(path, metrics)
    folder = RunFolder(path)
    try:
        now = len(folder.read_manifest())
    except RunError:
        return "the manifest is damaged"
    made = metrics.get("n_images")
    counts = f"made from {made} images, the run has {now} now" if made != now else ""
    stamp = metrics.get("manifest")
    if isinstance(stamp, dict) and stamp.get("sha256"):
        try:
            if manifest_stamp(path) == {"sha256": stamp.get("sha256"), "size": stamp.get("size")}:
                return None
        except OSError:
            pass
        return counts or "the manifest changed since it was made"
    if counts:
        return counts
    try:  # a metrics.json of an older sparke: compare the times
        if (path / METRICS_FILE).stat().st_mtime < folder.manifest_file.stat().st_mtime:
            return "it is older than the manifest"
    except OSError:
        pass
    return None


def _image_folder_stale(path: Path, metrics: dict[str, Any]) -> str | None:
    """``metrics_stale`` of a plain image folder: its metadata lists another number of images, or changed
    after the metrics were made."""
    from .imagefolder import METADATA_FILES

    for name in METADATA_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            if file.stat().st_mtime > (path / METRICS_FILE).stat().st_mtime:
                return f"{name} changed since it was made"
        except OSError:
            return None
    return None


def open_images(path: str | os.PathLike, prompt_column: str = "prompt") -> ImageRecords:
    """A run folder (``load_run``) when it has a manifest, else a plain image folder with imagefolder
    metadata (``runs.imagefolder.read_image_folder``): what ``sparke evaluate`` and ``sparke report`` accept."""
    from .imagefolder import read_image_folder

    if (Path(path) / MANIFEST_FILE).is_file():
        return load_run(path)
    return read_image_folder(path, prompt_column)


def encoder_mismatch(run: RunImages, features: str, size: tuple[int, int]) -> str | None:
    """A warning when the image encoder does not suit the run: the embedded shapes encoder (trained on 32x32
    renders of the shapes world) on another model's images or at another resolution."""
    if features != "embedded":
        return None
    if not is_embedded_run(run):
        model = run.config.get("model") or (run.records[0].get("model") if run.records else None)
        return (
            f"the embedded shapes encoder knows only the shapes world's 32x32 renders, not the images of "
            f"{model or 'this model'}: its numbers mean little here; use --features with a CLIP or DINOv2 "
            "model (e.g. --features openai/clip-vit-base-patch32)"
        )
    if tuple(size) != (32, 32):
        return (
            f"the images are {size[1]}x{size[0]} but the embedded shapes encoder was trained at 32x32: they are "
            "resized to 32x32 first"
        )
    return None
