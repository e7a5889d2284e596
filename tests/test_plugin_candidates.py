"""Issue 20's step options of SPARKE: partial centring, the step orthogonal to the CFG direction, and the
per-sample crowding scale; each by an exact relation (the pipeline runs are in test_plugin_pipelines.py)."""

from __future__ import annotations

import math

import pytest
import torch

from sparke.core.kernels import kernel_mass
from sparke.core.spec import KernelSpec
from sparke.guidance import SPARKE, Update
from sparke.guidance.spaces import centred, features, space_label, unit_rows
from sparke.guidance.update import cfg_direction, crowding_factor
from sparke.guidance.update import without_component as _without_component
from sparke.methods.sparke import SPARKE_HELP, SPARKE_SETTINGS, SPARKE_SPEC
from sparke.runs.config import ADDED_SETTINGS

# float32 sums over <= 1,024 entries of O(1) values: rounding ~1e-6, far below the relations' own scale (1e-1)
TOL = 1e-5


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_partial_centring_keeps_the_stated_share_of_each_channel_mean(fraction):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=gen) + torch.arange(4.0).view(1, 4, 1, 1)  # distinct channel means
    out = centred(z, fraction)
    torch.testing.assert_close(out.mean((2, 3)), (1 - fraction) * z.mean((2, 3)), atol=TOL, rtol=0)
    # what is left around each channel's mean is untouched
    torch.testing.assert_close(out - out.mean((2, 3), keepdim=True), z - z.mean((2, 3), keepdim=True))
    packed = z.flatten(2).transpose(1, 2)  # (B, seq, C)
    torch.testing.assert_close(
        centred(packed, fraction).mean(1), (1 - fraction) * packed.mean(1), atol=TOL, rtol=0
    )
    assert torch.equal(centred(z), centred(z, 1.0))  # True = 1 = the full centring of issue 13
    if fraction:
        torch.testing.assert_close(features("latent", None, z, centre=fraction), unit_rows(out))
    else:
        assert torch.equal(features("latent", None, z, centre=0.0), unit_rows(z))


def test_space_labels_name_a_partial_fraction():
    assert space_label("x0", True) == space_label("x0", 1.0) == "x0-centred"
    assert space_label("x0", False) == space_label("x0", 0.0) == "x0"
    assert space_label("latent", 0.5) == "latent-centred-0.5"


SPEC = KernelSpec(sigma_image=0.8, sigma_prompt=0.3)


def test_kernel_mass_against_its_definition(monkeypatch):
    import sparke.core.kernels as kernels

    monkeypatch.setattr(kernels, "MASS_BLOCK", 3)  # blocks of 3 bank rows: the blocked sum is exercised
    gen = torch.Generator().manual_seed(1)
    x, rows = unit_rows(torch.randn(5, 16, generator=gen)), unit_rows(torch.randn(7, 16, generator=gen))
    y, rows_y = unit_rows(torch.randn(5, 3, generator=gen)), unit_rows(torch.randn(7, 3, generator=gen))
    slow = torch.tensor(
        [
            sum(
                math.exp(-float((x[i] - rows[j]).square().sum()) / (2 * 0.8**2))
                * math.exp(-float((y[i] - rows_y[j]).square().sum()) / (2 * 0.3**2))
                for j in range(7)
            )
            for i in range(5)
        ]
    )
    fast = kernel_mass(x, rows, y, rows_y, SPEC)
    torch.testing.assert_close(fast, slow, atol=TOL, rtol=TOL)
    image_only = kernel_mass(x, rows, None, None, SPEC)
    assert (image_only >= fast).all()  # a prompt factor <= 1 only lowers the mass
    assert torch.equal(kernel_mass(x, rows[:0], y, rows_y[:0], SPEC), torch.zeros(5))
    # a duplicate of a sample, with the sample's own prompt, adds exactly 1
    dup = kernel_mass(x[:1], torch.cat([rows, x[:1]]), y[:1], torch.cat([rows_y, y[:1]]), SPEC)
    torch.testing.assert_close(dup - fast[:1], torch.ones(1), atol=TOL, rtol=0)


