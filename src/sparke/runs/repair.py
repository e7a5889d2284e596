"""``sparke repair DIR``: rebuild a run folder's manifest from its images and its settings.

A manifest damaged in the middle (a disk error, an edit by hand) stops ``generate``, ``evaluate`` and
``report``. ``repair`` takes the folder's lock and rewrites ``manifest.jsonl`` (atomically) from:

- every valid line whose image is whole (size and sha256 as recorded; a full decode for lines without them);
- every whole PNG without a valid line, when the run's bank says its batch was committed (or the run keeps no
  bank): its line is rebuilt from ``run.json`` (prompt, seed, settings, ...) and the file's size and hash.

Damaged lines are dropped, and so are the lines of damaged or missing images: ``generate`` (which ``sparke
repair`` runs next unless told not to) makes those images again, bit-exactly, from the saved bank. A bank file
that cannot be read is set aside as ``bank.safetensors.damaged``; the run then replays every batch to rebuild
it, writing only the images it lacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig, RunError, plan
from .folder import RunFolder, image_file
from .lock import RunLock

__all__ = ["RepairSummary", "repair"]


@dataclass
class RepairSummary:
    """What ``repair`` did: records kept, rebuilt from images, damaged lines and images dropped."""

    path: Path
    config: RunConfig
    kept: int = 0
    rebuilt: int = 0
    dropped_lines: int = 0
    dropped_images: list[int] = field(default_factory=list)
    todo: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.rebuilt or self.dropped_lines or self.dropped_images or self.notes)


def _committed_batches(folder: RunFolder, summary: RepairSummary) -> int | None:
    """Batches the bank holds (None: the run keeps no bank); a damaged bank is set aside (0 batches)."""
    from sparke.core import BankFileError
    from sparke.core.auto import load_bank

    if not folder.bank_file.exists():
        return None
    try:
        bank = load_bank(folder.bank_file)  # exact and indexed files alike
    except (BankFileError, OSError) as error:
        aside = folder.bank_file.with_name(folder.bank_file.name + ".damaged")
        os.replace(folder.bank_file, aside)
        summary.notes.append(
            f"{folder.bank_file.name} is damaged ({error}); moved to {aside.name}: every batch is replayed to "
            "rebuild it"
        )
        return 0
    return int((bank.metadata.get("run") or {}).get("committed_batches", 0))


def repair(path: str | os.PathLike) -> RepairSummary:
    """Rebuild the manifest of run folder ``path`` (see the module docstring); ``RunError`` when it is not one."""
    from .batch import manifest_record

    folder = RunFolder(path)
    if not folder.path.is_dir():
        raise RunError(f"{folder.path}: no such run folder")
    stored = folder.read_config()
    if stored is None:
        raise RunError(f"{folder.path}: no run.json; `sparke repair` mends folders made by `sparke generate`")
    config = RunConfig.from_json(stored)
    summary = RepairSummary(folder.path, config)
    with RunLock(folder.path) as lock:
        del lock
        folder.remove_stale_temporaries()
        scan = folder.scan_manifest()
        summary.dropped_lines = len(scan.middle) + scan.tail
        n = config.n_images
        records = {i: r for i, r in scan.records.items() if i < n}
        summary.dropped_lines += len(scan.records) - len(records)
        problems = folder.verify(records, deep=True)
        good = {i: r for i, r in records.items() if i not in problems}
        summary.dropped_images = sorted(problems)
        committed = _committed_batches(folder, summary)
        batch_of = {i: item.batch for item in plan(config) for i in item.indices}
        rebuilt: dict[int, dict[str, Any]] = {}
        for index in range(n):
            if index in good or index in problems:
                continue
            rel = image_file(index)
            if not (folder.path / rel).is_file():
                continue
            if committed is not None and batch_of[index] >= committed:
                continue  # its batch is not in the bank: generate makes it again with its rows
            probe = {"file": rel, "index": index}
            if folder.check_image(probe, deep=True) is None:
                rebuilt[index] = manifest_record(config, index, batch_of[index], rel, folder.stamp(rel))
        summary.kept, summary.rebuilt = len(good), len(rebuilt)
        merged = {**good, **rebuilt}
        if summary.changed or scan.records != merged:
            folder.write_manifest([merged[i] for i in sorted(merged)])
        summary.todo = n - len(merged)
    return summary
