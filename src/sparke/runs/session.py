"""The session of a run: open a folder (check options, model and folder before writing anything), reconcile
what it holds (bank, manifest, images), restore the bank, and roll it back to the first batch with a missing
image (``bank.truncate``, so what is made again is bit-exact)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparke.core import Bank, BankFileError
from sparke.core.auto import AutoBank, load_bank
from sparke.guidance.spaces import space_label
from sparke.methods import METHODS

from .config import RunConfig, RunError, WorkItem, config_differences, plan, unresolved_keys
from .folder import RunFolder, file_sha256, repair_command
from .lock import RunLock
from .model import check_call_arguments, load_model, one_line, pipeline_defaults, place_bank, resolve_device

__all__ = ["Session", "check_bank_compatible", "open_session"]


@dataclass
class Session:
    """A run being generated: its config (resolved), folder, pipeline, guide and progress."""

    config: RunConfig
    folder: RunFolder
    pipe: Any
    guide: Any
    items: list[WorkItem]
    todo: list[WorkItem]
    records: dict[int, dict[str, Any]]
    committed_batches: int = 0
    initial_rows: int = 0
    fresh: bool = False  # no run.json yet: it is written with the first batch
    notes: list[str] = field(default_factory=list)
    made: list[Path] = field(default_factory=list)  # folders this session created
    lock: RunLock | None = None

    @property
    def bank(self) -> Any:
        return getattr(self.guide, "bank", None)

    def write_config_once(self) -> None:
        """Write ``run.json`` before the first batch is committed (a start that fails earlier leaves none)."""
        if self.fresh:
            self.folder.write_config(self.config)
            self.fresh = False

    def abandon(self) -> None:
        """After a failure: release the lock and, when nothing was committed, remove the folders this session
        made (when empty), so the disk is as it was."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.fresh:
            for folder in reversed(self.made):
                try:
                    folder.rmdir()
                except OSError:
                    break  # not empty (or gone): keep it and everything above it
        self.made = []

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def done_images(self) -> int:
        return len(self.records)


def _space(config: RunConfig) -> str:
    return space_label(str(config.settings.get("space", "latent")), config.settings.get("centre") or False)


def _bank_metadata(config: RunConfig) -> dict[str, Any]:
    s = config.settings
    meta = {
        "model": config.model,
        "method": config.method,
        "space": _space(config),
        "prompt_encoder": s.get("prompt_encoder", "pipeline"),
        "kernel": s.get("kernel", "gaussian"),
        "objective": s.get("objective"),
        "sigma_image": s.get("sigma_image"),
        "sigma_prompt": s.get("sigma_prompt"),
        "scale": config.scale,
    }
    return {k: v for k, v in meta.items() if v is not None}


def check_bank_compatible(meta: dict[str, Any], config: RunConfig, pipe: Any, where: str) -> None:
    """``RunError`` when a bank's metadata says another model, feature space or prompt encoder
    (``sparke.core.compat.bank_mismatch``, the check the library makes too)."""
    from sparke.core.compat import bank_mismatch

    problem = bank_mismatch(
        meta,
        model=config.model,
        pipeline=type(pipe).__name__,
        space=_space(config),
        prompt_encoder=config.settings.get("prompt_encoder", "pipeline"),
    )
    if problem:
        raise RunError(f"{where}: {problem}")


def _load_bank(path: Path, where: str, like: Any = None) -> Any:
    """The bank file at ``path`` (exact or indexed), as the same kind of bank as ``like`` (the guide's own):
    ``load_bank``, with ``RunError`` naming ``where`` for a missing or bad file."""
    try:
        return load_bank(path, like=like)
    except FileNotFoundError:
        raise RunError(f"{where}: no such bank file") from None
    except BankFileError as error:
        message = str(error)
        for name in (str(path), os.fspath(Path(path).resolve())):
            if message.startswith(f"{name}: "):  # the error names the file already: say it once
                message = message[len(name) + 2 :]
        raise RunError(f"{where}: {message}") from None


