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

This module does no generation (see ``sparke.runs.generation``); everything here is plain file I/O.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparke.core.files import honour_umask

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
    "ManifestScan",
    "file_stamp",
    "honour_umask",
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
LOCK_FILE = ".sparke.lock"


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
                entry = PromptEntry(str(obj["prompt"]), obj.get("cluster"), obj.get("required") or None)
            except (ValueError, KeyError, TypeError):
                raise RunError(f'{path}:{number}: expected a JSON object with a "prompt" field') from None
            if entry.required is not None:
                check_required(entry.required, f"{path}:{number}")
            entries.append(entry)
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


def required_vocabulary() -> dict[str, tuple[Any, ...]]:
    """The values a prompt's ``required`` may take, per attribute: the embedded shapes world's vocabulary."""
    from sparke.embedded import world as W

    positions = tuple(W.cell_name(r, c) for r in range(3) for c in range(3))
    return {
        "shape": tuple(W.SHAPES),
        "colour": tuple(W.COLOURS),
        "count": (1, 2),
        "size": tuple(W.SIZE_NAMES),
        "background": tuple(W.BACKGROUND_NAMES),
        "position": positions,
    }


def check_required(required: Any, where: str) -> None:
    """``RunError`` naming the bad key or value when ``required`` leaves the shapes world's vocabulary
    (the checker would silently score such a prompt 0)."""
    vocabulary = required_vocabulary()
    if not isinstance(required, dict):
        raise RunError(
            f'{where}: "required" must be an object such as {{"shape": "circle", "colour": "red"}}'
        )
    for key, value in required.items():
        if key not in vocabulary:
            raise RunError(
                f'{where}: "required" has an unknown attribute {key!r} (known: {", ".join(vocabulary)})'
            )
        allowed = vocabulary[key]
        if value not in allowed or isinstance(value, bool):
            shown = ", ".join(str(v) for v in allowed)
            raise RunError(
                f'{where}: "required" {key} {value!r} is not in the shapes world (one of: {shown})'
            )


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


# settings added to a method after run folders existed -> the behaviour of the folders made before them
ADDED_SETTINGS: dict[str, Any] = {"step_schedule": "constant", "smooth": 0.0, "centre": False, "gate": 0.0}


def unresolved_keys(config: RunConfig) -> list[str]:
    """Keys of ``config`` not yet decided (steps/cfg: the pipeline's own; no init_bank: the stored run's)."""
    keys = [k for k in ("steps", "cfg") if getattr(config, k) is None]
    return keys + (["init_bank"] if config.init_bank is None else [])


def config_differences(
    stored: dict[str, Any], current: dict[str, Any], skip: Iterable[str] = ()
) -> list[str]:
    """Human-readable differences between two ``RunConfig.to_json()`` dicts (keys in ``skip`` ignored)."""
    diffs: list[str] = []
    skip = set(skip)
    if stored.get("method") != current.get("method"):
        skip.add("settings")  # another method has other settings: the method's difference says it all
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
                if name not in b:
                    diffs.append(f"{name} was {a[name]!r}, now not set")
                elif name not in a:
                    if name in ADDED_SETTINGS and b[name] == ADDED_SETTINGS[name]:
                        continue  # a folder from before the setting existed ran with this value
                    diffs.append(f"{name} was not set, now {b[name]!r}")
                elif a[name] != b[name]:
                    diffs.append(f"{name} was {a[name]!r}, now {b[name]!r}")
        elif key == "init_bank":
            diffs.append(f"bank was {_bank_name(a)}, now {_bank_name(b)}")
        else:
            diffs.append(f"{key} was {a!r}, now {b!r}")
    return diffs


def _bank_name(init_bank: Any) -> str:
    return "none" if not init_bank else repr(str(init_bank.get("path")))


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
    processes, process r takes items r, r + k, ... of each round of k items (see ``sparke.runs.generation``).
    """
    n, size = config.n_images, config.batch_size
    return [
        WorkItem(b, tuple(range(start, min(start + size, n)))) for b, start in enumerate(range(0, n, size))
    ]


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

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

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
        except FileExistsError:
            raise RunError(f"{self.path}: is a file, not a folder") from None
        except NotADirectoryError:
            raise RunError(f"{self.path}: a parent of this path is a file, not a folder") from None
        except PermissionError:
            raise RunError(f"{self.path}: permission denied; choose an output folder you can write") from None
        except OSError as error:
            raise RunError(f"{self.path}: cannot write here ({error.strerror or error})") from None
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
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            honour_umask(fd)
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, format="PNG")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
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
def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename (mode from the umask)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        honour_umask(fd)
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


def file_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file."""
    return {"size": os.stat(path).st_size, "sha256": file_sha256(path)}
