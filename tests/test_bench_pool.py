"""``sparke.bench.pool``: one setting's effect pooled over prompt sets, with the stratified paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from sparke.bench.pool import pooled_comparison, pooled_effect
from sparke.metrics.bootstrap import delta, interval

METRICS = ("fidelity", "cond_vendi", "free_attribute_entropy")


def _set(seed: int, effects: dict[str, tuple[float, float, float]], n_boot: int = 400, sd: float = 0.02):
    """A bench folder's rows and replicates: world, none and one row per label, (fidelity, Cond-Vendi,
    free-attribute entropy) as given; replicates = estimate + one shared draw per resample (the paired noise
    of the set) + a small row-specific draw."""
    rng = np.random.default_rng(seed)
    shared = {m: rng.normal(0, sd, n_boot) for m in METRICS}
    values = {"world": (1.0, 2.5, 0.95), "none": (0.60, 2.0, 0.60), **effects}
    rows, reps = [], []
    for label, triple in values.items():
        method = {"world": "world", "none": "none"}.get(label, "sparke")
        rows.append({"label": label, "method": method, "scale": 0.03 if method == "sparke" else 0.0})
        rows[-1].update(zip(METRICS, triple, strict=True))
        reps.append(
            {m: v + shared[m] + rng.normal(0, sd / 4, n_boot) for m, v in zip(METRICS, triple, strict=True)}
        )
    return rows, reps


def test_one_set_gives_that_sets_paired_figures():
    rows, reps = _set(0, {"sparke": (0.57, 2.3, 0.74)})
    e = pooled_effect([(rows, reps)], "sparke", 0.03)
    # float64 arithmetic on the same numbers in another order: ~1e-15
    assert e["sets"] == 1 and e["fidelity_delta"] == pytest.approx(-3.0, abs=1e-9)
    assert e["gain"] == pytest.approx(0.15, abs=1e-12) and e["closed"] == pytest.approx(0.4, abs=1e-12)
    expected = delta(0.57, reps[2]["fidelity"], 0.60, reps[1]["fidelity"])["ci"]
    np.testing.assert_allclose(e["fidelity_delta_ci"], [100 * v for v in expected], atol=1e-9)
    gain_reps = reps[2]["cond_vendi"] / reps[1]["cond_vendi"] - 1
    np.testing.assert_allclose(e["gain_ci"], interval(0.15, gain_reps), atol=1e-12)
    assert e["fidelity_delta_ci"][0] <= -3.0 <= e["fidelity_delta_ci"][1]


def test_pooled_estimates_are_the_sets_means_and_the_interval_narrows_as_one_over_root_k():
    n_boot = 20_000
    single = [_set(s, {"sparke": (0.58 + 0.01 * s, 2.3, 0.74)}, n_boot) for s in range(4)]
    e = pooled_effect(single, "sparke", 0.03)
    # the pooled fidelity difference is the mean of the per-set ones (equal-size sets: the union's difference)
    assert e["fidelity_delta"] == pytest.approx(
        100 * np.mean([0.58 + 0.01 * s - 0.60 for s in range(4)]), abs=1e-9
    )
    assert [round(d, 9) for d, _ in e["per_set"]] == [round(100 * (0.01 * s - 0.02), 9) for s in range(4)]
    widths = [np.diff(pooled_effect([one], "sparke", 0.03)["fidelity_delta_ci"])[0] for one in single]
    pooled_width = np.diff(e["fidelity_delta_ci"])[0]
    # independent sets of equal noise: the mean's spread is 1/sqrt(4) of one set's; 20,000 resamples put the
    # percentile widths within ~2% of their limits, so 10% is a safe bound
    assert pooled_width == pytest.approx(np.mean(widths) / 2, rel=0.10)


def test_comparison_is_paired_within_each_set():
    sets = [_set(s, {"sparke": (0.58, 2.30, 0.74), "other": (0.59, 2.40, 0.76)}) for s in range(3)]
    c = pooled_comparison(sets, ("other", 0.03), ("sparke", 0.03))
    assert c["fidelity_delta"] == pytest.approx(1.0, abs=1e-9)
    assert c["gain"] == pytest.approx(0.05, abs=1e-12)
    # paired: per set, each row's gain replicate over the same resample's none, then their difference
    gains = [[r["cond_vendi"] / reps[1]["cond_vendi"] - 1 for r in reps[2:]] for _, reps in sets]
    by_hand = np.mean([g_other - g_sparke for g_sparke, g_other in gains], 0)
    np.testing.assert_allclose(c["gain_ci"], interval(0.05, by_hand), atol=1e-12)
    assert c["gain_ci"][0] > 0  # 0.05 apart with 1% noise


def test_refuses_sets_it_cannot_pool():
    one = _set(0, {"sparke": (0.57, 2.3, 0.74)})
    with pytest.raises(ValueError, match="no prompt sets"):
        pooled_effect([], "sparke", 0.03)
    with pytest.raises(ValueError, match=r"lacks \['row'\] for motion 2 0.03"):
        pooled_effect([one], "motion 2", 0.03)
    other = _set(1, {"sparke": (0.57, 2.3, 0.74)}, n_boot=100)
    with pytest.raises(ValueError, match="different numbers of bootstrap resamples"):
        pooled_effect([one, other], "sparke", 0.03)


def test_pooled_rows_hold_every_guided_row_on_all_sets_with_its_difference_to_the_default():
    from sparke.bench.pool import pooled_markdown, pooled_rows

    sets = [_set(s, {"sparke": (0.58, 2.30, 0.74), "other": (0.59, 2.40, 0.76)}) for s in range(2)]
    extra = _set(2, {"sparke": (0.58, 2.30, 0.74), "other": (0.59, 2.40, 0.76), "only here": (0.5, 2.0, 0.6)})
    rows, left_out = pooled_rows([*sets, extra], default=("sparke", 0.03))
    assert [(r["label"], r["scale"]) for r in rows] == [("sparke", 0.03), ("other", 0.03)]
    assert left_out == ["only here 0.03"]
    assert rows[0]["versus_default"] is None  # the default itself
    expected = pooled_comparison([*sets, extra], ("other", 0.03), ("sparke", 0.03))
    assert rows[1]["versus_default"] == expected
    assert {k: rows[1][k] for k in ("fidelity_delta", "gain")} == {
        k: pooled_effect([*sets, extra], "other", 0.03)[k] for k in ("fidelity_delta", "gain")
    }
    # without the default on every set there is nothing to compare with
    rows, _ = pooled_rows([_set(0, {"other": (0.59, 2.40, 0.76)})])
    assert rows[0]["versus_default"] is None
    table = "\n".join(pooled_markdown(rows, [0], []))
    # the ground truth leads: fidelity, gap closed, coverage (these sets have none: "-"), then Cond-Vendi
    assert "| other | 0.03 | -1.0 [" in table and "% [" in table and "| - | +20.0% [" in table
    with pytest.raises(ValueError, match="no prompt sets"):
        pooled_rows([])


def _with_ground_truth(rows_reps, coverage: dict[str, float], matching: dict[str, float] | None):
    """``_set``'s rows and replicates with a free-attribute coverage and (unless None) a Cond-Vendi among
    matching images per label; replicates: the estimate plus a label-independent offset per resample."""
    rows, reps = rows_reps
    offsets = np.linspace(-0.01, 0.01, len(reps[0]["fidelity"]))
    for row, rep in zip(rows, reps, strict=True):
        row["free_attribute_coverage"] = coverage[row["label"]]
        rep["free_attribute_coverage"] = coverage[row["label"]] + offsets
        if matching is not None:
            row["cond_vendi_matching"] = matching[row["label"]]
            rep["cond_vendi_matching"] = matching[row["label"]] * (1 + offsets)
    return rows, reps


def test_pooled_coverage_and_matching_gain_and_the_worlds_own_row():
    coverage = {"world": 0.9, "none": 0.5, "sparke": 0.6}
    matching = {"world": 2.4, "none": 1.6, "sparke": 2.0}
    sets = [_with_ground_truth(_set(s, {"sparke": (0.58, 2.3, 0.74)}), coverage, matching) for s in range(2)]
    e = pooled_effect(sets, "sparke", 0.03)
    # same estimates on both sets: the pooled figures are theirs (float64 rounding only)
    assert e["coverage_delta"] == pytest.approx(0.1, abs=1e-12)
    assert e["gain_matching"] == pytest.approx(0.25, abs=1e-12)
    # replicates moved together with none's: every resample has the same coverage difference
    assert e["coverage_delta_ci"] == pytest.approx([0.1, 0.1], abs=1e-12)
    world = pooled_effect(sets, "world", 0.0)
    assert world["closed"] == pytest.approx(1.0, abs=1e-12) and world["gain_matching"] == pytest.approx(0.5)
    from sparke.bench.pool import pooled_markdown, pooled_rows

    rows, _ = pooled_rows(sets)
    table = pooled_markdown(rows, [0, 1], [], world)
    body = [line for line in table if line.startswith("| world") or line.startswith("| sparke")]
    assert body[0].startswith("| world |  | +40.0 [") and "| 100% [" in body[0]  # the reference comes first
    assert "| +0.100 [+0.100, +0.100] | +15.0% [" in body[1] and "| +25.0% [" in body[1]


def test_sets_from_before_the_matching_only_score_still_pool():
    coverage = {"world": 0.9, "none": 0.5, "sparke": 0.6}
    old = _with_ground_truth(_set(0, {"sparke": (0.58, 2.3, 0.74)}), coverage, None)
    new = _with_ground_truth(
        _set(1, {"sparke": (0.58, 2.3, 0.74)}), coverage, {"world": 2.4, "none": 1.6, "sparke": 2.0}
    )
    e = pooled_effect([old, new], "sparke", 0.03)
    assert e["gain_matching"] is None and e["gain_matching_ci"] is None  # not on every set: not pooled
    assert e["coverage_delta"] == pytest.approx(0.1, abs=1e-12)
    assert e["fidelity_delta"] == pytest.approx(-2.0, abs=1e-9)


def test_old_folders_without_replicates_pool_as_estimates_only(tmp_path):
    """experiments/runs/heldout-seed{1,2}: results.json from before replicates.npz and the matching-only score."""
    import json
    from pathlib import Path

    from sparke.bench.pool import pool_folders

    folders = [Path(__file__).parents[1] / "experiments" / "runs" / f"heldout-seed{s}" for s in (1, 2)]
    rows = pool_folders(tmp_path, folders)
    by_set = [json.loads((f / "results.json").read_text()) for f in folders]

    def value(rows_of_set, label, scale, key):
        return next(r[key] for r in rows_of_set if r["label"] == label and r["scale"] == scale)

    sparke = next(r for r in rows if r["label"] == "sparke" and r["scale"] == 0.03)
    expected = np.mean(
        [value(s, "sparke", 0.03, "fidelity") - value(s, "none", 0.0, "fidelity") for s in by_set]
    )
    assert sparke["fidelity_delta"] == pytest.approx(100 * expected, abs=1e-9)
    coverage = [
        value(s, "sparke", 0.03, "free_attribute_coverage") - value(s, "none", 0.0, "free_attribute_coverage")
        for s in by_set
    ]
    assert sparke["coverage_delta"] == pytest.approx(np.mean(coverage), abs=1e-12)
    assert sparke["fidelity_delta_ci"] is None and sparke["gain_matching"] is None
    table = (tmp_path / "pooled.md").read_text()
    assert "No intervals" in table and "| world |" in table
