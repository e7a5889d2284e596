"""The memory bank: growth, eviction order, round trip through its file, and every way a file can be bad."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import sparke
from sparke.core.bank import FORMAT, BankFileError


def rows(start: int, count: int, d: int = 3) -> torch.Tensor:
    """Row i holds the value i in every column: the order of the rows stays readable."""
    return torch.arange(start, start + count, dtype=torch.float32).unsqueeze(1).repeat(1, d)


def test_add_keeps_order_and_grows_geometrically():
    bank = sparke.Bank()
    reallocations = 0
    storage = None
    for start in range(0, 1000, 3):
        bank.add(rows(start, 3), rows(start, 3, 2))
        if bank._x.data_ptr() != storage:
            reallocations += 1
            storage = bank._x.data_ptr()
    assert len(bank) == 1002
    assert torch.equal(bank.x[:, 0], torch.arange(1002.0))
    assert torch.equal(bank.y[:, 1], torch.arange(1002.0))
    assert reallocations <= 8  # 16, 32, ..., 1024: geometric, never once per add
    assert bank.dim_x == 3 and bank.dim_y == 2


def test_capacity_evicts_oldest_first_and_stays_contiguous():
    bank = sparke.Bank(capacity=10)
    copies = 0
    storage = None
    for start in range(0, 500, 4):
        bank.add(rows(start, 4))
        if bank._x.data_ptr() != storage:
            copies += 1
            storage = bank._x.data_ptr()
        assert len(bank) == min(start + 4, 10)
        assert torch.equal(bank.x[:, 0], torch.arange(max(0, start + 4 - 10), start + 4, dtype=torch.float32))
        assert bank.x.is_contiguous()
    assert bank._x.shape[0] <= 20
    assert bank.y is None


def test_add_more_rows_than_capacity_keeps_the_newest():
    bank = sparke.Bank(capacity=5)
    bank.add(rows(0, 12))
    assert torch.equal(bank.x[:, 0], torch.arange(7.0, 12.0))


def test_round_trip(tmp_path):
    bank = sparke.Bank(capacity=50, dtype=torch.float16, metadata={"model": "tiny-sd", "sigma_x": 0.8})
    bank.add(torch.randn(30, 4), torch.randn(30, 2))
    bank.pair_sum(kernel="gaussian", sigma_image=0.8, sigma_prompt=0.3)
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]  # no temporary file left behind
    loaded = sparke.Bank.load(path)
    assert torch.equal(loaded.x, bank.x) and torch.equal(loaded.y, bank.y)
    assert loaded.dtype == torch.float16 and loaded.capacity == 50
    assert loaded.metadata == {"model": "tiny-sd", "sigma_x": 0.8}
    assert loaded._pair_sums == bank._pair_sums
    loaded.add(torch.randn(2, 4), torch.randn(2, 2))
    assert len(loaded) == 32


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "bank.safetensors"
    first = sparke.Bank()
    first.add(torch.ones(3, 2))
    first.save(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    import sparke.core.bank as bank_module

    monkeypatch.setattr(bank_module, "save_file", crash)
    second = sparke.Bank()
    second.add(torch.zeros(9, 2))
    with pytest.raises(KeyboardInterrupt):
        second.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]


def saved(tmp_path):
    bank = sparke.Bank()
    bank.add(torch.randn(6, 3), torch.randn(6, 2))
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    return path


def test_not_a_bank_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(BankFileError, match="not a sparke bank"):
        sparke.Bank.load(path)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(BankFileError, match="corrupt"):
        sparke.Bank.load(text)


def test_truncated_file(tmp_path):
    path = saved(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) - 5, 40, 6):
        path.write_bytes(data[:cut])
        with pytest.raises(BankFileError, match="truncated or corrupt"):
            sparke.Bank.load(path)


def test_row_counts_disagree(tmp_path):
    path = tmp_path / "bank.safetensors"
    meta = {
        "format": FORMAT,
        "format_version": "1",
        "count": "4",
        "dim_x": "3",
        "dim_y": "2",
        "dtype": "float32",
        "capacity": "null",
        "pair_sums": "{}",
        "user": "{}",
    }
    save_file({"x": torch.zeros(4, 3), "y": torch.zeros(5, 2)}, str(path), metadata=meta)
    with pytest.raises(BankFileError, match="x has 4 rows but y has 5"):
        sparke.Bank.load(path)


def test_unknown_format_version(tmp_path):
    path = tmp_path / "bank.safetensors"
    save_file({"x": torch.zeros(2, 3)}, str(path), metadata={"format": FORMAT, "format_version": "9"})
    with pytest.raises(BankFileError, match="unknown bank format version '9'"):
        sparke.Bank.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such bank file"):
        sparke.Bank.load(tmp_path / "absent.safetensors")


@pytest.mark.parametrize(
    ("action", "name"),
    [
        (lambda b: b.add(torch.zeros(3)), "x"),
        (lambda b: b.add(torch.full((2, 3), float("nan"))), "x"),
        (lambda b: b.add(torch.zeros(2, 4), torch.zeros(2, 2)), "x"),
        (lambda b: b.add(torch.zeros(2, 3), torch.zeros(3, 2)), "y"),
        (lambda b: b.add(torch.zeros(2, 3)), "y"),
        (lambda b: b.add(torch.zeros(2, 3), torch.zeros(2, 5)), "y"),
    ],
)
def test_bad_rows_name_the_argument(action, name):
    bank = sparke.Bank()
    bank.add(torch.zeros(1, 3), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=rf"^{name}:"):
        action(bank)
    assert len(bank) == 1


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="^capacity:"):
        sparke.Bank(capacity=0)
    with pytest.raises(ValueError, match="^dtype:"):
        sparke.Bank(dtype=torch.int64)


def test_device_is_checked_when_the_bank_is_made(tmp_path):
    with pytest.raises(ValueError, match="^device:"):
        sparke.Bank(device="gpu")
    bank = sparke.Bank()
    bank.add(torch.zeros(2, 3))
    bank.save(tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="^device:"):
        sparke.Bank.load(tmp_path / "b.safetensors", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device: CUDA is not available"):
            sparke.Bank(device="cuda")
        with pytest.raises(ValueError, match="^device: CUDA is not available"):
            sparke.Bank.load(tmp_path / "b.safetensors", device="cuda")


def test_to_moves_rows_in_place_and_keeps_the_pair_sum():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=gen) / 3, torch.randn(40, 3, generator=gen) / 3
    bank = sparke.Bank(capacity=30)
    bank.add(x[:35], y[:35])  # evicts: the live rows do not start the buffer
    kept = bank.pair_sum()
    before = bank.direction(x[35:], y[35:])
    assert bank.to(dtype=torch.float64) is bank
    assert bank.dtype == torch.float64 and bank.device == torch.device("cpu")
    assert bank.x.dtype == torch.float64 and torch.equal(bank.x, x[5:35].double())
    assert bank.offset == 0 and bank.buffer_x.shape[0] == len(bank) == 30
    assert bank.pair_sum() == kept
    after = bank.direction(x[35:], y[35:])
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-7)
    bank.add(x[35:], y[35:])  # grows again after the move
    assert torch.equal(bank.x, x[10:].double())
    with pytest.raises(ValueError, match="^dtype:"):
        bank.to(dtype=torch.int32)
    with pytest.raises(ValueError, match="^device:"):
        bank.to("gpu")
    with pytest.raises(AttributeError):
        bank.device = "cpu"


def test_bank_satisfies_the_protocol():
    from sparke.core import BankLike

    assert isinstance(sparke.Bank(), BankLike)
    assert not isinstance(object(), BankLike)


def test_old_bandwidth_keywords_warn_and_give_the_same_value():
    bank = sparke.Bank()
    bank.add(torch.randn(20, 4), torch.randn(20, 2))
    x, y = torch.randn(2, 4), torch.randn(2, 2)
    new = bank.direction(x, y, sigma_image=0.7, sigma_prompt=0.4)
    with pytest.warns(DeprecationWarning, match="sigma_x= is deprecated, use sigma_image="):
        old = bank.direction(x, y, sigma_x=0.7, sigma_y=0.4)
    assert torch.equal(new, old)
    with pytest.raises(TypeError, match="both sigma_x= and sigma_image="):
        bank.direction(x, y, sigma_x=0.7, sigma_image=0.7)


def test_file_keys_of_the_pair_sums_are_unchanged(tmp_path):
    import json

    from safetensors import safe_open

    bank = sparke.Bank()
    bank.add(torch.randn(10, 4), torch.randn(10, 2))
    value = bank.pair_sum(sigma_image=0.8, sigma_prompt=0.3)
    bank.save(tmp_path / "b.safetensors")
    with safe_open(str(tmp_path / "b.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["pair_sums"]) == {json.dumps(["gaussian", 0.8, 0.3]): value}
    assert sparke.Bank.load(tmp_path / "b.safetensors").pair_sum() == value


def test_a_given_pair_sum_is_kept_and_updated():
    gen = torch.Generator().manual_seed(1)
    x, y = (
        torch.randn(30, 4, generator=gen, dtype=torch.float64),
        torch.randn(30, 2, generator=gen, dtype=torch.float64),
    )
    bank = sparke.Bank(dtype=torch.float64)
    bank.add(x[:20], y[:20])
    exact = sparke.Bank(dtype=torch.float64)
    exact.add(x[:20], y[:20])
    bank.set_pair_sum(exact.pair_sum(sigma_image=0.7, sigma_prompt=0.4), sigma_image=0.7, sigma_prompt=0.4)
    bank.add(x[20:], y[20:])
    exact.add(x[20:], y[20:])
    assert bank.pair_sum(sigma_image=0.7, sigma_prompt=0.4) == pytest.approx(
        exact.pair_sum(sigma_image=0.7, sigma_prompt=0.4), rel=1e-12
    )


def test_saved_bank_files_follow_the_umask(tmp_path):
    """Bank files are created like any Unix tool's: 0666 less the umask (not mkstemp's 0600)."""
    import os
    import stat

    bank = sparke.Bank()
    bank.add(torch.randn(3, 4), torch.randn(3, 2))
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        old = os.umask(umask)
        try:
            path = tmp_path / f"bank-{umask:o}.safetensors"
            bank.save(path)
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == mode
