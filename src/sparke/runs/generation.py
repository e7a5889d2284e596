"""The generation engine behind ``sparke generate``: load a model, plan the batches, run and commit them.

    config = RunConfig(prompts=[PromptEntry("a red circle")], method="sparke", scale=0.03, ...)
    summary = generate(config, "runs/x")          # resumes when runs/x holds the same run

The loop is three pure-ish steps so that work can be sharded across processes without rewriting it:
``plan(config)`` lists the batches (``sparke.runs.folder``), ``run_item(session, item)`` makes one batch (images and
the bank rows it added) and ``commit(session, item, result)`` writes it (PNGs, manifest lines, bank). A
multi-process driver runs each round of k items as: rank r ``run_item``s item r of the round, all ranks
all-gather the new rows into their banks in item order, rank 0 ``commit``s the round (``sparke.runs.distributed``
is that driver, used by ``generate`` under ``torchrun`` / ``accelerate launch``).

Per-image seeds come from ``image_seed(seed, index)`` with one CPU generator per image, so an image does not
depend on the device's random stream or on which batch it falls in; with a bank-based guide it does depend on
the earlier batches, which a resumed run replays from the saved bank exactly.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparke.core import Bank, BankFileError
from sparke.core.auto import AutoBank, load_bank
from sparke.core.files import honour_umask
from sparke.guidance.spaces import space_label
from sparke.methods import METHODS

from .folder import (
    BANK_FILE,
    PromptEntry,
    RunConfig,
    RunError,
    RunFolder,
    WorkItem,
    config_differences,
    file_sha256,
    image_seed,
    plan,
    repair_command,
    unresolved_keys,
)
from .lock import RunLock

__all__ = [
    "BatchResult",
    "GenerateSummary",
    "Session",
    "commit",
    "as_pil",
    "generate_single",
    "load_model",
    "model_record",
    "open_session",
    "resolve_device",
    "run_item",
]

EMBEDDED = "embedded"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# -- devices and models -----------------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; anything else is checked to exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RunError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RunError(f"--device {device}: MPS is not available on this machine")
    return str(dev)


def resolve_dtype(dtype: str, device: str, model: str) -> str:
    """``auto`` -> float16 for hub/folder models on CUDA, float32 otherwise (and always for the embedded one)."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") and model != EMBEDDED else "float32"
    if dtype not in DTYPES:
        raise RunError(f"--dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    return dtype


def model_record(model: str) -> str:
    """How a model is named in run files: ``embedded``, a local folder's absolute path, or the hub id."""
    if model == EMBEDDED:
        return model
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _looks_like_path(model: str) -> bool:
    # hub ids are "name" or "org/name"; anything else with a separator or a leading ./ ~ / is meant as a folder
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def load_model(model: str, device: str = "cpu", dtype: str = "float32") -> Any:
    """A diffusers pipeline on ``device`` with its progress bar off; ``RunError`` with one line when missing.

    ``embedded``: the shipped shapes model. A folder: ``DiffusionPipeline.from_pretrained`` (a saved
    ``ShapesPipeline`` too). Otherwise a hub id, from the local cache when the hub is offline.
    """
    torch_dtype = DTYPES[dtype]
    quiet_loading()
    if model == EMBEDDED:
        from sparke.embedded.pipeline import load_pipeline

        try:
            pipe = load_pipeline(device=device, dtype=torch_dtype)
        except FileNotFoundError as error:
            raise RunError(
                f"the embedded model's weights are missing ({error}); reinstall sparke, or run `make retrain`"
            ) from None
        pipe.set_progress_bar_config(disable=True)
        return pipe
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        if not path.is_dir():
            raise RunError(f"--model {model}: no such folder")
        index = path / "model_index.json"
        if not index.is_file():
            raise RunError(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")
        try:
            class_name = json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError) as error:
            raise RunError(f"--model {model}: unreadable model_index.json ({error})") from None
    else:
        class_name = None
    try:
        if class_name == "ShapesPipeline":
            from sparke.embedded.pipeline import ShapesPipeline

            pipe = ShapesPipeline.from_pretrained(str(path), torch_dtype=torch_dtype)
        else:
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(
                str(path) if class_name else model,
                torch_dtype=torch_dtype,
                local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"),
            )
    except (OSError, ValueError, ImportError, AttributeError) as error:
        if class_name:
            raise RunError(f"--model {model}: cannot load this folder ({one_line(error)})") from None
        raise RunError(
            f"--model {model}: not a local folder nor in the Hugging Face cache ({one_line(error, 160)}); "
            "give a pipeline folder, or download the model once (`huggingface-cli download "
            f"{model}`) and rerun"
        ) from None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quiet_loading() -> None:
    """No loading progress bars (ours is the only one) and no ``torch_dtype`` rename warning."""
    import warnings

    warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def pipeline_defaults(pipe: Any) -> tuple[int, float]:
    """(num_inference_steps, guidance_scale) defaults of the pipeline's ``__call__`` (50 / 7.5 if absent)."""
    params = inspect.signature(pipe.__call__).parameters
    steps = params.get("num_inference_steps")
    cfg = params.get("guidance_scale")
    steps_v = steps.default if steps is not None and isinstance(steps.default, int) else 50
    cfg_v = cfg.default if cfg is not None and isinstance(cfg.default, (int, float)) else 7.5
    return int(steps_v), float(cfg_v)


# -- the session ------------------------------------------------------------------------------------------------
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


@dataclass
class BatchResult:
    """What one pipeline call made: PIL images (one per index) and the bank rows it added (or None)."""

    images: list[Any]
    rows_x: torch.Tensor | None = None
    rows_y: torch.Tensor | None = None


@dataclass
class GenerateSummary:
    """The outcome of ``generate``: images in the run, how many were made now, where, how long it took."""

    out: Path
    total: int
    generated: int
    resumed: int
    seconds: float
    bank_rows: int | None
    config: RunConfig = field(repr=False)


def _space(config: RunConfig) -> str:
    return space_label(str(config.settings.get("space", "latent")), bool(config.settings.get("centre")))


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
    """``RunError`` when a bank's metadata says another model, feature space or prompt encoder."""
    model = meta.get("model")
    if model is not None and model != config.model:
        raise RunError(f"{where}: bank of model {model!r}, but this run uses {config.model!r}")
    pipeline = meta.get("pipeline")
    if model is None and pipeline is not None and pipeline != type(pipe).__name__:
        raise RunError(f"{where}: bank of a {pipeline}, but this run uses a {type(pipe).__name__}")
    space = meta.get("space")
    if space is not None and space != _space(config):
        raise RunError(f"{where}: bank in feature space {space!r}, but this run guides in {_space(config)!r}")
    encoder = meta.get("prompt_encoder")
    wanted = config.settings.get("prompt_encoder", "pipeline")
    if encoder is not None and encoder != wanted:
        raise RunError(f"{where}: bank with prompt encoder {encoder!r}, but this run uses {wanted!r}")


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


def check_call_arguments(pipe: Any, config: RunConfig) -> None:
    """``RunError`` when the pipeline's ``__call__`` does not take an option the run sets (``--height`` on a
    fixed-size model, a height its autoencoder cannot make, ...): checked before the first batch."""
    params = inspect.signature(pipe.__call__).parameters
    name = type(pipe).__name__
    for option, key, value in (
        ("--height", "height", config.height),
        ("--width", "width", config.width),
        ("--negative-prompt", "negative_prompt", config.negative_prompt),
    ):
        if value is None:
            continue
        if key not in params:
            fixed = ""
            if key in ("height", "width") and getattr(pipe, "image_size", None):
                fixed = f" (it makes {pipe.image_size}x{pipe.image_size} images)"
            raise RunError(f"{option}: the model ({name}) takes no {key}{fixed}; leave {option} out")
    factor = getattr(pipe, "vae_scale_factor", None)
    for option, value in (("--height", config.height), ("--width", config.width)):
        if value is None:
            continue
        if value < 1:
            raise RunError(f"{option} {value}: must be a positive number of pixels")
        if isinstance(factor, int) and factor > 1 and value % factor:
            raise RunError(f"{option} {value}: the model ({name}) needs a multiple of {factor}")
    for option, key, value in (
        ("--steps", "num_inference_steps", config.steps),
        ("--cfg", "guidance_scale", config.cfg),
    ):
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if value is not None and key not in params and not takes_any:
            raise RunError(f"{option}: the model ({name}) takes no {key}; leave {option} out")
    if config.steps is not None and config.steps < 1:
        raise RunError(f"--steps {config.steps}: must be at least 1")


def bank_placement(pipe: Any) -> tuple[torch.device, torch.dtype]:
    """Where a run's bank lives: the pipeline's execution device, in half precision on CUDA."""
    from sparke.guidance.plugin import execution_device

    device = execution_device(pipe)
    return device, (torch.float16 if device.type == "cuda" else torch.float32)


def place_bank(bank: Any, pipe: Any) -> Any:
    """``bank`` moved to the pipeline's device and dtype (its files stay loadable on a CPU)."""
    if hasattr(bank, "to"):
        device, dtype = bank_placement(pipe)
        moved = bank.to(device, dtype)
        return bank if moved is None else moved
    return bank


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


# -- one batch --------------------------------------------------------------------------------------------------
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


def run_item(session: Session, item: WorkItem) -> BatchResult:
    """Generate one batch; the guide's bank grows by one row per image (returned as ``rows_x``/``rows_y``)."""
    bank = session.bank
    before = len(bank) if bank is not None else 0
    out = session.guide(session.pipe, **call_kwargs(session.config, item))
    images = as_pil(out.images if hasattr(out, "images") else out[0])
    if len(images) != len(item.indices):
        raise RuntimeError(f"the pipeline returned {len(images)} images for a batch of {len(item.indices)}")
    if bank is None:
        return BatchResult(images)
    added = len(bank) - before
    if bank.capacity is None and added != len(item.indices):
        raise RuntimeError(f"the guide added {added} bank rows for {len(item.indices)} images")
    m = len(item.indices)
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
        bank.metadata["run"] = {
            "fingerprint": config.fingerprint(),
            "committed_batches": session.committed_batches,
            "committed_images": sum(len(session.items[b].indices) for b in range(session.committed_batches)),
            "initial_rows": session.initial_rows,
        }
        save_bank(bank, folder.path / BANK_FILE)
    return len(records)


def save_bank(bank: Any, path: Path) -> None:
    """``bank.save(path)``, with the file's mode from the umask even for a user's bank class."""
    bank.save(path)
    honour_umask(path)


# -- the whole run ----------------------------------------------------------------------------------------------
def generate_single(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    device: str = "auto",
    pipe: Any = None,
    on_start: Callable[[Session], None] | None = None,
    on_batch: Callable[[Session, int], None] | None = None,
) -> GenerateSummary:
    """Generate (or resume) the run ``config`` in folder ``out``; see the module docstring.

    ``on_start(session)`` is called once before the first batch, ``on_batch(session, new_images)`` after each.
    One process; ``sparke.runs.generate`` dispatches to ``generate_distributed`` under a launcher.
    """
    start = time.perf_counter()
    session = open_session(config, out, device=device, pipe=pipe)
    try:
        return _generate_session(session, start, on_start, on_batch)
    except BaseException:
        session.abandon()
        raise
    finally:
        session.close()


def _generate_session(
    session: Session,
    start: float,
    on_start: Callable[[Session], None] | None,
    on_batch: Callable[[Session, int], None] | None,
) -> GenerateSummary:
    resumed = session.done_images
    if on_start is not None:
        on_start(session)
    generated = 0
    for item in session.todo:
        try:
            result = run_item(session, item)
        except (TypeError, ValueError) as error:
            if not session.fresh:
                raise
            # the model refuses the run's arguments at its first call: one line, nothing left on disk
            raise RunError(
                f"the model ({type(session.pipe).__name__}) refused the first batch: {one_line(error)}"
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise RunError(
                f"out of GPU memory in batch {item.batch}: lower --batch-size; {session.done_images} images are "
                "saved, rerun to resume"
            ) from None
        try:
            count = commit(session, item, result)
        except OSError as error:
            # disk full, folder removed or made read-only mid-run: every earlier batch is whole on disk
            where = error.filename or session.folder.path
            raise RunError(
                f"cannot write {where} ({error.strerror or error}); the {session.done_images} images before it "
                "are saved: rerun the same command to resume"
            ) from None
        generated += count
        if on_batch is not None:
            on_batch(session, count)
    bank = session.bank
    return GenerateSummary(
        out=session.folder.path,
        total=session.config.n_images,
        generated=generated,
        resumed=resumed,
        seconds=time.perf_counter() - start,
        bank_rows=None if bank is None else len(bank),
        config=session.config,
    )


def one_line(error: BaseException | str, limit: int = 240) -> str:
    """The first line of an error's message, without library prefixes, cut at a word (never mid-word)."""
    text = str(error).strip() or type(error).__name__
    text = text.splitlines()[0].strip()
    for prefix in ("Value error, ", "Assertion failed, ", "Type error, "):  # pydantic's wording
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        text = text[: cut if cut > limit // 2 else limit].rstrip(" ,;:") + " ..."
    return text
