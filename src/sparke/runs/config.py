"""What defines a run: its prompts (read from a file, checked against the embedded shapes world's vocabulary when
they require attributes), its ``RunConfig`` as recorded in ``run.json``, how two configs differ, and its plan
(the batches, with one seed per image). Nothing here touches a run folder (``sparke.runs.folder`` does)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ADDED_SETTINGS",
    "PromptEntry",
    "RunConfig",
    "RunError",
    "WorkItem",
    "check_required",
    "config_differences",
    "file_error",
    "image_seed",
    "plan",
    "read_prompts",
    "unresolved_keys",
]

FORMAT = "sparke.run"
FORMAT_VERSION = 1


class RunError(Exception):
    """Bad input or an unusable run folder; the message is one line for the user, no traceback needed."""


def file_error(
    path: str | os.PathLike, error: OSError, doing: str, reasons: dict[type[OSError], str] | None = None
) -> RunError:
    """The one-line ``RunError`` for ``error`` raised while ``doing`` something with ``path``: the reason
    ``reasons`` gives for the error's kind (checked in order), else "cannot <doing> (<the system's words>)"."""
    for kind, reason in (reasons or {}).items():
        if isinstance(error, kind):
            return RunError(f"{path}: {reason}")
    return RunError(f"{path}: cannot {doing} ({error.strerror or error})")


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
    except UnicodeDecodeError:
        raise RunError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        reasons = {
            FileNotFoundError: "no such prompt file",
            IsADirectoryError: "is a folder, not a prompt file",
        }
        raise file_error(path, error, "read the prompt file", reasons) from None
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
ADDED_SETTINGS: dict[str, Any] = {
    "step_schedule": "constant",
    "smooth": 0.0,
    "centre": False,
    "crossover": None,
    "neighbors": 256,
    "samples": None,
    "gate": 0.0,
    "orthogonal": False,
    "crowding": 0.0,
    "motion": 0.0,
    "warp": False,
}


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
            diffs += _settings_differences(a, b, stored.get("steps"))
        elif key == "scale" and stored.get("method") == "sparke" and _made_with_old_default("scale", a, b):
            continue
        elif key == "init_bank":
            diffs.append(f"bank was {_bank_name(a)}, now {_bank_name(b)}")
        else:
            diffs.append(f"{key} was {a!r}, now {b!r}")
    return diffs


def _settings_differences(a: dict[str, Any], b: dict[str, Any], steps: Any) -> list[str]:
    diffs: list[str] = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            diffs.append(f"{name} was {a[name]!r}, now not set")
        elif name not in a:
            if name in ADDED_SETTINGS and b[name] == ADDED_SETTINGS[name]:
                continue  # a folder from before the setting existed ran with this value
            diffs.append(f"{name} was not set, now {b[name]!r}")
        elif a[name] != b[name] and not (
            (name == "every" and _same_every(a[name], b[name], steps))
            or _made_with_old_default(name, a[name], b[name])
        ):
            diffs.append(f"{name} was {a[name]!r}, now {b[name]!r}")
    return diffs


# SPARKE's settings whose default changed, and their default before (CHANGELOG.md, 0.2): a folder made with the
# old default resumes as it was made when the command now gets the new one (the run keeps its recorded settings).
OLD_DEFAULTS: dict[str, Any] = {"every": "auto", "scale": 0.05}


def _made_with_old_default(name: str, stored: Any, current: Any) -> bool:
    from sparke.guidance.options import DEFAULTS

    return name in OLD_DEFAULTS and stored == OLD_DEFAULTS[name] and current == DEFAULTS[name] != stored


def _same_every(a: Any, b: Any, steps: Any) -> bool:
    """``every="auto"`` is the interval it resolves to for the run's steps: a folder made with every=10 before
    "auto" became the default (10 from 20 steps on) resumes unchanged."""
    from sparke.guidance.schedule import auto_every

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        return False
    resolved = [auto_every(steps) if v == "auto" else v for v in (a, b)]
    return resolved[0] == resolved[1]


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