def open_session(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    device: str = "auto",
    pipe: Any = None,
    writer: bool = True,
) -> Session:
    """Check everything, then take the folder: options, the model and its arguments, the folder's own record
    and banks are checked before anything is written, so a refused start leaves the disk as it was.

    ``writer``: this process writes the folder (it takes the lock, cuts a damaged manifest tail and removes
    damaged images, which are then made again). Ranks other than 0 of a launcher open with ``writer=False``
    after rank 0 did, and read the folder as it is. Notes for the user (what was repaired) are in
    ``session.notes``.
    """
    folder, stored = _checked_folder(config, out)
    spec = METHODS[config.method]
    try:
        guide = spec.build(config.scale, dict(config.settings))
    except (ValueError, TypeError) as error:  # the method's own check of its settings
        raise RunError(f"--method {config.method}: {one_line(error)}") from None

    if pipe is None:
        device = resolve_device(device)
        pipe = load_model(config.model, device, config.dtype)
    check_call_arguments(pipe, config)
    steps, cfg = pipeline_defaults(pipe)
    config.steps = steps if config.steps is None else config.steps
    config.cfg = cfg if config.cfg is None else config.cfg
    if stored is not None:
        skip = ["init_bank"] if config.init_bank is None else []
        _refuse_if_different(folder, stored, config.to_json(), skip)
        config = RunConfig.from_json(stored)  # the folder's own record (it keeps init_bank)
        guide = spec.build(config.scale, dict(config.settings))  # as recorded (an old default included)

    items = plan(config)
    session = Session(config, folder, pipe, guide, items, [], {})
    session.fresh = stored is None
    init_bank = None
    if session.bank is not None and config.init_bank is not None and not folder.bank_file.exists():
        init_bank = _load_init_bank(session, pipe)  # checked before the folder is touched

    if not writer:
        return _reconcile(session, stored, init_bank, writer=False)
    made = folder.create()
    session.made = made
    session.lock = RunLock(folder.path)
    try:
        note = session.lock.acquire()
        if note:
            session.notes.append(note)
        if folder.read_config() != stored:
            raise RunError(f"{folder.path}: another process started a run here meanwhile; rerun to resume it")
        return _reconcile(session, stored, init_bank, writer=True)
    except BaseException:
        session.abandon()
        raise


def _checked_folder(config: RunConfig, out: str | os.PathLike) -> tuple[RunFolder, dict | None]:
    """The run's options checked, and its folder with the record it holds (None: a new run), refused when the
    record's settings differ from ``config``'s."""
    if config.method not in METHODS:
        raise RunError(f"--method {config.method!r}: choose one of {', '.join(METHODS)}")
    if not config.prompts:
        raise RunError("no prompts: give --prompt TEXT or --prompts FILE")
    if config.images_per_prompt < 1 or config.batch_size < 1:
        raise RunError("--images-per-prompt and --batch-size must be at least 1")
    folder = RunFolder(out)
    folder.check_target()
    stored = folder.read_config()
    if stored is None and (folder.manifest_file.exists() or folder.bank_file.exists()):
        raise RunError(f"{folder.path}: has a manifest or bank but no run.json; not a sparke run folder")
    if stored is not None:  # a resumed run keeps the bank it started from
        _refuse_if_different(folder, stored, config.to_json(), unresolved_keys(config))
    return folder, stored


def _reconcile(session: Session, stored: dict | None, init_bank: Any, *, writer: bool) -> Session:
    """Read what the folder holds (bank, manifest, images) and decide what is left to make."""
    folder, items, pipe = session.folder, session.items, session.pipe
    bank = None
    if session.bank is not None:
        bank = _restore_bank(session, pipe, init_bank)
    if writer:
        removed = folder.remove_stale_temporaries()
        if removed and stored is not None:
            session.notes.append(
                f"removed {removed} temporary file{'s' if removed > 1 else ''} of an interrupted run"
            )
        note = folder.repair_manifest_tail()
        if note:
            session.notes.append(note)
    records = folder.read_manifest()
    n = session.config.n_images
    stray = sorted(i for i in records if i >= n)
    if stray:
        raise RunError(
            f"{folder.manifest_file}: lists image {stray[0]}, but the run has {n}; run `{repair_command(folder.path)}`"
        )
    problems = folder.verify(records, deep=writer)
    if writer and problems:
        _note_problems(session, problems, records)
        for index in problems:
            if problems[index] != "missing":
                (folder.path / records[index]["file"]).unlink(missing_ok=True)  # made again below
    finished = set(records) - set(problems)
    session.records = {i: r for i, r in records.items() if i in finished}

    def complete(item: WorkItem) -> bool:
        return all(i in finished for i in item.indices)

    if bank is None:
        session.todo = [item for item in items if not complete(item)]
        return session
    session.guide.bank = bank
    committed = session.committed_batches
    first_missing = next((b for b in range(committed) if not complete(items[b])), committed)
    if first_missing < committed:
        _roll_back(session, first_missing)
    session.todo = items[session.committed_batches :]
    return session