def test_crowding_factor_is_zero_without_mass_and_increases_with_it():
    mass = torch.tensor([0.0, 0.1, 0.5, 1.0, 4.0, 100.0])
    f = crowding_factor(mass, 0.5)
    assert f[0] == 0.0 and f[2] == 0.5  # half the step where the mass equals `crowding`
    assert (f[1:] > f[:-1]).all() and (f < 1).all()


def test_crowding_with_an_empty_bank_leaves_every_sample_alone():
    guide = SPARKE(update=Update(crowding=0.5))
    x = unit_rows(torch.randn(4, 12))
    assert torch.equal(guide._crowding(x, unit_rows(torch.randn(4, 3)), guide.spec), torch.zeros(4))
    guide.bank.add(x[:1], unit_rows(torch.ones(1, 3)))
    y = unit_rows(torch.ones(4, 3))
    f = guide._crowding(x, y, guide.spec)
    assert f[0] == pytest.approx(1 / 1.5, abs=TOL)  # its own duplicate: mass 1
    assert (f[1:] < f[0]).all()  # farther from the one bank row: less mass, a smaller step


def test_cfg_direction_reads_the_cfg_halves_in_any_order_and_refuses_other_batches():
    gen = torch.Generator().manual_seed(2)
    like = torch.randn(2, 4, 3, 3, generator=gen)
    uncond, cond = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    line = cfg_direction(torch.cat([uncond, cond]), like)
    torch.testing.assert_close(line, (cond - uncond).flatten(1))
    # DiT's order: the same line
    torch.testing.assert_close(cfg_direction(torch.cat([cond, uncond]), like), -line)
    # a learned-variance output (2C channels) is read from its first C channels
    variance = torch.randn(2, 4, 3, 3, generator=gen)
    learned = torch.cat([torch.cat([uncond, variance], dim=1), torch.cat([cond, -variance], dim=1)])
    torch.testing.assert_close(cfg_direction(learned, like), line)
    assert cfg_direction(cond, like) is None  # no CFG batch: the plain step
    assert cfg_direction(None, like) is None
    assert cfg_direction(torch.randn(4, 5, 3, 3), like) is None  # a layout it cannot read


def test_without_component_leaves_a_row_orthogonal_to_the_line():
    gen = torch.Generator().manual_seed(3)
    g, c = torch.randn(4, 50, generator=gen), torch.randn(4, 50, generator=gen)
    c[3] = 0.0  # no line: nothing removed
    out = _without_component(g, c)
    assert (out[:3] * c[:3]).sum(1).abs().max() < TOL * g.norm()
    assert torch.equal(out[3], g[3])
    # only the component along c went: what is orthogonal to c is kept
    torch.testing.assert_close(g - out, ((g * c).sum(1) / (c * c).sum(1).clamp_min(1e-30))[:, None] * c)
    assert _without_component(g, None) is g


def test_options_are_checked_documented_and_resume_old_run_folders():
    for bad in (
        dict(centre=1.5),
        dict(centre=-0.1),
        dict(centre="yes"),
        dict(orthogonal=1),
        dict(crowding=-1),
        dict(motion=-1),
        dict(motion=True),
        dict(motion="local"),
    ):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"^{name}:"):
            Update(**bad)
    assert SPARKE(update=Update(centre=0.5)).centre == 0.5
    for name in ("orthogonal", "crowding", "motion", "warp"):
        assert name in SPARKE_SETTINGS and name in SPARKE_HELP
    for name in ("orthogonal", "crowding"):
        # a folder made before the setting existed ran with its off value, today's default
        assert ADDED_SETTINGS[name] == SPARKE_SPEC.defaults[name]
    assert SPARKE_SPEC.defaults["orthogonal"] is False and SPARKE_SPEC.defaults["crowding"] == 0.0
    # the warped motion step became the default after folders were made without it (off): those folders
    # resume only with motion=0 (and the old scale), never silently with the new step
    assert SPARKE_SPEC.defaults["motion"] == 2.0 and SPARKE_SPEC.defaults["warp"] == "auto"
    assert (ADDED_SETTINGS["motion"], ADDED_SETTINGS["warp"]) == (0.0, False)
    assert (
        SPARKE(update=Update(motion="global")).motion == "global"
        and SPARKE(update=Update(motion=2)).motion == 2.0
    )
