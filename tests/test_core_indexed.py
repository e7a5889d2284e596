"""IndexedBank: exact while small, close to the exact direction when large, files, and input errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

import sparke  # noqa: E402
import sparke.core.indexed as indexed  # noqa: E402
import sparke.core.search as search_module  # noqa: E402
from sparke.core import BankFileError  # noqa: E402
from sparke.core.direction import bank_pair_sum  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _data import clustered  # noqa: E402

SX, SY = 0.8, 0.3
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def exact(x, y, bank_x, bank_y, objective="cond-rke"):
    return sparke.diversity_direction(
        x.double(),
        None if y is None else y.double(),
        bank_x.double(),
        None if bank_y is None else bank_y.double(),
        objective=objective,
        sigma_image=SX,
        sigma_prompt=SY,
    )


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


@pytest.mark.parametrize("conditional", [True, False])
def test_small_bank_is_exact_including_the_normaliser(conditional):
    x, y = clustered(300, 24, 8, prompts=5, seed=1)
    bank = sparke.IndexedBank(
        24, 8 if conditional else None, neighbors=300, samples=0, sigma_image=SX, sigma_prompt=SY
    )
    yy = y if conditional else None
    for start in range(4, 300, 37):  # several adds: the kept pair sum must stay exact
        bank.add(x[start : start + 37], None if yy is None else yy[start : start + 37])
    assert len(bank) == 296 and torch.equal(bank.x, x[4:])
    pair_sum, _ = bank_pair_sum(
        x[4:].double(),
        None if yy is None else yy[4:].double(),
        kernel="gaussian",
        sigma_image=SX,
        sigma_prompt=SY,
    )
    assert bank.pair_sum() == pytest.approx(pair_sum, rel=1e-5)
    objective = "cond-rke" if conditional else "rke"
    got = bank.direction(x[:4], None if yy is None else yy[:4])
    want = exact(x[:4], None if yy is None else yy[:4], x[4:], None if yy is None else yy[4:], objective)
    assert torch.linalg.norm(got.double() - want) <= 1e-4 * torch.linalg.norm(want)


@pytest.mark.parametrize(("d", "graph"), [(32, False), (512, False), (32, True)])
def test_large_bank_direction_is_close(monkeypatch, d, graph):
    if graph:
        monkeypatch.setattr(indexed, "FLAT_BELOW", 1000)
    x, y = clustered(4008, d, 16, prompts=40, seed=2)
    bank = sparke.IndexedBank(
        d, 16, neighbors=128, samples=128, sigma_image=SX, sigma_prompt=SY, search_dim=32
    )
    bank.add(x[8:], y[8:])
    assert bank._graph == graph
    got = torch.cat([bank.direction(x[b : b + 1], y[b : b + 1]) for b in range(8)])
    want = torch.cat([exact(x[b : b + 1], y[b : b + 1], x[8:], y[8:]) for b in range(8)])
    assert cos(got, want).min() > 0.98
    # the kept normaliser is an estimate: the magnitude stays within a few percent
    ratio = torch.linalg.norm(got.double(), dim=1) / torch.linalg.norm(want, dim=1)
    assert ((ratio > 0.9) & (ratio < 1.1)).all()


def test_batch_terms_are_included():
    x, y = clustered(40, 16, 8, prompts=2, seed=3)
    bank = sparke.IndexedBank(16, 8, neighbors=8, samples=0, sigma_image=SX, sigma_prompt=SY)
    got = bank.direction(x[:3], y[:3])  # empty bank: only the batch's own terms
    want = exact(x[:3], y[:3], x[:0], y[:0])
    assert torch.linalg.norm(got.double() - want) <= 1e-5 * torch.linalg.norm(want)


@pytest.mark.parametrize("graph", [False, True])
def test_save_load_round_trip(tmp_path, monkeypatch, graph):
    monkeypatch.setattr(indexed, "FLAT_BELOW", 100 if graph else 10**9)
    x, y = clustered(600, 96, 8, prompts=6, seed=4)
    bank = sparke.IndexedBank(
        96,
        8,
        neighbors=32,
        samples=0,
        sigma_image=SX,
        sigma_prompt=SY,
        search_dim=16,
        metadata={"model": "tiny"},
    )
    bank.add(x[4:], y[4:])
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    loaded = sparke.IndexedBank.load(path)
    assert torch.equal(loaded.x, bank.x) and torch.equal(loaded.y, bank.y)
    assert loaded.metadata == {"model": "tiny"} and loaded.pair_sum() == bank.pair_sum()
    assert loaded._graph == graph
    for (ids_a, w_a), (ids_b, w_b) in zip(
        loaded._estimate_rows(x[:4], y[:4]), bank._estimate_rows(x[:4], y[:4]), strict=True
    ):
        assert (ids_a == ids_b).all() and (w_a == w_b).all()
    assert torch.allclose(loaded.direction(x[:4], y[:4]), bank.direction(x[:4], y[:4]), rtol=1e-6, atol=0)
    loaded.add(x[:4], y[:4])
    assert len(loaded) == 600
    assert list(tmp_path.iterdir()) == [path]  # nothing left behind by the atomic write


def test_bad_files(tmp_path):
    bank = sparke.IndexedBank(8, None, neighbors=4)
    bank.add(torch.randn(10, 8))
    path = tmp_path / "b.safetensors"
    bank.save(path)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BankFileError, match="corrupt"):
        sparke.IndexedBank.load(tmp_path / "cut.safetensors")
    plain = sparke.Bank()
    plain.add(torch.randn(3, 8))
    plain.save(tmp_path / "plain.safetensors")
    with pytest.raises(BankFileError, match="not a sparke indexed bank"):
        sparke.IndexedBank.load(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError):
        sparke.IndexedBank.load(tmp_path / "missing.safetensors")


BAD = [
    (dict(kernel="cosine"), {}, "kernel"),
    (dict(neighbors=0), {}, "neighbors"),
    (dict(sigma_image=-1.0), {}, "sigma_image"),
    ({}, dict(objective="rke"), "objective"),
    ({}, dict(sigma_image=0.5), "sigma_image"),
    ({}, dict(kernel="cosine"), "kernel"),
    ({}, dict(x=torch.zeros(2, 5)), "x"),
    ({}, dict(x=torch.full((2, 6), float("nan"))), "x"),
    ({}, dict(y=None), "y"),
    ({}, dict(add_y=None), "y"),
]


@pytest.mark.parametrize(("init", "call", "name"), BAD)
def test_bad_input_names_the_argument(init, call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        bank = sparke.IndexedBank(6, 3, **{"sigma_image": SX, "sigma_prompt": SY, **init})
        bank.add(torch.ones(4, 6), call.pop("add_y", torch.ones(4, 3)))
        args = dict(x=torch.zeros(2, 6), y=torch.zeros(2, 3))
        for key in ("x", "y"):
            if key in call:
                args[key] = call.pop(key)
        bank.direction(args["x"], args["y"], **call)


def test_plugin_style_call_is_accepted():
    bank = sparke.IndexedBank(6, 3, sigma_image=SX, sigma_prompt=SY)
    bank.add(torch.randn(5, 6), torch.randn(5, 3))
    d = bank.direction(
        torch.randn(2, 6),
        torch.randn(2, 3),
        objective="cond-rke",
        kernel="gaussian",
        sigma_image=SX,
        sigma_prompt=SY,
    )
    assert d.shape == (2, 6) and torch.isfinite(d).all()


def test_plugin_accepts_an_indexed_bank():
    """SPARKE guides with an IndexedBank as with a Bank: while small it is exact, so the images agree."""
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sparke.guidance import SPARKE, attach
    from tiny_pipelines import build, call_kwargs

    pipe = build("sd")
    prompts = ["a photo of a cat", "a photo of a dog"]

    def run(guide, seed):
        kw = call_kwargs(pipe, prompts, num_images_per_prompt=2, seed=seed)
        with attach(pipe) as rec:
            guide(pipe, **kw)
        return rec.final_latents.float()

    plain = SPARKE(scale=0.3, every=1)
    run(plain, 0)
    dim_x, dim_y = plain.bank.dim_x, plain.bank.dim_y
    index = sparke.IndexedBank(dim_x, dim_y, sigma_image=plain.sigma_image, sigma_prompt=plain.sigma_prompt)
    index.add(plain.bank.x, plain.bank.y)
    with_index = SPARKE(scale=0.3, every=1, bank=index)
    with_bank = SPARKE(scale=0.3, every=1, bank=plain.bank)
    z_index, z_bank = run(with_index, 1), run(with_bank, 1)
    assert len(index) == len(plain.bank) == 8
    assert torch.allclose(z_index, z_bank, rtol=1e-3, atol=1e-4)


def test_cells_partition_the_bank_and_draws_are_unbiased(monkeypatch):
    monkeypatch.setattr(indexed, "CELLS_FROM", 512)
    monkeypatch.setattr(search_module, "ROWS_PER_CELL", 16)
    x, y = clustered(3000, 24, 8, prompts=3, seed=5)
    bank = sparke.IndexedBank(24, 8, neighbors=16, sigma_image=SX, sigma_prompt=SY)
    for start in range(0, 3000, 700):  # trains at 700 rows, retrains at 1,400 and 2,800 (doublings)
        bank.add(x[start : start + 700], y[start : start + 700])
    cells = bank._cells
    assert cells.trained_at == 2800 and cells.centroids.shape[0] == 2800 // 16
    members = np.concatenate([m[:k] for m, k in zip(cells._members, cells.sizes, strict=True)])
    assert np.array_equal(np.sort(members), np.arange(3000))  # every row in exactly one cell
    z = bank._search_vectors(bank.x, bank.y)
    query = bank._search_vectors(x[:1] + 0.05, y[:1])[0]
    weight = np.exp(-np.square(z - query).sum(1, dtype=np.float64))
    rows, p = cells.draw(query, 200_000, np.random.default_rng(0))
    assert (p > 0).all()
    estimate = float((weight[rows] / p).mean())
    assert estimate == pytest.approx(float(weight.sum()), rel=0.02)


def test_cells_help_when_thousands_of_rows_share_a_prompt(monkeypatch):
    x, y = clustered(6008, 32, 8, prompts=2, seed=6)
    want = torch.cat([exact(x[b : b + 1], y[b : b + 1], x[8:], y[8:]) for b in range(8)])
    cosines = {}
    for cells_from in (10**9, 1000):
        monkeypatch.setattr(indexed, "CELLS_FROM", cells_from)
        bank = sparke.IndexedBank(32, 8, neighbors=16, samples=96, sigma_image=SX, sigma_prompt=SY, seed=3)
        bank.add(x[8:], y[8:])
        assert (bank._cells is not None) == (cells_from == 1000)
        got = torch.cat([bank.direction(x[b : b + 1], y[b : b + 1]) for b in range(8)])
        cosines[cells_from] = cos(got, want)
    assert cosines[1000].mean() > cosines[10**9].mean() + 0.02 and cosines[1000].min() > 0.95


# -- the search where the rows live (issue 10, point 3) ----------------------------------------------------


def test_search_option_and_mode():
    assert sparke.IndexedBank(8, 4).search_mode == "faiss"  # "auto" on the CPU
    assert sparke.IndexedBank(8, 4, search="flat").search_mode == "flat"
    with pytest.raises(ValueError, match="^search:"):
        sparke.IndexedBank(8, 4, search="gpu")


def test_flat_search_matches_brute_force_across_chunks(monkeypatch):
    monkeypatch.setattr(search_module, "SEARCH_CHUNK", 100)  # many chunks: the merge of the per-chunk top-k
    gen = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(1037, 12, generator=gen), torch.randn(5, 12, generator=gen)
    flat = search_module.FlatIndex(12, torch.device("cpu"))
    flat.add(keys[:500].numpy())
    flat.add(keys[500:])
    dist, ids = flat.search(queries.numpy(), 64)
    want = torch.cdist(queries.double(), keys.double()).square()
    want_d, want_i = torch.topk(want, 64, dim=1, largest=False)
    assert np.array_equal(ids, want_i.numpy())
    assert np.allclose(dist, want_d.numpy(), rtol=1e-4, atol=1e-4)
    dist, ids = flat.search(queries.numpy(), 2000)  # more than stored: padded as FAISS pads
    assert (ids[:, 1037:] == -1).all() and np.isinf(dist[:, 1037:]).all()
    assert np.array_equal(np.sort(ids[:, :1037], 1), np.tile(np.arange(1037), (5, 1)))
    assert np.array_equal(flat.reconstruct_batch(np.array([3, 700])), keys[[3, 700]].numpy())


@pytest.mark.parametrize("conditional", [True, False])
def test_flat_search_gives_the_faiss_candidates_and_direction(conditional):
    x, y = clustered(3008, 96, 8, prompts=20, seed=7)
    yy = y if conditional else None
    banks = {}
    for search in ("faiss", "flat"):
        bank = sparke.IndexedBank(
            96, 8 if conditional else None, neighbors=64, samples=64, search_dim=16, search=search
        )
        bank.add(x[8:], None if yy is None else yy[8:])
        banks[search] = bank
    assert isinstance(banks["flat"]._index, search_module.FlatIndex) and not banks["faiss"]._graph
    q = banks["faiss"]._search_vectors(x[:8], None if yy is None else yy[:8])
    (d_faiss, i_faiss), (d_flat, i_flat) = (b._index.search(q, 512) for b in banks.values())
    # both exact: the same rows in the same order, up to swaps of (near) ties
    assert (i_faiss == i_flat).mean() > 0.99
    assert all(set(a[:-8]) <= set(b) for a, b in zip(i_faiss, i_flat, strict=True))
    assert np.allclose(d_faiss, d_flat, rtol=1e-4, atol=1e-3)
    assert banks["faiss"].pair_sum() == pytest.approx(banks["flat"].pair_sum(), rel=1e-3)
    args = (x[:8], None if yy is None else yy[:8])
    got = {
        name: torch.cat([b.direction(*(a[i : i + 1] for a in args if a is not None)) for i in range(8)])
        for name, b in banks.items()
    }
    want = torch.cat(
        [
            exact(
                x[i : i + 1],
                None if yy is None else yy[i : i + 1],
                x[8:],
                None if yy is None else yy[8:],
                "cond-rke" if conditional else "rke",
            )
            for i in range(8)
        ]
    )
    assert cos(got["flat"], got["faiss"]).min() > 0.995
    assert cos(got["flat"], want).min() > 0.98


def test_flat_search_stays_exact_past_the_graph_size_and_trains_cells_without_faiss(monkeypatch):
    monkeypatch.setattr(indexed, "FLAT_BELOW", 500)
    monkeypatch.setattr(indexed, "CELLS_FROM", 512)
    monkeypatch.setattr(search_module, "ROWS_PER_CELL", 16)
    x, y = clustered(2000, 24, 8, prompts=3, seed=8)
    bank = sparke.IndexedBank(24, 8, neighbors=16, search="flat")
    bank.add(x[:1000], y[:1000])  # trained at 1,000 rows; the next rows are assigned to the cells
    bank.add(x[1000:1900], y[1000:1900])
    assert not bank._graph and bank._cells is not None and bank._cells.trained_at == 1000
    members = np.concatenate([m[:k] for m, k in zip(bank._cells._members, bank._cells.sizes, strict=True)])
    assert np.array_equal(np.sort(members), np.arange(1900))
    d = bank.direction(x[:2] + 0.01, y[:2])
    assert d.shape == (2, 24) and torch.isfinite(d).all()


def test_save_load_keeps_the_chosen_search(tmp_path):
    x, y = clustered(300, 32, 8, prompts=4, seed=9)
    bank = sparke.IndexedBank(32, 8, neighbors=16, samples=0, search="flat")
    bank.add(x[2:], y[2:])
    bank.save(tmp_path / "b.safetensors")
    loaded = sparke.IndexedBank.load(tmp_path / "b.safetensors", search="flat")
    assert (
        loaded.search_mode == "flat"
        and sparke.IndexedBank.load(tmp_path / "b.safetensors").search_mode == "faiss"
    )
    assert torch.allclose(loaded.direction(x[:2], y[:2]), bank.direction(x[:2], y[:2]), rtol=1e-6, atol=0)


def test_to_changes_the_storage_type_in_place():
    x, y = clustered(500, 32, 8, prompts=4, seed=10)
    bank = sparke.IndexedBank(32, 8, neighbors=64, samples=0)  # no random draws: comparable calls
    bank.add(x[2:], y[2:])
    before = bank.direction(x[:2], y[:2])
    assert bank.to(dtype=torch.float16) is bank
    assert bank.x.dtype == torch.float16 and bank.dtype == torch.float16 and len(bank) == 498
    after = bank.direction(x[:2], y[:2])
    assert cos(before, after).min() > 0.999
    bank.to("cpu", torch.float32)
    bank.add(x[:2], y[:2])
    assert len(bank) == 500 and bank.x.dtype == torch.float32
    with pytest.raises(ValueError, match="^dtype:"):
        bank.to(dtype=torch.int32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the device flat search under 'auto'")
def test_to_cuda_switches_to_the_device_search_and_back():
    x, y = clustered(3000, 64, 8, prompts=10, seed=11)
    bank = sparke.IndexedBank(64, 8, neighbors=32, samples=32)
    bank.add(x[4:], y[4:])
    q = bank._search_vectors(x[:4], y[:4])
    _, ids_cpu = bank._index.search(q, 128)
    bank.to("cuda", torch.float16)
    assert bank.search_mode == "flat" and isinstance(bank._index, search_module.FlatIndex)
    _, ids_gpu = bank._index.search(q, 128)
    assert (ids_cpu == ids_gpu).mean() > 0.99
    d = bank.direction(x[:4].cuda(), y[:4].cuda())
    assert d.is_cuda and torch.isfinite(d).all()
    bank.to("cpu", torch.float32)
    assert bank.search_mode == "faiss" and not isinstance(bank._index, search_module.FlatIndex)


def test_on_nonfinite_skip_zeroes_bad_rows_and_counts_them():
    x, y = clustered(300, 16, 8, prompts=3, seed=12)
    bank = sparke.IndexedBank(16, 8, neighbors=8, samples=8)
    bank.add(x[4:], y[4:])
    bad = x[:4].clone()
    bad[1, 3] = float("nan")
    skipped = torch.zeros((), dtype=torch.int64)
    d = bank.direction(bad, y[:4], on_nonfinite="skip", skipped=skipped)
    assert int(skipped) == 1 and torch.equal(d[1], torch.zeros(16)) and torch.isfinite(d).all()
    assert d[0].abs().sum() > 0
    with pytest.raises(ValueError, match="^x:"):
        bank.direction(bad, y[:4])
    with pytest.raises(ValueError, match="^on_nonfinite:"):
        bank.direction(x[:4], y[:4], on_nonfinite="ignore")


def test_old_bandwidth_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="sigma_x"):
        bank = sparke.IndexedBank(6, 3, sigma_x=0.5, sigma_y=0.2)
    assert (bank.sigma_image, bank.sigma_prompt) == (0.5, 0.2)
    bank.add(torch.randn(5, 6), torch.randn(5, 3))
    with pytest.warns(DeprecationWarning, match="sigma_y"):
        bank.direction(torch.randn(2, 6), torch.randn(2, 3), sigma_y=0.2)
