"""The fast order-2 direction: cached norms across adds and evictions, the half-precision product path,
the random projection, and the checks it keeps without scanning its inputs up front."""

from __future__ import annotations

import pytest
import torch

import sparke
import sparke.core.order2 as fast


def clustered(n, d, e, seed, dtype=torch.float64):
    """Unit image rows around 8 centres, prompt rows around 4 centres (the regime guidance runs in)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(8, d, generator=gen, dtype=dtype), dim=1)
    prompts = torch.nn.functional.normalize(torch.randn(4, e, generator=gen, dtype=dtype), dim=1)
    i = torch.randint(0, 8, (n,), generator=gen)
    x = torch.nn.functional.normalize(
        centres[i] + 0.6 * torch.randn(n, d, generator=gen, dtype=dtype) / d**0.5, dim=1
    )
    y = torch.nn.functional.normalize(
        prompts[i % 4] + 0.3 * torch.randn(n, e, generator=gen, dtype=dtype) / e**0.5, dim=1
    )
    return x, y


def rel(a, b):
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
@pytest.mark.parametrize("objective", ["rke", "cond-rke"])
def test_cached_norms_follow_adds_and_evictions(kernel, objective):
    rows, prompts = clustered(90, 12, 5, seed=1)
    x, y = rows[:3] + 0.01, prompts[:3]
    cond = objective == "cond-rke"
    bank = sparke.Bank(capacity=40, dtype=torch.float64)
    kw = dict(objective=objective, kernel=kernel, sigma_image=0.8, sigma_prompt=0.6)
    for start in range(3, 90, 11):  # grows, evicts, moves its rows back to the buffer start
        bank.add(rows[start : start + 11], prompts[start : start + 11] if cond else None)
        got = bank.direction(x, y, **kw)
        live_x, live_y = bank.x.clone(), bank.y.clone() if cond else None
        expected = sparke.diversity_direction(x, y if cond else None, live_x, live_y, **kw)
        assert rel(got, expected) < 1e-10


@pytest.fixture
def emulated_gpu_products(monkeypatch):
    """The CUDA half-precision product (float32 accumulation, float32 output), emulated on the CPU."""
    monkeypatch.setattr(fast, "mm_out_dtype_supported", lambda device, dtype=None: True)
    monkeypatch.setattr(fast, "_mm_f32", lambda a, b: (a.double() @ b.double()).float())


@pytest.mark.parametrize("storage", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
@pytest.mark.parametrize("objective", ["rke", "cond-rke"])
def test_half_bank_matches_exact_on_the_stored_rows(emulated_gpu_products, storage, kernel, objective):
    rows, prompts = clustered(300, 64, 8, seed=2, dtype=torch.float32)
    cond = objective == "cond-rke"
    bank = sparke.Bank(dtype=storage)
    bank.add(rows[4:], prompts[4:] if cond else None)
    kw = dict(objective=objective, kernel=kernel, sigma_image=0.5, sigma_prompt=0.4)
    got = bank.direction(rows[:4], prompts[:4], **kw)
    assert got.dtype == torch.float32
    # reference: float64 on exactly the rounded rows the bank stores
    expected = sparke.diversity_direction(
        rows[:4].double(),
        prompts[:4].double() if cond else None,
        bank.x.double(),
        bank.y.double() if cond else None,
        **kw,
    )
    assert rel(got, expected) < 1e-4


def test_split_operand_is_exact_to_float32():
    value = torch.randn(3, 50, dtype=torch.float32)
    for storage in (torch.float16, torch.bfloat16):
        out = fast._split(value, storage, torch.empty(6, 50, dtype=storage))
        recon = out[:3].double() + out[3:].double()
        assert float((recon - value.double()).abs().max()) <= 2e-3 * float(value.abs().max()) * (
            2.0**-8 if storage == torch.float16 else 2.0**-6
        )


def test_projection_keeps_the_direction_close():
    rows, prompts = clustered(2000, 1024, 16, seed=3, dtype=torch.float32)
    bank = sparke.Bank()
    bank.add(rows[8:], prompts[8:])
    x, y = rows[:8], prompts[:8]
    exact = fast.bank_direction(bank, x, y, sigma_image=0.8, sigma_prompt=0.3)
    projected = fast.bank_direction(bank, x, y, sigma_image=0.8, sigma_prompt=0.3, project_dim=256)
    cos = torch.nn.functional.cosine_similarity(exact, projected, dim=1)
    assert (cos > 0.95).all()
    again = fast.bank_direction(bank, x, y, sigma_image=0.8, sigma_prompt=0.3, project_dim=256)
    assert torch.equal(projected, again)  # the projection is fixed, not redrawn per step


def test_steps_reuse_their_buffers():
    rows, prompts = clustered(500, 32, 4, seed=4, dtype=torch.float32)
    bank = sparke.Bank()
    bank.add(rows[2:], prompts[2:])
    bank.direction(rows[:2], prompts[:2], sigma_image=0.8, sigma_prompt=0.3)
    before = {k: v.data_ptr() for k, v in bank._workspace._buffers.items()}
    bank.direction(rows[:2] * 0.9, prompts[:2], sigma_image=0.8, sigma_prompt=0.3)
    after = {k: v.data_ptr() for k, v in bank._workspace._buffers.items()}
    assert before == after and before


@pytest.mark.parametrize(
    ("x", "y", "name"),
    [
        (torch.full((2, 6), float("nan")), torch.zeros(2, 3), "x"),
        (torch.zeros(2, 6), torch.full((2, 3), float("inf")), "y"),
        (torch.zeros(2, 5), torch.zeros(2, 3), "x"),
        (torch.zeros(2, 6), None, "y"),
    ],
)
def test_bank_direction_errors_name_the_input(x, y, name):
    bank = sparke.Bank()
    bank.add(torch.ones(4, 6), torch.ones(4, 3))
    with pytest.raises(ValueError, match=rf"^{name}:"):
        bank.direction(x, y, sigma_image=0.8, sigma_prompt=0.3)


def test_unchecked_step_returns_nan_instead_of_raising():
    bank = sparke.Bank()
    bank.add(torch.ones(4, 6), torch.ones(4, 3))
    out = fast.bank_direction(bank, torch.full((2, 6), float("nan")), torch.zeros(2, 3), check_finite=False)
    assert torch.isnan(out).all()


def test_skip_mode_of_a_warm_bank_never_reads_a_tensor_on_the_host(monkeypatch):
    """The guided step with on_nonfinite="skip": no .item(), float(t), bool(t), int(t), .tolist(), .cpu()."""
    rows, prompts = clustered(300, 32, 4, seed=5, dtype=torch.float32)
    bank = sparke.Bank()
    bank.add(rows[4:], prompts[4:])
    x, y = rows[:4].clone(), prompts[:4].clone()
    bank.direction(x, y)  # warms the bank: kept pair sum, cached norms
    x[2, 0] = float("nan")
    skipped = torch.zeros((), dtype=torch.int64)

    def sync(*args, **kwargs):
        raise AssertionError("host sync in the guided step")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    got = bank.direction(x, y, on_nonfinite="skip", skipped=skipped)
    monkeypatch.undo()
    assert int(skipped) == 1 and torch.equal(got[2], torch.zeros(32))
    # the other rows get the direction of the batch without the bad row
    clean = bank.direction(x[[0, 1, 3]], y[[0, 1, 3]])
    torch.testing.assert_close(got[[0, 1, 3]], clean, rtol=1e-5, atol=1e-7)


def test_skip_mode_equals_raise_mode_on_finite_input():
    rows, prompts = clustered(300, 32, 4, seed=6, dtype=torch.float32)
    bank = sparke.Bank(dtype=torch.float16)
    bank.add(rows[4:], prompts[4:])
    skipped = torch.zeros((), dtype=torch.int64)
    for kernel in ("gaussian", "cosine"):
        raised = bank.direction(rows[:4], prompts[:4], kernel=kernel)
        got = bank.direction(rows[:4], prompts[:4], kernel=kernel, on_nonfinite="skip", skipped=skipped)
        assert torch.equal(got, raised)
    assert int(skipped) == 0
