"""Streaming metrics: exact ones equal the core scores, RFF ones approach them, states merge and sync."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import sparke
from sparke import metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _data import clustered  # noqa: E402

SX, SY = 0.8, 0.3
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def rows():
    return clustered(300, 24, 8, prompts=6, modes=3, seed=0, dtype=torch.float64)


EXACT = [
    (metrics.RKE, lambda x, y: sparke.rke(x, sigma=SX), dict(sigma=SX)),
    (metrics.Vendi, lambda x, y: sparke.vendi(x, sigma=SX), dict(sigma=SX)),
    (
        metrics.CondRKE,
        lambda x, y: sparke.cond_rke(x, y, sigma_image=SX, sigma_prompt=SY),
        dict(sigma_image=SX, sigma_prompt=SY),
    ),
    (
        metrics.CondVendi,
        lambda x, y: sparke.cond_vendi(x, y, sigma_image=SX, sigma_prompt=SY),
        dict(sigma_image=SX, sigma_prompt=SY),
    ),
]
RFF = [
    (metrics.RFFRKE, EXACT[0][1], dict(sigma=SX)),
    (metrics.RFFVendi, EXACT[1][1], dict(sigma=SX)),
    (metrics.RFFCondRKE, EXACT[2][1], dict(sigma_image=SX, sigma_prompt=SY)),
    (metrics.RFFCondVendi, EXACT[3][1], dict(sigma_image=SX, sigma_prompt=SY)),
]


def feed(metric, x, y, step=97):
    for start in range(0, x.shape[0], step):
        metric.update(x[start : start + step], y[start : start + step] if metric.conditional else None)
    return metric


@pytest.mark.parametrize(("cls", "score", "kw"), EXACT)
def test_exact_metric_equals_the_core_score(rows, cls, score, kw):
    x, y = rows
    assert feed(cls(**kw), x, y).compute() == pytest.approx(score(x, y), rel=1e-12)


@pytest.mark.parametrize(("cls", "score", "kw"), EXACT + RFF)
def test_merged_halves_equal_one_metric_fed_both(rows, cls, score, kw):
    x, y = rows
    extra = {"features": 128} if cls in (metrics.RFFVendi, metrics.RFFCondVendi) else {}
    whole = feed(cls(**kw, **extra), x, y)
    first, second = feed(cls(**kw, **extra), x[:120], y[:120]), feed(cls(**kw, **extra), x[120:], y[120:])
    merged = first.merge(second)
    assert merged.count == whole.count == x.shape[0]
    assert merged.compute() == pytest.approx(whole.compute(), rel=1e-9)
    merged.reset()
    assert merged.count == 0
    with pytest.raises(ValueError, match="no rows"):
        merged.compute()


@pytest.mark.parametrize(("cls", "score", "kw"), RFF)
def test_rff_error_shrinks_with_more_features(rows, cls, score, kw):
    """Against the exact score on the same rows, averaged over seeds: more features, smaller error."""
    x, y = rows
    exact = score(x, y)
    small, large = (256, 4096) if cls in (metrics.RFFRKE, metrics.RFFCondRKE) else (32, 384)

    def error(features):
        errs = [abs(feed(cls(**kw, features=features, seed=s), x, y).compute() / exact - 1) for s in range(2)]
        return sum(errs) / len(errs)

    err_small, err_large = error(small), error(large)
    assert err_large < err_small
    # the order-2 estimates are unbiased pair sums: a few percent at 4,096 features
    if cls in (metrics.RFFRKE, metrics.RFFCondRKE):
        assert err_large < 0.05


def test_rff_features_are_exact_on_the_diagonal():
    m = metrics.RFFRKE(sigma=SX, features=64)
    m.update(torch.randn(1, 5))
    assert m.compute() == pytest.approx(1.0, rel=1e-12)  # one row: |psi|^2 = 1 exactly, RKE = 1


def test_settings_must_match_to_merge(rows):
    x, y = rows
    a = feed(metrics.RFFRKE(sigma=SX), x, y)
    with pytest.raises(ValueError, match="^other:"):
        a.merge(feed(metrics.RFFRKE(sigma=SX, seed=1), x, y))
    with pytest.raises(ValueError, match="^other:"):
        a.merge(metrics.RKE(sigma=SX))


@pytest.mark.parametrize(
    ("cls", "args", "name"),
    [
        (metrics.RKE, (torch.zeros(3, 4), torch.zeros(3, 2)), "y"),
        (metrics.CondRKE, (torch.zeros(3, 4), None), "y"),
        (metrics.CondRKE, (torch.zeros(3, 4), torch.zeros(2, 2)), "y"),
        (metrics.RKE, (torch.full((3, 4), float("nan")),), "x"),
    ],
)
def test_bad_updates_name_the_argument(cls, args, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        cls().update(*args)


def test_feature_dims_must_not_change():
    m = metrics.RFFRKE()
    m.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="^x:"):
        m.update(torch.zeros(2, 5))


WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from sparke import metrics
    rank, world, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=gen, dtype=torch.float64), torch.randn(50, 3, generator=gen, dtype=torch.float64)
    part = slice(0, 20) if rank == 0 else slice(20, 50)   # unequal shards
    out = []
    for cls in (metrics.CondRKE, metrics.RFFCondRKE, metrics.RFFCondVendi):
        kw = {"features": 256} if cls is metrics.RFFCondVendi else {}
        m = cls(sigma_image=1.5, sigma_prompt=1.0, **kw)
        m.update(x[part], y[part])
        local = m.count
        out.append(m.compute())
        assert m.count == local  # compute syncs a copy, not the local state
    if rank == 0:
        open(path, "w").write(" ".join(repr(v) for v in out))
    dist.destroy_process_group()
    """
)


def test_two_process_sync_equals_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(
        os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), OMP_NUM_THREADS="1"
    )
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    out = tmp_path / "out.txt"
    procs = [
        subprocess.Popen([sys.executable, str(script), str(r), "2", str(out)], env=env) for r in range(2)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    got = [float(v) for v in out.read_text().split()]
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(50, 6, generator=gen, dtype=torch.float64),
        torch.randn(50, 3, generator=gen, dtype=torch.float64),
    )
    want = []
    for cls in (metrics.CondRKE, metrics.RFFCondRKE, metrics.RFFCondVendi):
        kw = {"features": 256} if cls is metrics.RFFCondVendi else {}
        m = cls(sigma_image=1.5, sigma_prompt=1.0, **kw)
        m.update(x, y)
        want.append(m.compute())
    assert got == pytest.approx(want, rel=1e-9)
