"""Several processes generating one run: ``torchrun`` / ``accelerate launch -m sparke generate ...``.

    torchrun --nproc_per_node=4 -m sparke generate --prompts p.txt -o runs/x ...
    accelerate launch -m sparke generate --prompts p.txt -o runs/x ...

The launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) turns
``sparke.runs.generate`` into ``generate_distributed``. The run is cut into rounds of ``world`` work
items of ``plan`` (what is left of it): in round k, rank r makes item ``k * world + r`` and writes its own
PNGs (atomically); then every rank all-gathers the round's new bank rows and manifest records (padded
tensors plus counts: no pickle) and adds all the rows to its bank in item order, so every process guides the
next round against the same global bank. Rank 0 alone appends the round's manifest lines and saves the bank,
exactly as a single process commits those batches (the folder is the same format, and a single process can
resume it and vice versa). A rank without an item in the last round still takes part and sends zero rows.

Resume: the manifest is the source of truth. On restart every rank reads the folder (rank 0 first repairs
it: stale temporaries, a torn manifest line), skips what the manifest holds, and reloads the bank from its
file; a round whose bank was not saved is made again (same seeds, same bank: the same images) and its images
already in the manifest are not written twice. Within a round the items do not see each other's rows, so a
guided run differs from a single-process one (an unguided one, scale 0, is identical).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from .batch import BatchResult, guide_images, manifest_record, run_record, save_bank
from .config import RunConfig, RunError, WorkItem
from .folder import BANK_FILE
from .generation import GenerateOptions, GenerateSummary
from .model import load_model, resolve_device
from .session import Session, open_session

__all__ = ["DistEnv", "dist_env", "generate_distributed", "is_main_process"]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int


def dist_env() -> DistEnv | None:
    """The launcher's ranks when more than one process runs (``WORLD_SIZE`` > 1), else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistEnv(rank, world, local)


def is_main_process() -> bool:
    env = dist_env()
    return env is None or env.rank == 0


