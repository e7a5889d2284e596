"""One batch of a run, shared by the single- and the multi-process drivers: its pipeline call (one prompt and one
seeded CPU generator per image), the images and bank rows it made, and its commit (PNGs, manifest lines, the
bank with the run's record)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparke.core.files import honour_umask

from .config import PromptEntry, RunConfig, WorkItem, image_seed
from .folder import BANK_FILE
from .session import Session

__all__ = [
    "BatchResult",
    "as_pil",
    "call_kwargs",
    "commit",
    "guide_images",
    "manifest_record",
    "run_item",
    "run_record",
    "save_bank",
]


@dataclass
class BatchResult:
    """What one pipeline call made: PIL images (one per index) and the bank rows it added (or None)."""

    images: list[Any]
    rows_x: torch.Tensor | None = None
    rows_y: torch.Tensor | None = None


def call_kwargs(config: RunConfig, item: WorkItem) -> dict[str, Any]:
    """The pipeline call of one work item: one prompt per image and one seeded CPU generator per image."""
    per = config.images_per_prompt
    prompts = [config.prompts[i // per].prompt for i in item.indices]
    kwargs: dict[str, Any] = {
        "prompt": prompts,
        "num_images_per_prompt": 1,
        "num_inference_steps": config.steps,
        "guidance_scale": config.cfg,
        "generator": [torch.Generator("cpu").manual_seed(image_seed(config.seed, i)) for i in item.indices],
        "output_type": "pil",
    }
    if config.negative_prompt is not None:
        kwargs["negative_prompt"] = [config.negative_prompt] * len(prompts)
    if config.height is not None:
        kwargs["height"] = config.height
    if config.width is not None:
        kwargs["width"] = config.width
    return kwargs


def guide_images(session: Session, item: WorkItem) -> list[Any]:
    """The PIL images of one batch: the guide's pipeline call for ``item``, one image per index checked."""
    out = session.guide(session.pipe, **call_kwargs(session.config, item))
    images = as_pil(out.images if hasattr(out, "images") else out[0])
    if len(images) != len(item.indices):
        raise RuntimeError(f"the pipeline returned {len(images)} images for a batch of {len(item.indices)}")
    return images


def run_item(session: Session, item: WorkItem) -> BatchResult:
    """Generate one batch; the guide's bank grows by one row per image (returned as ``rows_x``/``rows_y``)."""
    bank = session.bank
    before = len(bank) if bank is not None else 0
    images = guide_images(session, item)
    if bank is None:
        return BatchResult(images)
    m = len(item.indices)
    added = len(bank) - before
    if bank.capacity is None and added != m:
        raise RuntimeError(f"the guide added {added} bank rows for {m} images")
    return BatchResult(images, bank.x[-m:].clone(), None if bank.y is None else bank.y[-m:].clone())


def as_pil(images: Any) -> list[Any]:
    from PIL import Image

    if isinstance(images, list) and images and hasattr(images[0], "save"):
        return images
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    import numpy as np

    arr = np.asarray(images)
    return [Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)) for a in arr]


def manifest_record(
    config: RunConfig, index: int, batch: int, file: str, stamp: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The manifest line of image ``index``; ``stamp``: the PNG's ``{"size", "sha256"}`` (verified on resume)."""
    per = config.images_per_prompt
    entry: PromptEntry = config.prompts[index // per]
    record: dict[str, Any] = {
        "file": file,
        **(stamp or {}),
        "index": index,
        "prompt": entry.prompt,
        "prompt_index": index // per,
        "cluster": entry.cluster,
        "seed": image_seed(config.seed, index),
        "method": config.method,
        "scale": config.scale,
        "settings": config.settings,
        "model": config.model,
        "steps": config.steps,
        "cfg": config.cfg,
        "batch": batch,
    }
    if entry.required:
        record["required"] = entry.required
    if config.negative_prompt is not None:
        record["negative_prompt"] = config.negative_prompt
    return record


def commit(session: Session, item: WorkItem, result: BatchResult) -> int:
    """Write one batch: new PNGs, their manifest lines, then the bank; returns the number of new images."""
    folder, config = session.folder, session.config
    session.write_config_once()
    new = [(i, im) for i, im in zip(item.indices, result.images, strict=True) if i not in session.records]
    records = []
    for i, im in new:
        rel = folder.write_png(i, im)
        records.append(manifest_record(config, i, item.batch, rel, folder.stamp(rel)))
    folder.sync_images_dir()
    folder.append_manifest(records)
    for record in records:
        session.records[record["index"]] = record
    bank = session.bank
    if bank is not None:
        if item.batch != session.committed_batches:
            raise RuntimeError(f"batch {item.batch} committed after {session.committed_batches} batches")
        session.committed_batches = item.batch + 1
        bank.metadata["run"] = run_record(session)
        save_bank(bank, folder.path / BANK_FILE)
    return len(records)


def run_record(session: Session) -> dict[str, Any]:
    """The ``"run"`` block of the bank's metadata: whose run it is and how far it got (checked on resume)."""
    committed = session.committed_batches
    return {
        "fingerprint": session.config.fingerprint(),
        "committed_batches": committed,
        "committed_images": sum(len(session.items[b].indices) for b in range(committed)),
        "initial_rows": session.initial_rows,
    }


def save_bank(bank: Any, path: Path) -> None:
    """``bank.save(path)``, with the file's mode from the umask even for a user's bank class."""
    bank.save(path)
    honour_umask(path)
