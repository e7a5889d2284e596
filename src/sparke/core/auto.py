"""A bank that is exact while small and indexed once large: ``AutoBank``, and ``make_bank`` for the strings
"auto", "exact" and "indexed" that the plug-in and the CLI accept.

``AutoBank`` starts as an exact ``Bank``. Once it holds more than ``crossover`` rows (default: the figure of
its device in ``CROSSOVER``), it moves its rows into an ``IndexedBank`` (a one-off cost, measured in
benchmarks/results/cpu-2core-2026-11-29-crossover.md), whose step reads a fixed number of rows whatever n is. The index is built for the bandwidths of the last ``direction`` call (or the constructor's);
a call with other bandwidths rebuilds it, and a call the index cannot answer (cosine kernel, Vendi
objectives, "rke" on a bank with prompts) moves the rows back into an exact bank for good, with one warning.

Files are the underlying bank's own (``Bank`` or ``IndexedBank`` format): ``AutoBank.load`` reads both.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .bank import FORMAT as EXACT_FORMAT
from .bank import Bank, BankFileError
from .checks import check_device, check_sigma, renamed_bandwidths
from .defaults import SIGMA_IMAGE, SIGMA_PROMPT
from .indexed import FORMAT as INDEXED_FORMAT
from .indexed import SEARCHES, STORAGE_DTYPES, IndexedBank
from .spec import KernelSpec, ScoresBatches

# Bank rows from which the indexed step is faster than the exact one, per device type, for image rows of at
# least CROSSOVER_DIM[device type] columns; for narrower rows the crossover grows as CROSSOVER_DIM / dim_x
# (the exact scan gets cheaper per row, the index's fixed costs do not).
# cpu: MEASURED with benchmarks/crossover.py (shared 2-core x86_64, one thread, B = 4, 768 prompt columns,
#   default neighbors and samples; benchmarks/results/cpu-2core-2026-11-29-crossover.md): break-even near
#   10,000 rows at d = 256, 3,000 at d = 1,024 and 4,096, 1,500-2,000 at d = 16,384; 3,000 costs at most
#   ~1.6x at d = 16,384 between 2,000 and 3,000 rows.
# cuda: DERIVED, NOT MEASURED (no GPU in the session that set it), from /work/shared/GPU-NOTES.md (H200,
#   fp16, d = 16,384): the exact step is 1.39 ms at 10^4 rows, 2.2 ms at 10^5 and 16.2 ms at 10^6
#   (~1.6e-5 ms per row past 10^5); the indexed step with the device flat search is taken as ~3 ms whatever
#   n (0.25 ms search and 0.16 ms gather at 10^6, plus the host-side sampling and per-row products that
#   made it 3.7 ms at 10^4 with a CPU search). The lines cross near 1.5e5 rows; 200,000 leaves the exact
#   scan in charge until it clearly loses. Measure with benchmarks/crossover.py on a GPU and replace.
CROSSOVER = {"cpu": 3000, "cuda": 200_000}
CROSSOVER_DIM = {"cpu": 1024, "cuda": 16_384}
# device types not listed above: as the CPU
KINDS = ("auto", "exact", "indexed")
# Rows moved per ``IndexedBank.add`` when switching (bounds the float32 copy it makes: 512 MiB at d = 16,384).
MOVE_CHUNK = 8192


def default_crossover(device: torch.device | str, dim_x: int | None = None) -> int:
    """Rows from which ``AutoBank`` on ``device`` switches to the indexed bank, for image rows of ``dim_x``
    columns (None: not known yet, the figure for wide rows): ``CROSSOVER`` scaled by ``CROSSOVER_DIM``."""
    kind = torch.device(device).type
    kind = kind if kind in CROSSOVER else "cpu"
    rows, dim = CROSSOVER[kind], CROSSOVER_DIM[kind]
    if dim_x is None or dim_x >= dim:
        return rows
    return rows * dim // dim_x


class AutoBank(ScoresBatches):
    """Image features x: (n, dim_x), optional prompt features y: (n, dim_y): an exact ``Bank`` up to
    ``crossover`` rows (None: ``default_crossover(device, dim_x)``; 0: indexed from the first row), an
    ``IndexedBank`` past it. ``neighbors``, ``samples``, ``search_dim``, ``seed``, ``search``: the index's
    options (see ``IndexedBank``); ``sigma_image``/``sigma_prompt``: its bandwidths until a ``direction``
    call gives others. ``inner`` is the bank in use.
    """

    @renamed_bandwidths
    def __init__(
        self,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        crossover: int | None = None,
        sigma_image: float = SIGMA_IMAGE,
        sigma_prompt: float = SIGMA_PROMPT,
        neighbors: int = 256,
        samples: int | None = None,
        search_dim: int = 64,
        seed: int = 0,
        search: str = "auto",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if crossover is not None and (
            not isinstance(crossover, int) or isinstance(crossover, bool) or crossover < 0
        ):
            raise ValueError(f"crossover: must be a non-negative integer or None, got {crossover!r}")
        if search not in SEARCHES:
            raise ValueError(f"search: must be one of {', '.join(SEARCHES)}, got {search!r}")
        self.crossover = crossover
        self.index_options = dict(
            neighbors=neighbors, samples=samples, search_dim=search_dim, seed=seed, search=search
        )
        # the index's bandwidths until a direction call gives others; the spec of the last call (None: none yet,
        # the bank's natural score)
        self._sigmas = (check_sigma(sigma_image, "sigma_image"), check_sigma(sigma_prompt, "sigma_prompt"))
        self._spec: KernelSpec | None = None
        self._pinned = False  # True once a call needed the exact bank: it stays exact
        self.inner: Bank | IndexedBank = Bank(device=check_device(device), dtype=dtype, metadata=metadata)

    # -- reading ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.inner)

    def __repr__(self) -> str:
        return f"AutoBank(crossover={self.threshold}, inner={self.inner!r})"

    @property
    def threshold(self) -> int:
        """The crossover in use: rows past which the bank is indexed."""
        return default_crossover(self.device, self.dim_x) if self.crossover is None else self.crossover

    @property
    def indexed(self) -> bool:
        """Whether the rows are in an ``IndexedBank`` now."""
        return isinstance(self.inner, IndexedBank)

    @property
    def x(self) -> torch.Tensor:
        """(n, dim_x) view of the image features, oldest first."""
        return self.inner.x

    @property
    def y(self) -> torch.Tensor | None:
        """(n, dim_y) view of the prompt features, or None."""
        return self.inner.y

    @property
    def dim_x(self) -> int | None:
        return self.inner.dim_x

    @property
    def dim_y(self) -> int | None:
        return self.inner.dim_y

    @property
    def device(self) -> torch.device:
        return self.inner.device

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def capacity(self) -> None:
        """No capacity: an AutoBank keeps every row (evicting would fight the index)."""
        return None

    @property
    def metadata(self) -> dict[str, Any]:
        """The free-form dict saved with the bank (the same object across a switch)."""
        return self.inner.metadata

    # -- writing ---------------------------------------------------------------------------------------------
    def add(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | None = None) -> None:
        """Append rows x: (m, dim_x) and, for a prompt-aware bank, y: (m, dim_y); may switch to the index."""
        self.inner.add(x, y)
        self._maybe_index()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AutoBank:
        """Move the rows in place (the crossover follows the device); returns self."""
        self.inner.to(device=device, dtype=dtype)
        self._maybe_index()
        return self

    # -- guidance --------------------------------------------------------------------------------------------
    def _spec_direction(
        self, x: torch.Tensor, y: torch.Tensor | None, spec: KernelSpec, skipped: torch.Tensor | None
    ) -> torch.Tensor:
        """As ``Bank.direction`` (exact) or ``IndexedBank.direction`` (past the crossover); a spec no index
        answers moves the rows back to an exact bank for good (one warning), other bandwidths rebuild it."""
        if self.indexed and not self._fits(spec):
            if not self._can_index(spec):
                warnings.warn(
                    f"AutoBank: objective={spec.objective!r}, kernel={spec.kernel!r} needs the exact bank; moving "
                    f"{len(self)} rows back to it for good",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._pinned = True
            self._move(exact=True)  # other bandwidths: the index is built again for them (below)
        self._spec = spec
        self._maybe_index()
        return self.inner._spec_direction(x, y, spec, skipped)

    def _bandwidths(self) -> tuple[float, float]:
        """(sigma_image, sigma_prompt) of the last call, or the constructor's."""
        return self._sigmas if self._spec is None else (self._spec.sigma_image, self._spec.sigma_prompt)

    def _fits(self, spec: KernelSpec) -> bool:
        """Whether the current index answers a call with ``spec``."""
        index = self.inner
        return (
            self._can_index(spec)
            and math.isclose(spec.sigma_image, index.sigma_image, rel_tol=1e-9)
            and (index.dim_y is None or math.isclose(spec.sigma_prompt, index.sigma_prompt, rel_tol=1e-9))
        )

    def _can_index(self, spec: KernelSpec | None) -> bool:
        """Whether an index can answer calls with ``spec`` (None: the bank's natural score): its ``indexable``
        order-2 Gaussian score, with prompts exactly when the bank has them."""
        natural = "cond-rke" if self.dim_y is not None else "rke"
        return (
            (spec is None or (spec.indexable and spec.objective == natural))
            and self.dtype in STORAGE_DTYPES.values()
            and getattr(self.inner, "capacity", None) is None
        )

    def _maybe_index(self) -> None:
        if (
            not self.indexed
            and not self._pinned
            and len(self) > self.threshold
            and self._can_index(self._spec)
        ):
            try:
                self._move(exact=False)
            except ImportError as error:  # no FAISS for a CPU index (pip install "sparke[index]"): stay exact
                self._pinned = True
                warnings.warn(
                    f"AutoBank: {len(self)} rows would be faster indexed, but {error}; the bank stays exact",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _move(self, *, exact: bool) -> None:
        """Copy the rows into a new exact bank, or into a new index for the current bandwidths (the old bank is
        dropped)."""
        old = self.inner
        if exact:
            new = Bank(device=old.device, dtype=old.dtype)
        else:
            sigma_image, sigma_prompt = self._bandwidths()
            new = IndexedBank(
                old.dim_x,
                old.dim_y,
                sigma_image=sigma_image,
                sigma_prompt=sigma_prompt,
                device=old.device,
                dtype=old.dtype,
                **self.index_options,
            )
        n = len(old)
        for start in range(0, n, MOVE_CHUNK):
            stop = min(start + MOVE_CHUNK, n)
            new.add(old.x[start:stop], None if old.y is None else old.y[start:stop])
        new.metadata = old.metadata  # the same dict: a caller's reference stays valid
        if not exact:
            kept = old.kept_pair_sum(sigma_image, sigma_prompt)
            if kept is not None:  # the exact bank's kept normaliser beats the index's estimate
                new.set_pair_sum(kept)
            new.exact_marks = dict(old._marks)  # what ``truncate`` below the switch goes back to
        self.inner = new

    def truncate(self, n: int) -> None:
        """Keep the oldest ``n`` rows, the bank as it was after the ``add`` that brought it to n rows: its
        kept pair sums, and in the index its random state and cells; below the row count at which it was
        indexed, an exact bank again (``ValueError`` for a count it never had after an add)."""
        inner = self.inner
        switched = max(inner.exact_marks, default=None) if isinstance(inner, IndexedBank) else None
        if switched is None or n >= switched:
            inner.truncate(n)
            return
        exact = Bank(device=inner.device, dtype=inner.dtype)
        exact.add(inner.x[:switched], None if inner.y is None else inner.y[:switched])
        exact._marks = dict(inner.exact_marks)
        exact.truncate(n)
        exact.metadata = inner.metadata
        self.inner = exact

    def options(self) -> dict[str, Any]:
        """The constructor's options of this bank (crossover, index options, bandwidths): an empty bank made
        with them, or a file loaded with them, behaves as this one."""
        sigma_image, sigma_prompt = self._bandwidths()
        return dict(
            crossover=self.crossover, sigma_image=sigma_image, sigma_prompt=sigma_prompt, **self.index_options
        )

    # -- files -----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the underlying bank's own file (``Bank`` or ``IndexedBank`` format)."""
        self.inner.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu", **options: Any) -> AutoBank:
        """Read a ``Bank`` or ``IndexedBank`` file onto ``device``; ``options`` as for the constructor (an
        indexed file keeps its own index settings). ``BankFileError`` names what is wrong."""
        kind = bank_file_kind(path)
        if kind == "indexed":
            inner = IndexedBank.load(path, device, search=options.get("search", "auto"))
            options.setdefault("sigma_image", inner.sigma_image)
            options.setdefault("sigma_prompt", inner.sigma_prompt)
        else:
            inner = Bank.load(path, device)
        bank = cls(device=device, dtype=inner.dtype, **options)
        bank.inner = inner
        if kind == "indexed":
            bank.index_options.update(
                neighbors=inner.neighbors, samples=inner.samples, search_dim=inner.search_dim, seed=inner.seed
            )
        bank._maybe_index()
        return bank


def load_bank(
    path: str | os.PathLike, device: torch.device | str = "cpu", *, like: Any = None
) -> Bank | AutoBank:
    """The bank saved in ``path``, exact or indexed (told apart by the file's header), as the kind of bank
    ``like`` is: for a ``Bank``, a plain ``Bank`` (a sliding window keeps its capacity; an indexed file gives
    its rows), else an ``AutoBank`` with ``like``'s crossover and index options (an indexed file keeps its
    own). One loader for whatever reads a run's bank: generation (resume, ``--bank``) and repair.
    ``FileNotFoundError`` when there is no file, ``BankFileError`` naming what is wrong with one."""
    kind = bank_file_kind(path)
    if isinstance(like, Bank):
        if kind == "exact":
            return Bank.load(path, device)
        if like.capacity is not None:
            raise BankFileError(f"{path}: an indexed bank file, but this guide keeps a sliding exact bank")
        # an older run whose score no index answers (a per-step median bandwidth) but whose AutoBank was
        # indexed anyway: its rows, in the exact bank the guide keeps now
        indexed = IndexedBank.load(path, device)
        exact = Bank(device=device, dtype=indexed.dtype, metadata=indexed.metadata)
        exact.add(indexed.x, indexed.y)
        return exact
    options = like.options() if isinstance(like, AutoBank) else {}
    return AutoBank.load(path, device, **options)


def bank_file_kind(path: str | os.PathLike) -> str:
    """ "exact" for a ``Bank`` file, "indexed" for an ``IndexedBank`` file; ``BankFileError`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such bank file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tag = (handle.metadata() or {}).get("format")
    except (SafetensorError, OSError, RuntimeError) as error:
        raise BankFileError(f"{path}: truncated or corrupt bank file ({error})") from None
    kinds = {EXACT_FORMAT: "exact", INDEXED_FORMAT: "indexed"}
    if tag not in kinds:
        raise BankFileError(f"{path}: not a sparke bank file (format tag {tag!r})")
    return kinds[tag]


def make_bank(
    kind: str = "auto",
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> Bank | AutoBank:
    """A new empty bank for the plug-in and the CLI: "exact" (``Bank``), "auto" (``AutoBank``: exact, then
    indexed past the device's crossover) or "indexed" (``AutoBank(crossover=0)``: indexed from the first
    row, with dimensions taken from it). ``options`` go to the constructor."""
    if kind == "exact":
        return Bank(device=check_device(device), dtype=dtype, **options)
    if kind == "auto":
        return AutoBank(device=device, dtype=dtype, **options)
    if kind == "indexed":
        return AutoBank(device=device, dtype=dtype, crossover=0, **options)
    raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