# -- collectives --------------------------------------------------------------------------------------------
class _DeferredBank:
    """The guide's view of the global bank during one batch: reads go to the bank, ``add`` is held back (the
    rows join the bank after the round's all-gather, in item order)."""

    def __init__(self, bank: Any) -> None:
        self._bank = bank
        self.rows: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)

    def __len__(self) -> int:
        return len(self._bank)

    def add(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        x = torch.as_tensor(x).detach()
        y = None if y is None else torch.as_tensor(y).detach()
        if self.rows is not None:
            px, py = self.rows
            x = torch.cat([px, x.to(px.device)])
            y = None if py is None or y is None else torch.cat([py, y.to(py.device)])
        self.rows = (x, y)


def _run_local(session: Session, item: WorkItem) -> BatchResult:
    """Make one batch against the global bank without adding to it; its rows come back in the result."""
    bank = session.bank
    if bank is None:
        return BatchResult(guide_images(session, item))
    deferred = _DeferredBank(bank)
    session.guide.bank = deferred
    try:
        images = guide_images(session, item)
    finally:
        session.guide.bank = bank
    m = len(item.indices)
    if deferred.rows is None or deferred.rows[0].shape[0] != m:
        got = 0 if deferred.rows is None else deferred.rows[0].shape[0]
        raise RuntimeError(f"the guide added {got} bank rows for {m} images")
    return BatchResult(images, deferred.rows[0], deferred.rows[1])


def _gather_padded(tensor: torch.Tensor, rows: int, comm: torch.device) -> list[torch.Tensor]:
    """All-gather tensors of equal trailing shape and up to ``rows`` rows (padded; callers cut by counts)."""
    import torch.distributed as dist

    padded = torch.zeros((rows, *tensor.shape[1:]), dtype=tensor.dtype, device=comm)
    padded[: tensor.shape[0]] = tensor.to(comm)
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return parts


def _gather_round(
    result: BatchResult | None, records: list[dict[str, Any]], comm: torch.device
) -> tuple[list[tuple[torch.Tensor | None, torch.Tensor | None]], list[list[dict[str, Any]]]]:
    """Every rank's (rows_x, rows_y) and manifest records of this round, in rank order."""
    import torch.distributed as dist

    x = None if result is None else result.rows_x
    y = None if result is None else result.rows_y
    blob = json.dumps(records, ensure_ascii=False).encode()
    header = torch.tensor(
        [
            0 if x is None else x.shape[0],
            0 if x is None else x.shape[1],
            -1 if y is None else y.shape[1],
            len(blob),
        ],
        dtype=torch.int64,
        device=comm,
    )
    headers = [torch.empty_like(header) for _ in range(dist.get_world_size())]
    dist.all_gather(headers, header)
    heads = [h.tolist() for h in headers]
    max_m = max(h[0] for h in heads)
    dx = max(h[1] for h in heads)
    dy = max(h[2] for h in heads)
    max_bytes = max(h[3] for h in heads)

    xs: list[torch.Tensor | None] = [None] * len(heads)
    ys: list[torch.Tensor | None] = [None] * len(heads)
    if max_m:
        local_x = x.float() if x is not None else torch.zeros((0, dx))
        gathered = _gather_padded(local_x, max_m, comm)
        xs = [g[: h[0]].cpu() for g, h in zip(gathered, heads, strict=True)]
        if dy >= 0:
            local_y = y.float() if y is not None else torch.zeros((0, dy))
            gathered = _gather_padded(local_y, max_m, comm)
            ys = [g[: h[0]].cpu() if h[2] >= 0 else None for g, h in zip(gathered, heads, strict=True)]
    local_b = (
        torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    )
    gathered = _gather_padded(local_b, max_bytes, comm)
    recs = [json.loads(bytes(g[: h[3]].cpu().tolist())) for g, h in zip(gathered, heads, strict=True)]
    return list(zip(xs, ys, strict=True)), recs


def _agree(error: BaseException | None, comm: torch.device, what: str) -> None:
    """Raise on every rank when any rank failed (its own error there, a pointer to it elsewhere)."""
    import torch.distributed as dist

    flag = torch.tensor([0 if error is None else 1], dtype=torch.int64, device=comm)
    flags = [torch.empty_like(flag) for _ in range(dist.get_world_size())]
    dist.all_gather(flags, flag)
    failed = [r for r, f in enumerate(flags) if int(f.item())]
    if error is not None:
        raise error
    if failed:
        raise RunError(f"{what} failed on rank {failed[0]} (its message is above)")


def _same_everywhere(values: list[int], comm: torch.device, what: str) -> None:
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.int64, device=comm)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    if any(not torch.equal(p, parts[0]) for p in parts):
        raise RunError(f"the processes disagree on {what}: {[p.tolist() for p in parts]}")


# -- the driver ---------------------------------------------------------------------------------------------
def generate_distributed(config: RunConfig, out: str | os.PathLike, **options: Any) -> GenerateSummary:
    """``generate`` across the launcher's processes (see the module docstring); ``options``: those of
    ``GenerateOptions``; callbacks run on rank 0 only."""
    import torch.distributed as dist

    opts = GenerateOptions(**options)
    env = dist_env()
    if env is None:
        raise RunError("generate_distributed: WORLD_SIZE is not above 1 (no launcher)")
    if not dist.is_available():
        raise RunError("torch.distributed is not available in this torch build")
    device = resolve_device(opts.device)
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{env.local_rank}" if device == "cuda" else device
        torch.cuda.set_device(torch.device(device))
    own_group = not dist.is_initialized()
    if own_group:
        backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    comm = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    try:
        return _drive(config, out, env, device, comm, opts)
    finally:
        if own_group:
            dist.destroy_process_group()


