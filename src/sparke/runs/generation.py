"""The generation engine behind ``sparke generate``: load a model, plan the batches, run and commit them.

Its parts: ``model`` (device, dtype, loading), ``session`` (open, reconcile, restore, roll back), ``batch``
(one batch, shared by the single- and multi-process drivers) and, here, the single-process loop; the names
of all of them are importable from here as before.

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

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .batch import BatchResult, as_pil, call_kwargs, commit, manifest_record, run_item, save_bank
from .config import RunConfig, RunError
from .model import (
    DTYPES,
    EMBEDDED,
    bank_placement,
    check_call_arguments,
    load_model,
    model_record,
    one_line,
    pipeline_defaults,
    place_bank,
    quiet_loading,
    resolve_device,
    resolve_dtype,
)
from .session import Session, check_bank_compatible, open_session

# the names of the engine's parts, importable from here as before the split
__all__ = [
    "DTYPES",
    "EMBEDDED",
    "BatchResult",
    "GenerateOptions",
    "GenerateSummary",
    "Session",
    "as_pil",
    "bank_placement",
    "call_kwargs",
    "check_bank_compatible",
    "check_call_arguments",
    "commit",
    "generate_single",
    "load_model",
    "manifest_record",
    "model_record",
    "one_line",
    "open_session",
    "pipeline_defaults",
    "place_bank",
    "quiet_loading",
    "resolve_device",
    "resolve_dtype",
    "run_item",
    "save_bank",
]


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


@dataclass(frozen=True, kw_only=True)
class GenerateOptions:
    """The keywords of ``generate`` (and of its drivers ``generate_single``/``generate_distributed``).

    ``device``: "auto", "cpu", "cuda", "cuda:1", ...; ``pipe``: a ready pipeline used instead of loading the
    config's model; ``on_start(session)`` is called once before the first batch, ``on_batch(session,
    new_images)`` after each (on rank 0 only under a launcher).
    """

    device: str = "auto"
    pipe: Any = None
    on_start: Callable[[Session], None] | None = None
    on_batch: Callable[[Session, int], None] | None = None


def generate_single(config: RunConfig, out: str | os.PathLike, **options: Any) -> GenerateSummary:
    """Generate (or resume) the run ``config`` in folder ``out``; ``options``: those of ``GenerateOptions``.

    One process; ``sparke.runs.generate`` dispatches to ``generate_distributed`` under a launcher.
    """
    opts = GenerateOptions(**options)
    start = time.perf_counter()
    session = open_session(config, out, device=opts.device, pipe=opts.pipe)
    try:
        return _generate_session(session, start, opts)
    except BaseException:
        session.abandon()
        raise
    finally:
        session.close()


def _generate_session(
    session: Session,
    start: float,
    opts: GenerateOptions,
) -> GenerateSummary:
    resumed = session.done_images
    if opts.on_start is not None:
        opts.on_start(session)
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
        if opts.on_batch is not None:
            opts.on_batch(session, count)
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
