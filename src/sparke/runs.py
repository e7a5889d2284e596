"""The run folder of ``sparke generate``: settings, images, manifest and bank, safe to interrupt and resume.

    DIR/run.json            what defines the run (model, method, settings, prompts, seed, ...), written once
    DIR/images/000012.png   image 12 (index = prompt_index * images_per_prompt + k)
    DIR/manifest.jsonl      one JSON line per finished image: file, prompt, cluster, seed, method, settings, ...
    DIR/bank.safetensors    the guide's memory bank after the last finished batch (``sparke.Bank`` file)

A batch is committed in this order: each PNG to a temporary file, fsync, ``os.replace``; the batch's manifest
lines appended (one ``write`` per line) and fsynced; the bank saved atomically with the number of committed
batches in its metadata. A kill at any point leaves whole files and whole lines only; on restart a PNG
without a manifest line is regenerated, and a batch whose lines exist but whose rows are missing from the bank
is regenerated (its images are not rewritten) so that the bank, and every later image, equals the one an
uninterrupted run would have made.

This module does no generation (see ``sparke.generation``); everything here is plain file I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BANK_FILE",
    "atomic_write",
    "MANIFEST_FILE",
    "RUN_FILE",
    "PromptEntry",
    "RunConfig",
    "RunError",
    "RunFolder",
    "WorkItem",
    "image_seed",
    "plan",
    "read_prompts",
]

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.jsonl"
BANK_FILE = "bank.safetensors"
IMAGES_DIR = "images"
FORMAT = "sparke.run"
FORMAT_VERSION = 1


class RunError(Exception):
    """Bad input or an unusable run folder; the message is one line for the user, no traceback needed."""


# -- prompts ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptEntry:
    """A prompt, its cluster of paraphrases (if known) and the attributes it requires (embedded model)."""

    prompt: str
    cluster: str | None = None
    required: dict[str, Any] | None = None


def read_prompts(path: str | os.PathLike) -> list[PromptEntry]:
    """Prompts from a file: ``.jsonl`` lines ``{"prompt": ..., "cluster": ..., "required": {...}}``, otherwise
    text with one prompt per line (``cluster<TAB>prompt`` also works); blank lines and ``#`` lines skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"{path}: no such prompt file") from None
    except IsADirectoryError:
        raise RunError(f"{path}: is a folder, not a prompt file") from None
    except UnicodeDecodeError:
        raise RunError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise RunError(f"{path}: cannot read the prompt file ({error.strerror or error})") from None
    entries: list[PromptEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(line)
                entries.append(
                    PromptEntry(str(obj["prompt"]), obj.get("cluster"), obj.get("required") or None)
                )
            except (ValueError, KeyError, TypeError):
                raise RunError(f'{path}:{number}: expected a JSON object with a "prompt" field') from None
        elif "\t" in line:
            cluster, prompt = (part.strip() for part in line.split("\t", 1))
            entries.append(PromptEntry(prompt, cluster or None))
        else:
            entries.append(PromptEntry(line))
    if not entries:
        raise RunError(f"{path}: no prompts in this file (write one prompt per line)")
    if any(not e.prompt.strip() for e in entries):
        raise RunError(f"{path}: contains an empty prompt")
    return entries


# -- the run's definition ---------------------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Everything that determines a run's images; two commands with equal configs make equal folders.

    ``steps``/``cfg``: None until resolved from the pipeline's defaults. ``init_bank``: rows the run started
    from (``{"path", "rows", "sha256"}``), or None. The device is not part of it: a run may resume elsewhere.
    """

    prompts: list[PromptEntry]
    model: str = "embedded"
    method: str = "sparke"
    scale: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    images_per_prompt: int = 4
    steps: int | None = None
    cfg: float | None = None
    seed: int = 0
    batch_size: int = 4
    dtype: str = "float32"
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    init_bank: dict[str, Any] | None = None

    @property
    def n_images(self) -> int:
        return len(self.prompts) * self.images_per_prompt

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompts"] = [_prompt_json(p) for p in self.prompts]
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **json.loads(json.dumps(data))}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["prompts"] = [
            PromptEntry(p["prompt"], p.get("cluster"), p.get("required")) for p in data["prompts"]
        ]
        return cls(**fields)

    def fingerprint(self) -> str:
        """Short hash of the config (recorded in the bank to tie it to this run)."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _prompt_json(p: PromptEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": p.prompt}
    if p.cluster is not None:
        out["cluster"] = p.cluster
    if p.required:
        out["required"] = p.required
    return out


def config_differences(
    stored: dict[str, Any], current: dict[str, Any], skip: Iterable[str] = ()
) -> list[str]:
    """Human-readable differences between two ``RunConfig.to_json()`` dicts (keys in ``skip`` ignored)."""
    diffs: list[str] = []
    skip = set(skip)
    for key in sorted(set(stored) | set(current)):
        if key in skip or key in ("format", "format_version"):
            continue
        a, b = stored.get(key), current.get(key)
        if a == b:
            continue
        if key == "prompts":
            a, b = a or [], b or []
            if len(a) != len(b):
                diffs.append(f"{len(a)} prompts in the folder, {len(b)} now")
            else:
                i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
                diffs.append(f"prompt {i + 1} was {a[i]['prompt']!r}, now {b[i]['prompt']!r}")
        elif key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                if a.get(name) != b.get(name):
                    diffs.append(f"{name} was {a.get(name)!r}, now {b.get(name)!r}")
        else:
            diffs.append(f"{key} was {a!r}, now {b!r}")
    return diffs


