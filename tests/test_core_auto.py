"""AutoBank: exact while small, indexed past the crossover, files of both kinds, and make_bank."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("faiss")

import sparke  # noqa: E402
from sparke.core import auto  # noqa: E402
from sparke.core.auto import AutoBank, bank_file_kind, default_crossover, load_bank, make_bank  # noqa: E402
from sparke.core.bank import BankFileError  # noqa: E402
from sparke.core.protocol import BankLike  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _data import clustered  # noqa: E402

SX, SY = 0.8, 0.3
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def exact_direction(rows_x, rows_y, x, y, **options):
    bank = sparke.Bank()
    bank.add(rows_x, rows_y)
    return bank.direction(x, y, **{"sigma_image": SX, "sigma_prompt": SY, **options})


def test_is_a_bank_and_the_crossover_follows_the_device():
    bank = AutoBank()
    assert isinstance(bank, BankLike) and len(bank) == 0 and not bank.indexed
    assert bank.threshold == default_crossover("cpu") == auto.CROSSOVER["cpu"]
    assert default_crossover("cuda:0") == auto.CROSSOVER["cuda"]
    # narrower rows: the exact scan stays cheaper for longer
    assert default_crossover("cpu", 256) == 4 * default_crossover("cpu", 1024) == 4 * auto.CROSSOVER["cpu"]
    assert default_crossover("cpu", 16_384) == auto.CROSSOVER["cpu"] == default_crossover("mps", 16_384)
    assert AutoBank(crossover=7).threshold == 7
    with pytest.raises(ValueError, match="^crossover:"):
        AutoBank(crossover=-1)
    with pytest.raises(ValueError, match="^search:"):
        AutoBank(search="gpu")


@pytest.mark.parametrize("conditional", [True, False])
def test_switches_past_the_crossover_and_stays_close_to_exact(conditional):
    x, y = clustered(1508, 64, 8, prompts=15, seed=1)
    yy = y if conditional else None
    bank = AutoBank(crossover=400, neighbors=128, samples=128, metadata={"model": "tiny"})
    meta = bank.metadata
    bank.add(x[8:408], None if yy is None else yy[8:408])
    assert not bank.indexed and len(bank) == 400
    objective = "cond-rke" if conditional else "rke"
    q = (x[:8], None if yy is None else yy[:8])
    before = bank.direction(*q, objective=objective, sigma_image=SX, sigma_prompt=SY)
    want = exact_direction(x[8:408], None if yy is None else yy[8:408], *q, objective=objective)
    assert torch.equal(before, want)  # the exact bank itself
    bank.add(x[408:409], None if yy is None else yy[408:409])  # 401 rows: past the crossover
    assert bank.indexed and len(bank) == 401 and bank.metadata is meta
    reference = sparke.Bank()
    reference.add(x[8:409], None if yy is None else yy[8:409])
    kept = reference.pair_sum(sigma_image=SX, sigma_prompt=SY, conditional=conditional)
    assert bank.inner.pair_sum() == pytest.approx(kept, rel=1e-6)  # the exact normaliser moved over
    bank.add(x[409:], None if yy is None else yy[409:])
    assert bank.indexed and torch.equal(bank.x, x[8:])
    assert (bank.y is None) == (not conditional) and (yy is None or torch.equal(bank.y, yy[8:]))
    assert bank.inner.sigma_image == SX and bank.inner.sigma_prompt == SY
    after = torch.cat(
        [
            bank.direction(x[b : b + 1], None if yy is None else yy[b : b + 1], objective=objective)
            for b in range(8)
        ]
    )
    want = exact_direction(x[8:], None if yy is None else yy[8:], *q, objective=objective)
    assert cos(after, want).min() > 0.98
    ratio = torch.linalg.norm(after.double(), dim=1) / torch.linalg.norm(want.double(), dim=1)
    assert ((ratio > 0.8) & (ratio < 1.25)).all()


def test_other_bandwidths_rebuild_the_index_and_other_kernels_go_back_to_exact():
    x, y = clustered(300, 32, 8, prompts=4, seed=2)
    bank = AutoBank(crossover=100, neighbors=16, samples=16)
    bank.add(x[4:], y[4:])
    assert bank.indexed and bank.inner.sigma_image == SX
    bank.direction(x[:4], y[:4], sigma_image=0.5, sigma_prompt=0.2)
    assert bank.indexed and (bank.inner.sigma_image, bank.inner.sigma_prompt) == (0.5, 0.2)
    with pytest.warns(RuntimeWarning, match="exact bank"):
        got = bank.direction(x[:4], y[:4], kernel="cosine")
    assert not bank.indexed and len(bank) == 296
    assert torch.allclose(got, exact_direction(x[4:], y[4:], x[:4], y[:4], kernel="cosine"))
    bank.add(x[:4], y[:4])
    assert not bank.indexed  # pinned: it stays exact


@pytest.mark.parametrize("crossover", [10**6, 50])
def test_save_load_round_trips_both_kinds(tmp_path, crossover):
    x, y = clustered(204, 32, 8, prompts=4, seed=3)
    bank = AutoBank(crossover=crossover, neighbors=16, samples=0, metadata={"run": 1})
    bank.add(x[4:], y[4:])
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    kind = "indexed" if crossover == 50 else "exact"
    assert bank.indexed == (kind == "indexed") and bank_file_kind(path) == kind
    # the file is the underlying bank's own: its class reads it
    own = (sparke.IndexedBank if kind == "indexed" else sparke.Bank).load(path)
    assert torch.equal(own.x, bank.x)
    loaded = AutoBank.load(path, crossover=crossover)
    assert loaded.indexed == bank.indexed and loaded.metadata == {"run": 1}
    assert torch.equal(loaded.x, bank.x) and torch.equal(loaded.y, bank.y)
    a = loaded.direction(x[:4], y[:4])
    b = bank.direction(x[:4], y[:4])
    assert torch.equal(a, b)  # the file keeps the index's search vectors and random state: the same draws
    loaded.add(x[:4], y[:4])
    assert len(loaded) == 204


def test_an_exact_file_past_the_crossover_loads_indexed(tmp_path):
    x, y = clustered(200, 16, 8, prompts=3, seed=4)
    plain = sparke.Bank()
    plain.add(x, y)
    plain.save(tmp_path / "b.safetensors")
    assert AutoBank.load(tmp_path / "b.safetensors", crossover=100).indexed
    assert not AutoBank.load(tmp_path / "b.safetensors").indexed


def test_load_bank_reads_both_kinds_as_the_kind_of_bank_asked_for(tmp_path):
    """One loader for a run's bank: exact and indexed files alike, with the options of the guide's own bank."""
    x, y = clustered(60, 16, 8, prompts=3, seed=5)
    indexed = AutoBank(crossover=20, neighbors=4, samples=4)
    indexed.add(x, y)
    indexed.save(tmp_path / "indexed.safetensors")
    loaded = load_bank(tmp_path / "indexed.safetensors", like=AutoBank(crossover=20, neighbors=4, samples=4))
    assert loaded.indexed and loaded.crossover == 20 and loaded.index_options == indexed.index_options
    assert torch.equal(loaded.x, x) and torch.equal(loaded.y, y)
    exact = sparke.Bank(capacity=100)
    exact.add(x, y)
    exact.save(tmp_path / "exact.safetensors")
    window = load_bank(tmp_path / "exact.safetensors", like=sparke.Bank(capacity=100))
    assert type(window) is sparke.Bank and window.capacity == 100 and torch.equal(window.x, x)
    # an AutoBank (whose crossover the file does not say) unless the guide keeps a plain Bank
    unbounded = sparke.Bank()
    unbounded.add(x, y)
    unbounded.save(tmp_path / "unbounded.safetensors")
    assert load_bank(tmp_path / "unbounded.safetensors", like=AutoBank(crossover=20)).indexed
    assert not load_bank(tmp_path / "unbounded.safetensors").indexed
    with pytest.raises(BankFileError, match="indexed bank file"):
        load_bank(tmp_path / "indexed.safetensors", like=sparke.Bank(capacity=100))
    # a run that keeps an exact bank now (sigma_image="median") but was saved indexed by an older sparke
    rows = load_bank(tmp_path / "indexed.safetensors", like=sparke.Bank())
    assert type(rows) is sparke.Bank and torch.equal(rows.x, x) and torch.equal(rows.y, y)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        AutoBank.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(BankFileError, match="corrupt"):
        AutoBank.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"), metadata={"format": "other"})
    with pytest.raises(BankFileError, match="not a sparke bank"):
        AutoBank.load(tmp_path / "other.safetensors")


def test_make_bank():
    assert type(make_bank("exact")) is sparke.Bank
    bank = make_bank("auto", dtype=torch.float16)
    assert (
        isinstance(bank, AutoBank) and bank.dtype == torch.float16 and bank.threshold == auto.CROSSOVER["cpu"]
    )
    bank = make_bank("indexed", neighbors=8)
    x, y = clustered(20, 16, 8, prompts=2, seed=5)
    bank.add(x, y)
    assert bank.indexed and bank.inner.neighbors == 8 and bank.inner.dim_x == 16
    with pytest.raises(ValueError, match="^kind:"):
        make_bank("hnsw")


def test_to_moves_the_inner_bank():
    x, y = clustered(120, 16, 8, prompts=2, seed=6)
    for crossover in (10**6, 50):
        bank = AutoBank(crossover=crossover, neighbors=8, samples=8)
        bank.add(x[4:], y[4:])
        assert bank.to(dtype=torch.float16) is bank
        assert bank.dtype == torch.float16 and bank.x.dtype == torch.float16
        assert torch.isfinite(bank.direction(x[:4], y[:4])).all()


def test_old_bandwidth_names_warn():
    with pytest.warns(DeprecationWarning, match="sigma_x"):
        bank = AutoBank(crossover=0, sigma_x=0.5)
    bank.add(torch.randn(3, 6), torch.randn(3, 2))
    assert bank.inner.sigma_image == 0.5


# -- issue 17: truncate, the one rollback ----------------------------------------------------------------------------
def _replay(bank, x, y, batches, start=0):
    """Per batch (rows [4 b, 4 b + 4)): the direction of the next rows against the bank, then the batch added,
    as a run does; the directions made."""
    out = []
    for b in range(start, batches):
        rows = slice(4 * b, 4 * b + 4)
        out.append(bank.direction(x[rows], y[rows], sigma_image=SX, sigma_prompt=SY))
        bank.add(x[rows], y[rows])
    return out


@pytest.mark.parametrize("kind", ["exact", "auto"])
@pytest.mark.parametrize("cut", [2, 5])
def test_truncate_then_replay_is_bit_exact(tmp_path, kind, cut):
    """A bank cut back to its state after batch ``cut`` (through a save and load, as a run's is), then given the
    same batches, makes the same directions bit for bit and ends in the same file content: for an AutoBank
    indexed after batch 3 (16 rows > 14) and sampling past 4 neighbors + 4 samples, and cut on either side."""
    x, y = clustered(48, 32, 8, prompts=3, seed=6)

    def new():
        return sparke.Bank() if kind == "exact" else AutoBank(crossover=14, neighbors=4, samples=4)

    whole = new()
    expected = _replay(whole, x, y, 12)
    bank = new()
    _replay(bank, x, y, 9)
    bank.save(tmp_path / "bank.safetensors")
    bank = load_bank(tmp_path / "bank.safetensors", like=new())
    bank.truncate(4 * cut)
    assert len(bank) == 4 * cut and (kind == "auto" and cut == 5) == getattr(bank, "indexed", False)
    replayed = _replay(bank, x, y, 12, start=cut)
    assert all(torch.equal(a, b) for a, b in zip(expected[cut:], replayed, strict=True))
    whole.save(tmp_path / "whole.safetensors")
    bank.save(tmp_path / "replayed.safetensors")
    assert _content(tmp_path / "whole.safetensors") == _content(tmp_path / "replayed.safetensors")


def _content(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata(), {k: handle.get_tensor(k).numpy().tobytes() for k in handle.keys()}  # noqa: SIM118


def test_truncate_refuses_what_it_cannot_undo(tmp_path):
    x, y = clustered(12, 16, 8, prompts=3, seed=7)
    window = sparke.Bank(capacity=8)
    window.add(x, y)
    with pytest.raises(ValueError, match="capacity"):
        window.truncate(4)
    bank = AutoBank(crossover=6, neighbors=2, samples=2)
    bank.add(x[:4], y[:4])
    bank.add(x[4:], y[4:])
    with pytest.raises(ValueError, match="never held exactly 5 rows"):
        bank.truncate(5)
    bank.truncate(4)
    assert not bank.indexed and torch.equal(bank.x, x[:4])
    # a file of an older sparke remembers no earlier state: back to 0 rows only (the run then rebuilds)
    plain = sparke.Bank()
    plain.add(x[:4], y[:4])
    plain.add(x[4:], y[4:])
    plain._marks = {len(plain): {}}
    with pytest.raises(ValueError, match="never held"):
        plain.truncate(4)


def test_indexed_truncate_goes_back_past_the_cells(tmp_path):
    """Past ``CELLS_FROM`` rows the far draws come from k-means cells, trained again as the bank doubles: a cut
    back below a training point and a replay train them where the uninterrupted bank did."""
    from sparke.core.indexed import CELLS_FROM, IndexedBank

    n = CELLS_FROM + 1024
    x, y = clustered(n, 8, 4, prompts=5, seed=8)

    def grow(bank, start, stop):
        for lo in range(start, stop, 1024):
            bank.add(x[lo : lo + 1024], y[lo : lo + 1024])
        return bank.direction(x[:4], y[:4])

    whole = IndexedBank(8, 4, neighbors=8, samples=16)
    expected = grow(whole, 0, n)
    bank = IndexedBank(8, 4, neighbors=8, samples=16)
    grow(bank, 0, n)
    bank.save(tmp_path / "b.safetensors")
    bank = IndexedBank.load(tmp_path / "b.safetensors")
    bank.truncate(CELLS_FROM - 1024)
    assert bank._cells is None
    assert torch.equal(grow(bank, CELLS_FROM - 1024, n), expected)


def test_files_of_an_older_sparke_still_load(tmp_path):
    """Bank files written before the marks, search vectors and random state were kept load as they did."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    x, y = clustered(40, 16, 8, prompts=3, seed=9)
    bank = AutoBank(crossover=10, neighbors=4, samples=4)
    for lo in range(0, 40, 8):
        bank.add(x[lo : lo + 8], y[lo : lo + 8])
    bank.save(tmp_path / "new.safetensors")
    with safe_open(str(tmp_path / "new.safetensors"), "pt") as handle:
        meta = {
            k: v for k, v in handle.metadata().items() if k not in ("rng", "cell_points", "exact_mark_keys")
        }
        old = {k: handle.get_tensor(k) for k in handle.keys() if k not in ("keys", "marks", "exact_marks")}  # noqa: SIM118
    save_file(old, str(tmp_path / "old.safetensors"), metadata=meta)
    loaded = load_bank(tmp_path / "old.safetensors", like=AutoBank(crossover=10, neighbors=4, samples=4))
    assert loaded.indexed and torch.equal(loaded.x, x) and loaded.inner.pair_sum() == bank.inner.pair_sum()
    with pytest.raises(ValueError, match="never held"):
        loaded.truncate(16)
    loaded.truncate(0)
    assert len(loaded) == 0
