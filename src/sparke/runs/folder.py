"""The run folder of ``sparke generate``: settings, images, manifest and bank, safe to interrupt and resume.

    DIR/run.json            what defines the run (model, method, settings, prompts, seed, ...), written once
    DIR/images/000012.png   image 12 (index = prompt_index * images_per_prompt + k)
    DIR/manifest.jsonl      one JSON line per finished image: file, size, sha256, prompt, cluster, seed, ...
    DIR/bank.safetensors    the guide's memory bank after the last finished batch (``sparke.Bank`` file)
    DIR/.sparke.lock        while a process writes the folder: its pid and host (``sparke.runs.lock``)

A batch is committed in this order: each PNG to a temporary file, fsync, ``os.replace``; the batch's manifest
lines appended (one ``write`` per line) and fsynced; the bank saved atomically with the number of committed
batches in its metadata. A kill at any point leaves whole files and whole lines only; on restart a PNG
without a manifest line is regenerated, and a batch whose lines exist but whose rows are missing from the bank
is regenerated (its images are not rewritten) so that the bank, and every later image, equals the one an
uninterrupted run would have made. A resume verifies each listed image against the size and sha256 of its
manifest line (see ``verify``): a damaged image is regenerated like a missing one.

Files are created with the process umask (0644 under the usual 022), atomic writes included.

This module does no generation (see ``sparke.runs.generation``) and defines no run (``sparke.runs.config``):
everything here is plain file I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparke.core.files import atomic_write, honour_umask

from .config import (
    FORMAT,
    FORMAT_VERSION,
    RunConfig,
    RunError,
    file_error,
)

__all__ = [
    "BANK_FILE",
    "atomic_write",
    "MANIFEST_FILE",
    "RUN_FILE",
    "RunFolder",
    "ManifestScan",
    "file_stamp",
    "honour_umask",
]

RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.jsonl"
BANK_FILE = "bank.safetensors"
IMAGES_DIR = "images"
LOCK_FILE = ".sparke.lock"


def image_file(index: int) -> str:
    """Path of image ``index`` relative to the run folder."""
    return f"{IMAGES_DIR}/{index:06d}.png"


# -- the folder -------------------------------------------------------------------------------------------------
def repair_command(path: str | os.PathLike) -> str:
    """The command that repairs run folder ``path`` (quoted for a shell)."""
    return f"sparke repair {shlex.quote(str(path))}"


@dataclass
class ManifestScan:
    """What ``manifest.jsonl`` holds: the valid records (by index, a later line wins over an earlier one) and
    where it is damaged. ``tail``: damaged or torn lines after the last valid one (an interrupted write; cut by
    ``repair_manifest_tail``); ``middle``: numbers of damaged lines followed by valid ones (``sparke repair``)."""

    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    middle: list[int] = field(default_factory=list)
    tail: int = 0
    torn: bool = False
    keep_bytes: int = 0


def _parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    index = record.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return None
    if record.get("file") != image_file(index):  # never trust a path from a damaged line
        return None
    return record


# why a run folder cannot be made, by the kind of error (``RunFolder.create``)
_UNWRITABLE: dict[type[OSError], str] = {
    FileExistsError: "is a file, not a folder",
    NotADirectoryError: "a parent of this path is a file, not a folder",
    PermissionError: "permission denied; choose an output folder you can write",
}


def _inside(name: str) -> property:
    """A ``RunFolder`` property: the path of its member ``name``."""

    def member(self: RunFolder) -> Path:
        return self.path / name

    return property(member, doc=f"The folder's {name!r}.")


class RunFolder:
    """Reads and writes one run folder; every write is atomic (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    run_file = _inside(RUN_FILE)
    manifest_file = _inside(MANIFEST_FILE)
    bank_file = _inside(BANK_FILE)
    images_dir = _inside(IMAGES_DIR)
    lock_file = _inside(LOCK_FILE)

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

    def scan_manifest(self) -> ManifestScan:
        """Every line of the manifest, sorted into valid records and damage (nothing is changed)."""
        scan = ManifestScan()
        if not self.manifest_file.exists():
            return scan
        try:
            data = self.manifest_file.read_bytes()
        except OSError as error:
            raise RunError(f"{self.manifest_file}: unreadable ({error.strerror or error})") from None
        lines = data.split(b"\n")
        scan.torn = bool(lines[-1].strip())  # the part after the last newline: empty, or a torn write
        damaged: list[int] = []
        offset = 0
        for number, line in enumerate(lines[:-1], start=1):
            offset += len(line) + 1
            if not line.strip():
                continue
            record = _parse_record(line)
            if record is None:
                damaged.append(number)
                continue
            scan.records[record["index"]] = record
            scan.middle.extend(damaged)  # damaged lines followed by a valid one
            damaged = []
            scan.keep_bytes = offset
        scan.tail = len(damaged) + int(scan.torn)
        return scan

    def read_manifest(self) -> dict[int, dict[str, Any]]:
        """Manifest records by image index. Damaged lines at the end (a write cut short) are ignored; a damaged
        line followed by valid ones is a ``RunError`` that names ``sparke repair``."""
        scan = self.scan_manifest()
        if scan.middle:
            raise RunError(self.damage_message(scan))
        return scan.records

    def damage_message(self, scan: ManifestScan) -> str:
        more = len(scan.middle) - 1
        return (
            f"{self.manifest_file}:{scan.middle[0]}: damaged manifest line"
            + (f" (and {more} more)" if more else "")
            + f" before valid ones; run `{repair_command(self.path)}` to rebuild the manifest"
        )

    def check_image(self, record: dict[str, Any], deep: bool = True) -> str | None:
        """None when the image of ``record`` is whole, else what is wrong with it ("missing", ...).

        The size and sha256 of the manifest line are checked (the hash only when ``deep``); a line written
        before they were recorded gets a full decode of the PNG instead (when ``deep``)."""
        file = self.path / record["file"]
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            return "missing"
        except OSError as error:
            return f"unreadable ({error.strerror or error})"
        if not file.is_file():
            return "not a file"
        want = record.get("size")
        if isinstance(want, int) and size != want:
            return f"{size} bytes, the manifest says {want}"
        if size == 0:
            return "empty"
        if not deep:
            return None
        digest = record.get("sha256")
        try:
            if isinstance(digest, str):
                return None if file_sha256(file) == digest else "its sha256 differs from the manifest's"
            from PIL import Image

            with Image.open(file) as image:
                image.load()
        except OSError as error:
            return f"unreadable ({error.strerror or error})"
        except (ValueError, SyntaxError) as error:  # PIL's errors on a truncated or corrupt PNG
            return f"unreadable ({error})"
        return None

    def verify(self, records: dict[int, dict[str, Any]], deep: bool = True) -> dict[int, str]:
        """``{index: problem}`` for the listed images that are missing or damaged (see ``check_image``)."""
        indices = sorted(records)
        if not indices:
            return {}
        workers = min(8, os.cpu_count() or 1) if deep and len(indices) > 64 else 1
        if workers > 1:  # hashing releases the GIL: big runs verify in parallel
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:
                found = list(pool.map(lambda i: self.check_image(records[i], deep), indices))
        else:
            found = [self.check_image(records[i], deep) for i in indices]
        return {i: problem for i, problem in zip(indices, found, strict=True) if problem is not None}

    def finished(self, records: dict[int, dict[str, Any]], deep: bool = False) -> set[int]:
        """Indices whose manifest line exists and whose PNG is whole (sizes only unless ``deep``)."""
        return set(records) - set(self.verify(records, deep))

    # -- preparing for writes ---------------------------------------------------------------------------------
    def check_target(self) -> None:
        """``RunError`` when the folder cannot be created or written; writes nothing."""
        path = self.path
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                raise RunError(
                    f"{path}: is a file, not a folder; --out names the run folder (made if missing)"
                )
            images = self.images_dir
            if images.exists() and not images.is_dir():
                raise RunError(f"{images}: is a file, not a folder")
            if not os.access(path, os.W_OK | os.X_OK):
                raise RunError(f"{path}: permission denied; choose an output folder you can write")
            return
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise RunError(f"{path}: cannot be made, because {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RunError(f"{path}: permission denied in {parent}; choose an output folder you can write")

    def create(self) -> list[Path]:
        """Make the folder and ``images/`` and prove they can be written (a probe file), or ``RunError``;
        returns the folders it made (outermost first), so that a start that fails can remove them."""
        self.check_target()
        made = []
        for folder in (self.path, self.images_dir):
            missing = []
            p = folder
            while not p.exists():
                missing.append(p)
                p = p.parent
            made.extend(reversed([m for m in missing if m not in made]))
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            for folder in (self.path, self.images_dir):
                fd, probe = tempfile.mkstemp(prefix=".sparke-probe-", dir=folder)
                os.close(fd)
                os.unlink(probe)
        except OSError as error:
            raise file_error(self.path, error, "write here", _UNWRITABLE) from None
        return made

    def ensure_writable(self) -> None:
        """Create the folder and ``images/`` (see ``create``)."""
        self.create()

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by a killed run (never a finished file); returns how many."""
        count = 0
        for folder in (self.path, self.images_dir):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                    count += 1
        return count

    def repair_manifest_tail(self) -> str | None:
        """Cut damaged or torn lines after the last valid one, so the next append starts on a fresh line;
        returns a note saying what was cut (None when nothing was)."""
        scan = self.scan_manifest()
        if not scan.tail:
            return None
        with open(self.manifest_file, "r+b") as handle:
            handle.truncate(scan.keep_bytes)
            handle.flush()
            os.fsync(handle.fileno())
        if scan.tail == 1 and scan.torn:
            return f"{self.manifest_file}: cut its last line, torn by an interrupted write"
        return (
            f"{self.manifest_file}: cut {scan.tail} damaged line{'s' if scan.tail > 1 else ''} at its end "
            "(an interrupted write); their images are made again"
        )

    def write_config(self, config: RunConfig) -> None:
        atomic_write(self.run_file, (json.dumps(config.to_json(), indent=1) + "\n").encode())

    def write_manifest(self, records: Sequence[dict[str, Any]]) -> None:
        """Replace the whole manifest (atomically) with ``records``, one line each."""
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write(self.manifest_file, text.encode())

    # -- committing a batch -----------------------------------------------------------------------------------
    def write_png(self, index: int, image: Any) -> str:
        """Save a PIL image as image ``index`` atomically; returns its relative path."""
        rel = image_file(index)
        target = self.path / rel
        atomic_write(target, lambda tmp: image.save(tmp, format="PNG"))
        return rel

    def stamp(self, rel: str) -> dict[str, Any]:
        """``{"size", "sha256"}`` of a file of the folder, as recorded in its manifest line."""
        return file_stamp(self.path / rel)

    def append_manifest(self, records: Sequence[dict[str, Any]]) -> None:
        """Append one line per record (each one ``write``: never a half line), then fsync."""
        if not records:
            return
        fd = os.open(self.manifest_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
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


# -- files ------------------------------------------------------------------------------------------------------
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


def file_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file."""
    return {"size": os.stat(path).st_size, "sha256": file_sha256(path)}