# -- the work ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkItem:
    """One pipeline call: batch number and the global image indices it makes (consecutive, prompt-major)."""

    batch: int
    indices: tuple[int, ...]


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a run seeded ``seed``: a 63-bit hash, independent across runs and images.

    (``seed + index`` would make runs seeded 0 and 1 share all but one noise.)
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def plan(config: RunConfig) -> list[WorkItem]:
    """All pipeline calls of a run, in order: image indices 0..n-1 cut into batches of ``batch_size``.

    Pure: the same config always gives the same list. A batch may span two prompts. To shard across k
    processes, process r takes items r, r + k, ... of each round of k items (see ``sparke.generation``).
    """
    n, size = config.n_images, config.batch_size
    return [
        WorkItem(b, tuple(range(start, min(start + size, n)))) for b, start in enumerate(range(0, n, size))
    ]


def image_file(index: int) -> str:
    """Path of image ``index`` relative to the run folder."""
    return f"{IMAGES_DIR}/{index:06d}.png"


# -- the folder -------------------------------------------------------------------------------------------------
class RunFolder:
    """Reads and writes one run folder; every write is atomic (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def bank_file(self) -> Path:
        return self.path / BANK_FILE

    @property
    def images_dir(self) -> Path:
        return self.path / IMAGES_DIR

    # -- reading (no writes: safe on any folder) --------------------------------------------------------------
    def read_config(self) -> dict[str, Any] | None:
        """The stored ``run.json`` dict, or None when the folder has none."""
        if not self.run_file.exists():
            return None
        try:
            data = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise RunError(f"{self.run_file}: unreadable run file ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RunError(f"{self.run_file}: not a sparke run file")
        if data.get("format_version") != FORMAT_VERSION:
            raise RunError(
                f"{self.run_file}: run format version {data.get('format_version')!r}; this sparke reads "
                f"{FORMAT_VERSION}"
            )
        return data

    def read_manifest(self) -> dict[int, dict[str, Any]]:
        """Manifest records by image index. A last line without its newline (a write cut short) is ignored;
        a damaged line elsewhere is a ``RunError``."""
        if not self.manifest_file.exists():
            return {}
        data = self.manifest_file.read_bytes()
        records: dict[int, dict[str, Any]] = {}
        lines = data.split(b"\n")
        complete = lines[:-1]  # the part after the last newline is empty or a torn write
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                index = int(record["index"])
                record["file"]  # noqa: B018 - must be present
            except (ValueError, KeyError, TypeError):
                raise RunError(f"{self.manifest_file}:{number}: damaged manifest line") from None
            records[index] = record
        return records

    def finished(self, records: dict[int, dict[str, Any]]) -> set[int]:
        """Indices whose manifest line exists and whose PNG file is present and non-empty."""
        done = set()
        for index, record in records.items():
            file = self.path / record["file"]
            if file.is_file() and file.stat().st_size > 0:
                done.add(index)
        return done

    # -- preparing for writes ---------------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        """Create the folder and ``images/``, and prove they can be written (a probe file), or ``RunError``."""
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.path, self.images_dir):
                fd, probe = tempfile.mkstemp(prefix=".sparke-probe-", dir=folder)
                os.close(fd)
                os.unlink(probe)
        except FileExistsError:
            raise RunError(f"{self.path}: exists and is not a folder") from None
        except NotADirectoryError:
            raise RunError(f"{self.path}: a parent of this path is a file, not a folder") from None
        except PermissionError:
            raise RunError(f"{self.path}: permission denied; choose an output folder you can write") from None
        except OSError as error:
            raise RunError(f"{self.path}: cannot write here ({error.strerror or error})") from None

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by a killed run (never a finished file); returns how many."""
        count = 0
        for folder in (self.path, self.images_dir):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                    count += 1
        return count

    def repair_manifest_tail(self) -> None:
        """Cut a torn last line (no newline) so the next append starts on a fresh line."""
        if not self.manifest_file.exists():
            return
        data = self.manifest_file.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.manifest_file, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
                handle.flush()
                os.fsync(handle.fileno())

    def write_config(self, config: RunConfig) -> None:
        atomic_write(self.run_file, (json.dumps(config.to_json(), indent=1) + "\n").encode())

    # -- committing a batch -----------------------------------------------------------------------------------
    def write_png(self, index: int, image: Any) -> str:
        """Save a PIL image as image ``index`` atomically; returns its relative path."""
        rel = image_file(index)
        target = self.path / rel
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, format="PNG")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return rel

    def append_manifest(self, records: Sequence[dict[str, Any]]) -> None:
        """Append one line per record (each one ``write``: never a half line), then fsync."""
        if not records:
            return
        fd = os.open(self.manifest_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for record in records:
                line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
                os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync_images_dir(self) -> None:
        """fsync the images folder so the renames of this batch are durable before its manifest lines."""
        try:
            fd = os.open(self.images_dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # some file systems refuse fsync on folders; the renames are still atomic
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike, limit: int | None = None) -> str:
    """sha256 hex digest of a file (of its first ``limit`` bytes when given)."""
    digest = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as handle:
        while True:
            size = 1 << 20 if remaining is None else min(1 << 20, remaining)
            chunk = handle.read(size)
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return digest.hexdigest()
