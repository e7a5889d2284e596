"""Paired bootstrap intervals (sparke.metrics.bootstrap) on known distributions and exact small cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparke.metrics.bootstrap import (
    cond_vendi_replicates,
    delta,
    draw_units,
    interval,
    mean_replicates,
    metric_bounds,
    metric_interval,
    vendi_replicates,
)


def test_draws_keep_the_grid_size():
    draws = draw_units(5, 3, n_boot=200, seed=1)
    assert draws.weights.shape == (200, 5, 3)
    assert (draws.weights.sum((1, 2)) == 15).all()  # every resample has C * R units
    # the cluster bootstrap: a drawn cluster comes with all its rounds once per draw
    assert (draws.weights == draws.weights[:, :, :1]).all()
    assert np.array_equal(draws.weights, draw_units(5, 3, n_boot=200, seed=1).weights)
    two = draw_units(5, 3, n_boot=200, seed=1, rounds="resample")
    assert (two.weights.sum((1, 2)) == 15).all() and (two.weights.sum(2) % 3 == 0).all()
    assert not (two.weights == two.weights[:, :, :1]).all()
    with pytest.raises(ValueError):
        draw_units(0, 3)


def test_single_unit_and_constant_data_give_a_point_interval():
    draws = draw_units(1, 1, n_boot=50)
    reps = mean_replicates(np.array([[3.0]]), np.array([[4]]), draws)
    assert np.allclose(reps, 0.75)
    assert interval(0.75, reps) == pytest.approx([0.75, 0.75])
    d = delta(0.75, reps, 0.5, np.full(50, 0.5))
    assert d["value"] == pytest.approx(0.25) and d["ci"] == pytest.approx([0.25, 0.25])


def test_interval_contains_its_estimate_and_stays_in_range():
    reps = np.arange(1001, dtype=float)  # median 500, 2.5% / 97.5% quantiles 25 / 975
    assert interval(500.0, reps, recentre=False) == pytest.approx([25.0, 975.0])
    assert interval(510.0, reps) == pytest.approx([35.0, 985.0])  # recentred: the median moves onto 510
    # a mean's percentile interval is widened to an estimate outside it, never shifted
    assert interval(990.0, reps, recentre=False) == pytest.approx([25.0, 990.0])
    # the cases: recentring by the mean pushed rates below 0 or above 1; bounds clip, keep the estimate
    skewed = np.r_[np.zeros(20), np.full(480, 0.9)]
    low, high = interval(0.98, skewed, bounds=(0.0, 1.0))
    assert 0.0 <= low <= 0.98 <= high <= 1.0
    assert interval(1.0, np.ones(300), bounds=(0.0, 1.0)) == pytest.approx([1.0, 1.0])
    # Vendi's replicates sit below the estimate (duplicates): recentred, then kept in [1, n]
    vendi_reps = np.linspace(1.0, 2.0, 500)
    assert interval(1.2, vendi_reps, bounds=(1.0, 12.0)) == pytest.approx([1.0, 1.2 + 0.5 - 0.025], abs=1e-9)
    rng = np.random.default_rng(5)
    for _ in range(200):  # any replicates, any estimate in range: the interval holds it and stays in range
        reps = rng.beta(0.3, 0.3, size=rng.integers(2, 60))
        estimate = float(rng.uniform())
        for recentre in (False, True):
            low, high = interval(estimate, reps, bounds=(0.0, 1.0), recentre=recentre)
            assert 0.0 <= low <= estimate <= high <= 1.0


def test_metric_interval_uses_each_metric_range():
    assert metric_bounds("match_rate", 10) == (0.0, 1.0) and metric_bounds("fidelity", 10) == (0.0, 1.0)
    assert metric_bounds("vendi", 24) == (1.0, 24.0) and metric_bounds("cond_vendi", 24) == (1.0, 24.0)
    assert metric_bounds("in_batch_similarity", 24) is None
    assert metric_interval("vendi", 23.5, np.linspace(20.0, 24.0, 100), 24)[1] == 24.0


def test_a_resample_without_known_items_has_no_mean():
    # the vendi run of issue 21: a rate of 1.000 with interval [1.002, 1.002]. A cluster whose prompts the
    # checker cannot read has count 0; a resample drawing only such clusters had replicate 0 (0 / max(0, tiny)),
    # which pulled the replicates' mean below the estimate. Now it is undefined and dropped.
    draws = draw_units(2, 1, n_boot=400, seed=0)
    reps = mean_replicates(np.array([[3.0], [0.0]]), np.array([[3.0], [0.0]]), draws)
    empty = draws.weights[:, 0, 0] == 0
    assert empty.any() and np.isnan(reps[empty]).all() and np.allclose(reps[~empty], 1.0)
    assert interval(1.0, reps, bounds=(0.0, 1.0), recentre=False) == pytest.approx([1.0, 1.0])


def test_bootstrap_of_a_mean_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    hits, trials = 0, 200
    for t in range(trials):
        # 12 clusters x 4 rounds of 8 normal samples each, true mean 1.0
        data = rng.normal(1.0, 2.0, size=(12, 4, 8))
        draws = draw_units(12, 4, n_boot=300, seed=t)
        reps = mean_replicates(data.sum(2), np.full((12, 4), 8), draws)
        low, high = interval(float(data.mean()), reps)
        hits += low <= 1.0 <= high
    assert 0.89 <= hits / trials <= 0.99


def test_rate_interval_covers_the_true_rate_about_95_percent_near_the_edge():
    # a prompt-match rate of 0.9 with cluster effects (some prompts are harder): 16 clusters of 6 images
    rng = np.random.default_rng(11)
    hits, trials, inside = 0, 300, True
    for t in range(trials):
        p = np.clip(0.9 + rng.normal(0.0, 0.05, size=16), 0.0, 1.0)  # cluster rates, mean ~0.9
        true = float(p.mean())
        flags = rng.random((16, 1, 6)) < p[:, None, None]
        reps = mean_replicates(flags.sum(2), np.full((16, 1), 6), draw_units(16, 1, n_boot=300, seed=t))
        estimate = float(flags.mean())
        low, high = metric_interval("match_rate", estimate, reps, 96)
        inside &= 0.0 <= low <= estimate <= high <= 1.0
        hits += low <= true <= high
    assert inside
    assert 0.89 <= hits / trials <= 0.99  # 300 trials: the binomial s.d. of 95% is 1.3 points


def test_mean_width_matches_the_standard_error_and_two_stage_is_too_wide():
    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 1.0, size=(24, 6, 8))
    se = data.std() / np.sqrt(data.size)
    widths = {}
    for rounds in ("keep", "resample"):
        draws = draw_units(24, 6, n_boot=2000, seed=2, rounds=rounds)
        low, high = interval(float(data.mean()), mean_replicates(data.sum(2), np.full((24, 6), 8), draws))
        widths[rounds] = (high - low) / (2 * 1.96 * se)
    assert 0.8 < widths["keep"] < 1.15
    assert widths["resample"] > 1.25


def test_cluster_effects_are_covered():
    # strong cluster effects (prompts that are easy or hard): the interval must widen to cover them
    rng = np.random.default_rng(7)
    hits, trials = 0, 200
    for t in range(trials):
        effect = rng.normal(0.0, 1.0, size=(24, 1, 1))
        data = 1.0 + effect + rng.normal(0.0, 0.5, size=(24, 4, 8))
        reps = mean_replicates(data.sum(2), np.full((24, 4), 8), draw_units(24, 4, n_boot=300, seed=t))
        low, high = interval(float(data.mean()), reps)
        hits += low <= 1.0 <= high
    assert 0.88 <= hits / trials <= 0.99


def test_paired_difference_is_narrower_for_correlated_methods():
    rng = np.random.default_rng(3)
    shared = rng.normal(0.0, 1.0, size=(12, 4))  # the common noise: cluster and round effects
    a = shared + 0.05 * rng.normal(size=(12, 4))
    b = shared + 0.3 + 0.05 * rng.normal(size=(12, 4))
    draws = draw_units(12, 4, n_boot=1000, seed=4)
    counts = np.ones((12, 4))
    ra, rb = mean_replicates(a, counts, draws), mean_replicates(b, counts, draws)
    paired = delta(float(b.mean()), rb, float(a.mean()), ra)
    # unpaired: b's replicates from independent resamples
    rb_ind = mean_replicates(b, counts, draw_units(12, 4, n_boot=1000, seed=5))
    unpaired = delta(float(b.mean()), rb_ind, float(a.mean()), ra)
    width = paired["ci"][1] - paired["ci"][0]
    assert width < 0.2 * (unpaired["ci"][1] - unpaired["ci"][0])
    assert paired["ci"][0] > 0.2 and paired["ci"][1] < 0.4  # the true shift 0.3 is resolved


def test_vendi_replicates_match_the_core_scores_on_unit_weights_and_duplicates():
    from sparke.core import cond_vendi, vendi

    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(12, 5, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(12, 4, dtype=torch.float64), dim=1)
    ones = np.ones((1, 12))
    assert vendi_replicates(x, 0.8, ones)[0] == pytest.approx(vendi(x, sigma=0.8), rel=1e-4)
    cv = cond_vendi_replicates(x, y, 0.8, 0.3, ones)[0]
    assert cv == pytest.approx(cond_vendi(x, y, sigma_image=0.8, sigma_prompt=0.3), rel=1e-4)
    # weights = an explicit multiset with duplicates
    w = np.array([[2, 0, 1, 3, 0, 1, 1, 0, 2, 1, 0, 1]])
    rows = np.repeat(np.arange(12), w[0])
    assert vendi_replicates(x, 0.8, w)[0] == pytest.approx(vendi(x[rows], sigma=0.8), rel=1e-4)
    cv = cond_vendi_replicates(x, y, 0.8, 0.3, w)[0]
    assert cv == pytest.approx(cond_vendi(x[rows], y[rows], sigma_image=0.8, sigma_prompt=0.3), rel=1e-4)


def test_vendi_interval_of_identical_sets_is_a_point_and_differs_from_a_spread_set():
    x = torch.nn.functional.normalize(torch.ones(16, 3, dtype=torch.float64), dim=1)
    draws = draw_units(4, 4, n_boot=40)
    cluster, round_ = np.repeat(np.arange(4), 4), np.tile(np.arange(4), 4)
    reps = vendi_replicates(x, 0.8, draws.per_item(cluster, round_))
    assert np.allclose(reps, 1.0, atol=1e-4)


def test_cluster_intervals_of_a_run():
    from sparke.core import cond_vendi, vendi
    from sparke.metrics.bootstrap import cluster_intervals

    torch.manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(24, 6, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(torch.randn(24, 5, dtype=torch.float64), dim=1)
    groups = [f"c{i // 4}" for i in range(24)]  # 6 clusters of 4 images
    flags = [(i % 3 != 0, True) for i in range(23)] + [None]
    est = {
        "vendi": vendi(x, sigma=0.8),
        "cond_vendi": cond_vendi(x, y, sigma_image=0.8, sigma_prompt=0.3),
        "match_rate": float(np.mean([f[0] for f in flags[:23]])),
        "match_shape_colour": 1.0,
    }
    ci = cluster_intervals(x, y, groups, est, flags=flags, n_boot=100)
    assert set(ci) == {"vendi", "cond_vendi", "match_rate", "match_shape_colour"}
    for metric, (low, high) in ci.items():
        assert low <= est[metric] + 1e-9 <= high + 2e-9, metric
    assert ci["match_shape_colour"] == pytest.approx([1.0, 1.0])
    assert cluster_intervals(x, y, ["one"] * 24, est) is None  # one cluster: nothing to resample
