"""GraphedDirection: the exact step replayed as a CUDA graph equals the eager step; off CUDA it is eager."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import sparke
from sparke.core.graphed import GraphedDirection

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _data import clustered  # noqa: E402

SX, SY = 0.8, 0.3
OPTIONS = dict(objective="cond-rke", kernel="gaussian", sigma_image=SX, sigma_prompt=SY)
pytestmark = pytest.mark.usefixtures("torch_one_thread")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: no GPU on this machine")


@pytest.mark.parametrize("objective", ["cond-rke", "rke", "cond-vendi"])
def test_on_the_cpu_it_is_the_eager_call_exactly(objective):
    x, y = clustered(204, 48, 8, prompts=4, seed=1)
    bank = sparke.Bank()
    bank.add(x[4:], y[4:])
    options = {**OPTIONS, "objective": objective}
    step = GraphedDirection(bank, **options)
    for _ in range(2):
        got = step(x[:4], y[:4])
        assert torch.equal(got, bank.direction(x[:4], y[:4], **options))
        assert not step.graphed and step.captures == 0
    bank.add(x[:4], y[:4])
    assert torch.equal(step(x[:4], y[:4]), bank.direction(x[:4], y[:4], **options))


def test_bad_warmup():
    with pytest.raises(ValueError, match="^warmup:"):
        GraphedDirection(sparke.Bank(), warmup=0)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_graph_equals_eager_and_is_captured_again_when_the_bank_grows(dtype):
    x, y = clustered(4104, 1024, 64, prompts=20, seed=2)
    x, y = x.cuda(), y.cuda()
    bank = sparke.Bank(device="cuda", dtype=dtype)
    bank.add(x[8:4000], y[8:4000])
    step = GraphedDirection(bank, **OPTIONS)
    for _ in range(3):  # capture, then replays
        got = step(x[:4], y[:4])
        want = bank.direction(x[:4], y[:4], **OPTIONS)
        assert step.graphed and step.captures == 1
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    got = step(x[4:8], y[4:8])  # new inputs, same shapes: a replay, not a capture
    want = bank.direction(x[4:8], y[4:8], **OPTIONS)
    assert step.captures == 1 and torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    bank.add(x[4000:], y[4000:])  # the bank grew: captured again
    got = step(x[:4], y[:4])
    want = bank.direction(x[:4], y[:4], **OPTIONS)
    assert step.captures == 2 and torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    got = step(x[:2], y[:2])  # another batch shape: captured again
    assert step.captures == 3


@needs_cuda
def test_graph_zeroes_and_counts_nonfinite_rows():
    x, y = clustered(1004, 256, 16, prompts=5, seed=3)
    x, y = x.cuda(), y.cuda()
    bank = sparke.Bank(device="cuda")
    bank.add(x[4:], y[4:])
    step = GraphedDirection(bank, **OPTIONS)
    step(x[:4], y[:4])
    bad = x[:4].clone()
    bad[2, 0] = float("nan")
    skipped = torch.zeros((), dtype=torch.int64, device="cuda")
    got = step(bad, y[:4], skipped=skipped)
    assert step.graphed and int(skipped) == 1 and torch.equal(got[2], torch.zeros_like(got[2]))
    assert torch.isfinite(got).all()


@needs_cuda
def test_a_bank_that_cannot_be_captured_falls_back_to_eager_with_one_warning():
    pytest.importorskip("faiss")
    x, y = clustered(2004, 64, 8, prompts=5, seed=4)
    bank = sparke.IndexedBank(64, 8, neighbors=16, samples=16, device="cuda")  # its search syncs
    bank.add(x[4:], y[4:])
    step = GraphedDirection(bank)
    with pytest.warns(RuntimeWarning, match="capture failed"):
        first = step(x[:4].cuda(), y[:4].cuda())
    assert not step.graphed and torch.isfinite(first).all()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(x[:4].cuda(), y[:4].cuda())  # no second warning
