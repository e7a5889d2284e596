"""The torchmetrics adapters of sparke.metrics.torchmetrics against the core functions."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sparke

torchmetrics = pytest.importorskip("torchmetrics")

from sparke.core import defaults  # noqa: E402
from sparke.metrics.torchmetrics import RKE, CondRKE, CondVendi, InBatchSimilarity, Vendi  # noqa: E402

KERNELS = ["gaussian", "cosine"]


def _batches(seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    xa, xb = torch.randn(6, 5, generator=g, dtype=dtype), torch.randn(9, 5, generator=g, dtype=dtype)
    ya, yb = torch.randn(6, 3, generator=g, dtype=dtype), torch.randn(9, 3, generator=g, dtype=dtype)
    return xa, xb, ya, yb


def _core(name: str, x, y=None, kernel="gaussian", sigma=0.7, sigma_image=0.9, sigma_prompt=0.4) -> float:
    """The core function the metric ``name`` mirrors, with the same settings as ``_metric``."""
    if name == "Vendi":
        return sparke.vendi(x, kernel=kernel, sigma=sigma)
    if name == "RKE":
        return sparke.rke(x, kernel=kernel, sigma=sigma)
    if name == "CondVendi":
        return sparke.cond_vendi(x, y, kernel=kernel, sigma_image=sigma_image, sigma_prompt=sigma_prompt)
    if name == "CondRKE":
        return sparke.cond_rke(x, y, kernel=kernel, sigma_image=sigma_image, sigma_prompt=sigma_prompt)
    return sparke.in_batch_similarity(x)


def _metric(name: str, kernel: str = "gaussian"):
    if name in ("Vendi", "RKE"):
        return {"Vendi": Vendi, "RKE": RKE}[name](kernel=kernel, sigma=0.7)
    if name in ("CondVendi", "CondRKE"):
        cls = {"CondVendi": CondVendi, "CondRKE": CondRKE}[name]
        return cls(kernel=kernel, sigma_image=0.9, sigma_prompt=0.4)
    return InBatchSimilarity()


def _feed(metric, x, y):
    if metric.__class__.__name__.startswith("Cond"):
        metric.update(x, y)
    else:
        metric.update(x)


CASES = [(name, kernel) for name in ("Vendi", "RKE", "CondVendi", "CondRKE") for kernel in KERNELS] + [
    ("InBatchSimilarity", "cosine")
]


def _assert_equal(value: torch.Tensor, expected: float, exact: bool) -> None:
    assert isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point()
    if exact:
        assert float(value) == expected
    else:  # the same rows summed in another order: float64 rounding only
        assert float(value) == pytest.approx(expected, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("name,kernel", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_updates_equal_the_core_on_the_concatenation(name, kernel, dtype):
    xa, xb, ya, yb = _batches(dtype=dtype)
    metric = _metric(name, kernel)
    _feed(metric, xa, ya)
    _feed(metric, xb, yb)
    expected = _core(name, torch.cat([xa, xb]), torch.cat([ya, yb]), kernel=kernel)
    # The exact scores keep the rows and call the core on them: bit-identical.
    _assert_equal(metric.compute(), expected, exact=name != "InBatchSimilarity")


@pytest.mark.parametrize("name,kernel", CASES)
def test_numpy_input_and_a_single_batch(name, kernel):
    xa, _, ya, _ = _batches()
    metric = _metric(name, kernel)
    _feed(metric, xa.numpy(), ya.numpy())
    _assert_equal(metric.compute(), _core(name, xa, ya, kernel=kernel), exact=name != "InBatchSimilarity")


@pytest.mark.parametrize("name,kernel", CASES)
def test_merge_state_equals_one_metric_fed_everything(name, kernel):
    # float64 rows: reordering them changes the result only at float64 rounding (float32: 1e-7 relative).
    xa, xb, ya, yb = _batches(seed=1, dtype=torch.float64)
    first, second, whole = _metric(name, kernel), _metric(name, kernel), _metric(name, kernel)
    _feed(first, xa, ya)
    _feed(second, xb, yb)
    _feed(whole, xa, ya)
    _feed(whole, xb, yb)
    first.merge_state(second)
    expected = _core(name, torch.cat([xa, xb]), torch.cat([ya, yb]), kernel=kernel)
    # merge_state may put the incoming rows first, which changes the rounding only.
    _assert_equal(first.compute(), expected, exact=False)
    _assert_equal(whole.compute(), float(first.compute()), exact=False)
    # The incoming metric is left as it was.
    _assert_equal(second.compute(), _core(name, xb, yb, kernel=kernel), exact=name != "InBatchSimilarity")


def test_merge_state_refuses_other_settings():
    xa, _, _, _ = _batches()
    first, second = Vendi(sigma=0.5), Vendi(sigma=0.6)
    first.update(xa)
    second.update(xa)
    with pytest.raises(ValueError, match="incoming_state"):
        first.merge_state(second)
    with pytest.raises(ValueError):
        first.merge_state(RKE(sigma=0.5))


def test_merge_state_from_a_state_dict():
    xa, xb, _, _ = _batches()
    first, second = RKE(sigma=0.7), RKE(sigma=0.7)
    first.update(xa)
    second.update(xb)
    first.merge_state(second.metric_state)
    assert float(first.compute()) == pytest.approx(sparke.rke(torch.cat([xa, xb]), sigma=0.7), rel=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_metric_collection(kernel):
    xa, xb, ya, yb = _batches(seed=2)
    names = ["Vendi", "RKE", "CondVendi", "CondRKE", "InBatchSimilarity"]
    collection = torchmetrics.MetricCollection({name: _metric(name, kernel) for name in names})
    # y as a keyword reaches only the conditional metrics (the others' update takes x alone).
    collection.update(xa, y=ya)
    collection.update(xb, y=yb)
    values = collection.compute()
    x, y = torch.cat([xa, xb]), torch.cat([ya, yb])
    for name in names:
        _assert_equal(values[name], _core(name, x, y, kernel=kernel), exact=name != "InBatchSimilarity")
    collection.reset()
    collection.update(xb, y=yb)
    values = collection.compute()
    for name in names:
        _assert_equal(values[name], _core(name, xb, yb, kernel=kernel), exact=name != "InBatchSimilarity")


@pytest.mark.parametrize("name,kernel", CASES)
def test_reset_empties_the_metric(name, kernel):
    xa, xb, ya, yb = _batches()
    metric = _metric(name, kernel)
    _feed(metric, xa, ya)
    metric.reset()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="^x: no rows yet"):
        metric.compute()
    _feed(metric, xb, yb)
    _assert_equal(metric.compute(), _core(name, xb, yb, kernel=kernel), exact=name != "InBatchSimilarity")


@pytest.mark.parametrize("name,kernel", CASES)
def test_forward_returns_the_batch_score_and_accumulates(name, kernel):
    xa, xb, ya, yb = _batches(seed=3)
    metric = _metric(name, kernel)
    args = (lambda x, y: (x, y)) if name.startswith("Cond") else (lambda x, y: (x,))
    batch_value = metric(*args(xa, ya))
    _assert_equal(batch_value, _core(name, xa, ya, kernel=kernel), exact=name != "InBatchSimilarity")
    metric(*args(xb, yb))
    expected = _core(name, torch.cat([xa, xb]), torch.cat([ya, yb]), kernel=kernel)
    _assert_equal(metric.compute(), expected, exact=name != "InBatchSimilarity")


@pytest.mark.parametrize("name", ["RKE", "CondVendi", "InBatchSimilarity"])
def test_state_dict_round_trip_and_to(name):
    xa, _, ya, _ = _batches()
    metric = _metric(name)
    metric.persistent(True)
    _feed(metric, xa, ya)
    restored = _metric(name)
    restored.persistent(True)
    restored.load_state_dict(metric.state_dict())
    restored = restored.to("cpu")
    with pytest.warns(UserWarning):  # torchmetrics: compute before update on the restored copy
        value = restored.compute()
    _assert_equal(value, float(metric.compute()), exact=True)


def test_defaults_come_from_the_core_defaults():
    assert CondRKE().sigma_image == defaults.SIGMA_IMAGE
    assert CondRKE().sigma_prompt == defaults.SIGMA_PROMPT
    assert Vendi().kernel == defaults.KERNEL
    assert Vendi().sigma == RKE().sigma == defaults.SIGMA_IMAGE


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: Vendi(kernel="linear"), "kernel"),
        (lambda: RKE(sigma=0), "sigma"),
        (lambda: RKE(sigma=float("inf")), "sigma"),
        (lambda: CondRKE(sigma_image=-1), "sigma_image"),
        (lambda: CondVendi(sigma_prompt=float("nan")), "sigma_prompt"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        make()


def test_bad_inputs_are_value_errors_naming_the_argument():
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    with pytest.raises(ValueError, match="^x:"):
        RKE().update(torch.randn(4))
    with pytest.raises(ValueError, match="^x:"):
        Vendi().update(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="^x:"):
        Vendi().update([[1.0, 2.0]])
    with pytest.raises(ValueError, match="^x:"):
        Vendi(kernel="cosine").update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="^x:"):
        InBatchSimilarity().update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="^y:"):
        CondRKE().update(x, torch.randn(5, 2))
    with pytest.raises(ValueError, match="^y:"):
        CondVendi().update(x, np.full((4, 2), np.inf))
    with pytest.raises(ValueError, match="^y:"):
        CondVendi(kernel="cosine").update(x, torch.zeros(4, 2))
    metric = CondRKE()
    metric.update(x, y)
    with pytest.raises(ValueError, match="^x:"):
        metric.update(torch.randn(4, 5), y)
    with pytest.raises(ValueError, match="^y:"):
        metric.update(x, torch.randn(4, 7))
    similarity = InBatchSimilarity()
    similarity.update(x)
    with pytest.raises(ValueError, match="^x:"):
        similarity.update(torch.randn(2, 4))
    with pytest.raises(TypeError):
        RKE().update(x, y)  # an unconditional score takes no prompt features


def test_empty_batches_are_ignored_and_single_rows_follow_the_core():
    metric = InBatchSimilarity()
    metric.update(torch.randn(0, 3))
    metric.update(torch.ones(1, 3))
    assert float(metric.compute()) == sparke.in_batch_similarity(torch.ones(1, 3)) == 1.0
    vendi = Vendi()
    vendi.update(torch.randn(0, 3))
    vendi.update(torch.ones(1, 3))
    assert float(vendi.compute()) == sparke.vendi(torch.ones(1, 3)) == 1.0


def test_importing_sparke_metrics_does_not_load_torchmetrics():
    code = "import sys, sparke.metrics; print('torchmetrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_torchmetrics_names_the_extra():
    code = (
        "import sys; sys.modules['torchmetrics'] = None\n"
        "try:\n    import sparke.metrics.torchmetrics\nexcept ImportError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "sparke[metrics]"' in out.stdout


_DDP_WORKER = """
import os, sys, torch, torch.distributed as dist
import sparke
from sparke.metrics import prdc
from sparke.metrics.torchmetrics import PRDC, CondRKE, InBatchSimilarity, Vendi
rank = int(sys.argv[1])
# a file store: no port to pick, none to lose to another process
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
g = torch.Generator().manual_seed(0)
x = torch.randn(11, 4, generator=g, dtype=torch.float64)
y = torch.randn(11, 3, generator=g, dtype=torch.float64)
parts = [slice(0, 7), slice(7, 11)]
metrics = [Vendi(sigma=0.7), CondRKE(), InBatchSimilarity()]
metrics[0].update(x[parts[rank]])
metrics[1].update(x[parts[rank]], y[parts[rank]])
if rank == 0:  # rank 1 keeps no row of this one
    metrics[2].update(x)
empty = Vendi(sigma=0.7)  # and no rank of this one
if rank == 1:
    empty.update(x)
values = [float(m.compute()) for m in metrics]
expected = [
    sparke.vendi(x, sigma=0.7),
    sparke.cond_rke(x, y, sigma_image=0.8, sigma_prompt=0.3),
    sparke.in_batch_similarity(x),
]
for value, want in zip(values, expected):
    assert abs(value - want) <= 1e-12 * abs(want), (rank, values, expected)
assert float(empty.compute()) == sparke.vendi(x, sigma=0.7)
scores = PRDC(nearest_k=2)  # the real rows all on rank 0, the fake rows split
if rank == 0:
    scores.update(x, real=True)
scores.update(y[parts[rank]] @ torch.ones(3, 4, dtype=torch.float64), real=False)
got = {k: float(v) for k, v in scores.compute().items()}
assert got == prdc(x, y @ torch.ones(3, 4, dtype=torch.float64), 2), (rank, got)
print("ok", rank)
dist.destroy_process_group()
"""


def test_ddp_sync_over_two_gloo_processes(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    store = str(tmp_path / "store")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), store],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in range(2)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for rank, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, err
        assert f"ok {rank}" in out