def _drive(
    config: RunConfig,
    out: str | os.PathLike,
    env: DistEnv,
    device: str,
    comm: torch.device,
    opts: GenerateOptions,
) -> GenerateSummary:
    start = time.perf_counter()
    pipe = opts.pipe
    main = env.rank == 0
    error: BaseException | None = None
    try:
        if pipe is None:
            pipe = load_model(config.model, device, config.dtype)
    except (RunError, OSError) as e:
        error = e
    _agree(error, comm, "loading the model")

    # rank 0 opens (and repairs) the folder first, then the others read it as it is
    session: Session | None = None
    for turn in (True, False):
        error = None
        if main == turn:
            try:
                session = open_session(config, out, device=device, pipe=pipe, writer=main)
            except (RunError, OSError) as e:
                error = e
        _agree(error, comm, "opening the run folder")
    assert session is not None
    try:
        return _rounds(session, env, comm, main, start, opts)
    except BaseException:
        session.abandon()
        raise
    finally:
        session.close()


def _make_local(session: Session, mine: Any) -> tuple[Any, list[dict[str, Any]]]:
    """This rank's batch of the round (None: it has none): the pipeline's result and the records of the images
    it wrote."""
    if mine is None:
        return None, []
    folder, cfg = session.folder, session.config
    result = _run_local(session, mine)
    records = []
    for i, image in zip(mine.indices, result.images, strict=True):
        if i not in session.records:
            rel = folder.write_png(i, image)
            records.append(manifest_record(cfg, i, mine.batch, rel, folder.stamp(rel)))
    folder.sync_images_dir()
    return result, records


def _commit_round(
    session: Session, round_items: list[Any], rows: list[Any], new: list[dict], main: bool
) -> None:
    """Every rank adds the round's gathered rows to its bank; rank 0 writes the manifest and the bank."""
    bank, folder = session.bank, session.folder
    if bank is not None:
        for item, (x, y) in zip(round_items, rows, strict=False):
            if x is None or x.shape[0] != len(item.indices):
                raise RuntimeError(f"batch {item.batch}: gathered {0 if x is None else x.shape[0]} rows")
            bank.add(x, y)
    if main:
        session.write_config_once()
        folder.append_manifest(new)
    for record in new:
        session.records[int(record["index"])] = record
    if bank is not None:
        if round_items[0].batch != session.committed_batches:
            raise RuntimeError(f"batch {round_items[0].batch} after {session.committed_batches} batches")
        session.committed_batches = round_items[-1].batch + 1
        bank.metadata["run"] = run_record(session)
        if main:
            save_bank(bank, folder.path / BANK_FILE)


def _rounds(
    session: Session,
    env: DistEnv,
    comm: torch.device,
    main: bool,
    start: float,
    opts: GenerateOptions,
) -> GenerateSummary:
    """The rounds of a run whose folder rank 0 holds (its lock, and every file but the ranks' own PNGs)."""
    bank = session.bank
    _same_everywhere(
        [len(session.todo), session.committed_batches, -1 if bank is None else len(bank)],
        comm,
        "what is left of the run",
    )
    resumed = session.done_images
    if main and opts.on_start is not None:
        opts.on_start(session)

    folder, cfg = session.folder, session.config
    todo, world = session.todo, env.world
    generated = 0
    for first in range(0, len(todo), world):
        round_items = todo[first : first + world]
        mine = round_items[env.rank] if env.rank < len(round_items) else None
        result, records = _make_local(session, mine)
        rows, recs = _gather_round(result, records, comm)
        new = [r for part in recs for r in part]
        _commit_round(session, round_items, rows, new, main)
        generated += len(new)
        if main and opts.on_batch is not None:
            opts.on_batch(session, len(new))

    import torch.distributed as dist

    dist.barrier()  # every rank returns once rank 0 has written the last round
    return GenerateSummary(
        out=folder.path,
        total=cfg.n_images,
        generated=generated,
        resumed=resumed,
        seconds=time.perf_counter() - start,
        bank_rows=None if bank is None else len(bank),
        config=cfg,
    )