def _note_problems(session: Session, problems: dict[int, str], records: dict[int, dict[str, Any]]) -> None:
    missing = [i for i, p in problems.items() if p == "missing"]
    damaged = {i: p for i, p in problems.items() if p != "missing"}
    for index, problem in list(damaged.items())[:3]:
        session.notes.append(f"{records[index]['file']} is damaged ({problem}): making it again")
    if len(damaged) > 3:
        session.notes.append(f"and {len(damaged) - 3} more damaged images: making them again")
    if missing:
        shown = ", ".join(records[i]["file"] for i in missing[:3]) + (" ..." if len(missing) > 3 else "")
        session.notes.append(
            f"{len(missing)} image{'s' if len(missing) > 1 else ''} of the manifest missing ({shown}): making "
            f"{'them' if len(missing) > 1 else 'it'} again"
        )


def _refuse_if_different(folder: RunFolder, stored: dict, current: dict, skip: list[str]) -> None:
    diffs = config_differences(stored, current, skip)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise RunError(
            f"{folder.path} holds a run made with other settings ({shown}): use another --out, or the "
            "same options to resume it"
        )


def _load_init_bank(session: Session, pipe: Any) -> Any:
    """The --bank a run starts from, checked against the run (model, space, prompt encoder, unchanged file)."""
    config = session.config
    path = Path(config.init_bank["path"])
    where = f"--bank {path}"
    bank = _load_bank(path, where, like=session.bank)
    check_bank_compatible(bank.metadata, config, pipe, where)
    if config.init_bank.get("sha256") not in (None, file_sha256(path)):
        raise RunError(f"{where}: the file changed since this run started from it")
    return bank


def _restore_bank(session: Session, pipe: Any, init_bank: Any = None) -> Any:
    """The run's bank from its file, or the --bank it starts from, or a fresh one; checked against the run,
    and placed on the pipeline's device (fp16 on CUDA)."""
    config, folder = session.config, session.folder
    if folder.bank_file.exists():
        bank = _load_bank(folder.bank_file, str(folder.bank_file), like=session.bank)
        check_bank_compatible(bank.metadata, config, pipe, str(folder.bank_file))
        run = bank.metadata.get("run") or {}
        if run.get("fingerprint") not in (None, config.fingerprint()):
            raise RunError(
                f"{folder.bank_file}: this bank belongs to another run (copied from another folder?)"
            )
        session.committed_batches = int(run.get("committed_batches", 0))
        session.initial_rows = int(run.get("initial_rows", 0))
        expected = session.initial_rows + sum(
            len(session.items[b].indices) for b in range(session.committed_batches)
        )
        if bank.capacity is None and len(bank) != expected:
            raise RunError(f"{folder.bank_file}: holds {len(bank)} rows, the run's records say {expected}")
        return place_bank(bank, pipe)
    if config.init_bank is not None:
        bank = init_bank if init_bank is not None else _load_init_bank(session, pipe)
        session.initial_rows = len(bank)
    else:  # the guide's own new bank: AutoBank for SPARKE, a sliding Bank for Vendi guidance
        bank = session.bank
    bank.metadata.update(_bank_metadata(config))
    return place_bank(bank, pipe)


def _roll_back(session: Session, batches: int) -> None:
    """Keep only the bank rows of the first ``batches`` batches (their images were removed from the folder):
    ``bank.truncate``, which puts the bank back as it was then (kept sums, the index's random state), so the
    batches made again are the same bit for bit. A bank without ``truncate``, or from a file of an older sparke
    that does not remember that far back, is rebuilt from its rows (its normaliser then recomputed)."""
    bank = session.bank
    keep = session.initial_rows + sum(len(session.items[b].indices) for b in range(batches))
    if bank.capacity is not None:
        raise RunError(
            f"{session.folder.path}: images of batch {batches} are missing but the bank (with a capacity) "
            "cannot be rolled back; delete bank.safetensors and manifest.jsonl to start over"
        )
    session.committed_batches = batches
    try:
        bank.truncate(keep)
        return
    except (AttributeError, ValueError):
        pass
    if isinstance(bank, AutoBank):
        fresh = AutoBank(device=bank.device, dtype=bank.dtype, metadata=bank.metadata, **bank.options())
    else:
        fresh = Bank(bank.capacity, device=bank.device, dtype=bank.dtype, metadata=bank.metadata)
    fresh.add(bank.x[:keep], None if bank.y is None else bank.y[:keep])
    session.guide.bank = fresh
