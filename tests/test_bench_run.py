"""``sparke bench`` end to end on a tiny random ShapesPipeline and encoder (seconds), and its metrics."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sparke.bench import BenchConfig, run_bench
from sparke.bench.metrics import CI_METRICS, free_attribute_scores
from sparke.bench.report import best_rows, goal_check

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REQUIRED = (
    "method",
    "scale",
    "fidelity",
    "cond_vendi",
    "vendi",
    "in_batch_similarity",
    "free_attribute_coverage",
    "sec_per_image",
)


@pytest.fixture(autouse=True)
def cheap_text_features(monkeypatch):
    """A hashed stand-in for MiniLM (its BERT dominated these tests' time): equal texts, equal rows."""
    import zlib

    import sparke.encoders.minilm as minilm

    def encode(prompts, device=None, batch_size=256):
        rows = [
            torch.randn(384, generator=torch.Generator().manual_seed(zlib.crc32(p.encode()))) for p in prompts
        ]
        return torch.nn.functional.normalize(torch.stack(rows), dim=1).to(device or "cpu")

    monkeypatch.setattr(minilm, "encode_minilm", encode)


def _tiny():
    from sparke.embedded.encoder import ShapesEncoder
    from sparke.embedded.pipeline import TINY_UNET_CONFIG, ShapesPipeline, build_scheduler, build_unet

    torch.manual_seed(0)
    micro = {**TINY_UNET_CONFIG, "block_out_channels": (8, 16), "norm_num_groups": 4}  # fast: seconds for all
    pipe = ShapesPipeline(build_unet(micro).eval().requires_grad_(False), build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe, ShapesEncoder().eval().requires_grad_(False)


def test_run_bench_writes_rows_table_and_plots(tmp_path):
    pipe, encoder = _tiny()
    config = BenchConfig(
        clusters=2,
        prompts=2,
        seeds=2,
        steps=2,
        n_boot=50,
        sweeps={"sparke": [0.1], "cads": [0.25], "pg": [0.1]},  # rke/vendi: tests/test_baselines_*
        variants={"sparke x0": {"method": "sparke", "scales": [0.1], "options": {"space": "x0"}}},
        mixture=False,
    )
    meta = run_bench(config, tmp_path, command="test", progress=None, pipe=pipe, encoder=encoder)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert isinstance(rows, list)
    labels = [r["label"] for r in rows]
    assert labels == ["world", "none", "sparke", "cads", "pg", "sparke x0"]
    for r in rows:
        for key in REQUIRED:
            assert key in r, key
        assert 0.0 <= r["fidelity"] <= 1.0 and 0.0 <= r["free_attribute_coverage"] <= 1.0
        assert r["n_images"] == 8
        for m in CI_METRICS:
            if m.startswith("world_") and r["method"] == "world":  # measured against the world itself
                assert m not in r and m not in r["ci"]
                continue
            if r[m] is None or rows[1][m] is None:  # no image (of this row, or of none) matches its prompt
                assert m == "cond_vendi_matching" and m not in r["delta_vs_none"]
                assert (r[m] is None) == (m not in r["ci"]) and (r[m] is None) == (r["fidelity"] == 0)
                continue
            assert 0.0 <= r[m] <= 1.0 or not m.startswith("world_")
            low, high = r["ci"][m]
            assert low <= r[m] + 1e-9 and r[m] - 1e-9 <= high, (r["label"], m)
            d = r["delta_vs_none"][m]
            assert d["value"] == pytest.approx(r[m] - rows[1][m])
            assert d["ci"][0] <= d["value"] + 1e-9 <= d["ci"][1] + 2e-9
    assert rows[1]["delta_vs_none"]["fidelity"] == {"value": 0.0, "ci": [0.0, 0.0]}
    assert rows[0]["fidelity"] == 1.0  # the world's own renders match their prompts
    # ... so its Cond-Vendi among matching images is its plain Cond-Vendi (the same images, same arithmetic)
    assert rows[0]["cond_vendi_matching"] == pytest.approx(rows[0]["cond_vendi"], abs=1e-12)
    assert all(r["sec_per_image"] > 0 for r in rows[1:])
    for name in ("results.md", "tradeoff.png", "samples.png", "meta.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert "goal" in meta and "Best scale per method" in (tmp_path / "results.md").read_text()
    assert "criteria" in meta["goal"] and meta["intervals"]["n_boot"] == 50
    assert "paired differences to `none`" in (tmp_path / "results.md").read_text()
    assert "recall (world)" in (tmp_path / "results.md").read_text()


def test_seed_draws_another_prompt_set_and_noise(monkeypatch, tmp_path):
    from sparke.bench.runner import Setting, generate_setting
    from sparke.embedded import world as W

    quick = [c.prompts for c in W.prompt_clusters(12, 8, seed=0)]
    for seed in (1, 2):
        other = [c.prompts for c in W.prompt_clusters(12, 8, seed=seed)]
        assert other != quick and len({p for c in other for p in c} & {p for c in quick for p in c}) < 48
    pipe, _ = _tiny()
    clusters = W.prompt_clusters(1, 2, seed=0)
    images = [
        generate_setting(
            pipe,
            clusters,
            Setting("none", "none", 0.0, {}),
            BenchConfig(clusters=1, prompts=2, seeds=1, steps=2, seed=s),
        ).images
        for s in (0, 1)
    ]
    assert not np.array_equal(images[0], images[1])  # another seed, other noise

    # the CLI passes --seed and --n-boot through to the run
    import sparke.bench as bench

    seen = {}

    def fake_run(config, out, **kwargs):
        seen["config"] = config
        return {"goal": {"met": False}, "wall_seconds": 1.0}

    monkeypatch.setattr(bench, "run_bench", fake_run)
    from cli_helpers import cli

    result = cli("bench", "--quick", "--seed", "2", "--n-boot", "100", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert seen["config"].seed == 2 and seen["config"].n_boot == 100
    assert seen["config"].clusters == 12


def test_same_noise_for_every_setting():
    # scale 0 of any method reproduces `none` exactly: every setting starts from the same noise
    from sparke.bench.runner import Setting, generate_setting
    from sparke.embedded import world as W

    pipe, _ = _tiny()
    config = BenchConfig(clusters=1, prompts=2, seeds=1, steps=2, mixture=False)
    clusters = W.prompt_clusters(1, 2, seed=0)
    a = generate_setting(pipe, clusters, Setting("none", "none", 0.0, {}), config)
    b = generate_setting(pipe, clusters, Setting("cads", "cads", 0.0, {}), config)
    assert np.array_equal(a.images, b.images)


def test_free_attribute_scores_count_only_matching_images():
    from sparke.embedded import world as W
    from sparke.embedded.checker import check, matches

    cluster = W.prompt_clusters(1, 2, seed=3)[0]
    rng = np.random.default_rng(0)
    scenes = [
        W.sample_scene(rng, cluster.shape, cluster.colour, background=cluster.background, count=cluster.count)
        for _ in range(40)
    ]
    dets = [check(W.render(s)) for s in scenes]
    ok = [matches(d, cluster) for d in dets]
    cov, ent = free_attribute_scores(dets, ok, cluster)
    assert 0.5 < cov <= 1.0 and 0.5 < ent <= 1.0
    assert free_attribute_scores(dets, [False] * len(dets), cluster) == (0.0, 0.0)
    same = [dets[0]] * 10
    cov1, ent1 = free_attribute_scores(same, [True] * 10, cluster)
    assert ent1 == 0.0 and cov1 < cov


def test_best_rows_respect_the_fidelity_floor_and_goal_check():
    base = {"method": "none", "label": "none", "scale": 0.0, "fidelity": 0.90, "cond_vendi": 10.0}
    rows = [
        base,
        {"method": "sparke", "label": "sparke", "scale": 0.1, "fidelity": 0.89, "cond_vendi": 12.0},
        {"method": "sparke", "label": "sparke", "scale": 0.3, "fidelity": 0.80, "cond_vendi": 20.0},
        {"method": "cads", "label": "cads", "scale": 0.25, "fidelity": 0.95, "cond_vendi": 11.0},
        {"method": "pg", "label": "pg", "scale": 1.0, "fidelity": 0.50, "cond_vendi": 30.0},
    ]
    best = best_rows(rows)
    assert best["sparke"]["scale"] == 0.1 and best["pg"] is None
    goal = goal_check(rows)
    assert goal["beats"] == {"cads": True}
    assert goal["met"] and abs(goal["cond_vendi_gain"] - 0.2) < 1e-9
    rows[1]["cond_vendi"] = 11.4  # +14%
    assert not goal_check(rows)["met"]
    rows[1]["cond_vendi"] = 11.6
    assert goal_check(rows)["met"]
    # a scale fixed beforehand (held-out prompt sets): checked even when it misses the fidelity floor
    fixed = goal_check(rows, fixed=("sparke", 0.3))
    assert fixed["sparke_scale"] == 0.3 and not fixed["met"] and not fixed["criteria"]["fidelity"]
    assert "reason" in goal_check(rows, fixed=("sparke", 0.05))


def test_mixture_experiment_runs_small(tmp_path):
    from sparke.bench.mixture import run_mixture, train_denoiser

    model = train_denoiser(steps=20, batch=64)
    rows = run_mixture(
        [("none", 0.0, {}), ("pg", 0.1, {})], out=tmp_path, rounds=1, per_prompt=2, steps=4, model=model
    )
    assert [r["method"] for r in rows] == ["none", "pg"]
    for r in rows:
        assert 0 <= r["mode_coverage"] <= 1 and 0 <= r["off_support"] <= 1
    assert (tmp_path / "mixture.png").stat().st_size > 0


def test_config_every_matches_the_papers_guided_fraction():
    assert dataclasses.replace(BenchConfig(), steps=50).every == 10
    assert BenchConfig(steps=10).every == 2


def test_scales_option_replaces_or_drops_one_sweep():
    import typer

    from sparke.cli.bench import parse_sweeps

    base = {"sparke": [0.003, 0.01], "cads": [0.25], "pg": [0.003]}
    got = parse_sweeps(base, ["sparke=0.01, 0.03", "pg=", "rke=0.1"])
    assert got == {"sparke": [0.01, 0.03], "cads": [0.25], "rke": [0.1]}
    assert base["sparke"] == [0.003, 0.01]  # the shipped config is not modified
    for bad in ("sparke", "nope=0.1", "none=0.1", "sparke=a", "sparke=-1"):
        with pytest.raises(typer.BadParameter):
            parse_sweeps(base, [bad])


def test_a_run_stopped_midway_keeps_its_finished_rows_paired(tmp_path):
    from sparke.bench.combine import combine

    pipe, encoder = _tiny()
    config = BenchConfig(clusters=2, prompts=2, seeds=2, steps=2, n_boot=20, mixture=False)
    config = dataclasses.replace(config, sweeps={"sparke": [0.1], "cads": [0.25]})

    def stop_at_cads(message: str) -> None:
        if message.startswith("cads"):
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of the third setting

    with pytest.raises(KeyboardInterrupt):
        run_bench(config, tmp_path / "a", command="a", progress=stop_at_cads, pipe=pipe, encoder=encoder)
    rows = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [r["label"] for r in rows] == ["world", "none", "sparke"]
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["complete"] is False
    assert not list((tmp_path / "a").glob(".*.tmp"))  # every file was replaced whole
    full = run_bench(config, tmp_path / "b", command="b", progress=None, pipe=pipe, encoder=encoder)
    assert full["complete"] is True
    combine(tmp_path / "ab", [tmp_path / "a", tmp_path / "b"])
    merged = json.loads((tmp_path / "ab" / "results.json").read_text())
    done = json.loads((tmp_path / "b" / "results.json").read_text())
    # the stopped run's rows are those of the complete run (same noise, same resamples)
    assert [r["label"] for r in merged] == ["world", "none", "sparke", "cads"]
    for a, b in zip(merged[:3], done[:3], strict=True):
        assert a["cond_vendi"] == b["cond_vendi"] and a["ci"] == b["ci"]
    assert json.loads((tmp_path / "ab" / "meta.json").read_text())["complete"] is False


def test_variant_option_adds_a_labelled_row_group_with_checked_settings():
    import typer

    from sparke.bench import settings_of
    from sparke.cli.bench import parse_variants

    got = parse_variants(
        ["sparke x0:sparke:0.01,0.03:space=x0", "early:sparke:0.03:window=[0,0.5];smooth=1.5"]
    )
    assert got == {
        "sparke x0": {"method": "sparke", "scales": [0.01, 0.03], "options": {"space": "x0"}},
        "early": {"method": "sparke", "scales": [0.03], "options": {"window": [0, 0.5], "smooth": 1.5}},
    }
    config = BenchConfig(sweeps={"sparke": [0.01]}, variants=got)
    rows = [(s.label, s.method, s.scale, s.options) for s in settings_of(config)]
    assert rows[-1] == ("early", "sparke", 0.03, {"window": [0, 0.5], "smooth": 1.5})
    assert len(rows) == 5  # none, sparke 0.01, two x0 rows, one early row
    for bad in (
        "x0:sparke",  # no scales
        "x0:nope:0.1",  # unknown method
        "sparke:sparke:0.1",  # the label of a method's own rows
        "x0:sparke:a",  # scales not numbers
        "x0:sparke:0.1:colour=1",  # a setting SPARKE lacks
        "x0:sparke:0.1:space",  # KEY without =VALUE
    ):
        with pytest.raises(typer.BadParameter):
            parse_variants([bad])


def test_combine_runs_of_one_prompt_set(tmp_path):
    from sparke.bench.combine import combine

    pipe, encoder = _tiny()
    base = BenchConfig(clusters=2, prompts=2, seeds=2, steps=2, n_boot=20, mixture=False)
    a = dataclasses.replace(base, sweeps={"sparke": [0.1]})
    b = dataclasses.replace(base, sweeps={"cads": [0.25]})
    for name, config in (("a", a), ("b", b)):
        run_bench(config, tmp_path / name, command=name, progress=None, pipe=pipe, encoder=encoder)
    goal = combine(tmp_path / "ab", [tmp_path / "a", tmp_path / "b"])
    rows = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert [r["label"] for r in rows] == ["world", "none", "sparke", "cads"]
    assert "criteria" in goal or "reason" in goal
    assert (tmp_path / "ab" / "results.md").stat().st_size > 0
    with pytest.raises(ValueError, match="not paired"):
        run_bench(
            dataclasses.replace(b, seed=1),
            tmp_path / "c",
            command="c",
            progress=None,
            pipe=pipe,
            encoder=encoder,
        )
        combine(tmp_path / "ac", [tmp_path / "a", tmp_path / "c"])


def test_world_scores_are_per_cluster_prdc_against_the_world():
    """Recall and coverage of each cluster against the world's renders of that cluster, then the mean."""
    from sparke.bench.metrics import Evidence, world_scores
    from sparke.metrics import prdc

    g = torch.Generator().manual_seed(0)

    def evidence(n: int, shift: float) -> Evidence:
        cluster = np.repeat([0, 1], n)
        feats = (
            torch.randn(2 * n, 6, generator=g, dtype=torch.float64)
            + shift * torch.from_numpy(cluster)[:, None]
        )
        return Evidence(
            np.ones(2 * n, bool), cluster, np.zeros(2 * n, int), feats, feats, np.zeros(2), np.zeros(2)
        )

    world, gen = evidence(20, 0.0), evidence(12, 0.5)
    scores = world_scores(gen, world)
    want = [prdc(world.feats[world.cluster == c], gen.feats[gen.cluster == c], nearest_k=5) for c in (0, 1)]
    assert scores["world_recall"] == pytest.approx(np.mean([w["recall"] for w in want]), abs=1e-12)
    assert scores["world_coverage"] == pytest.approx(np.mean([w["coverage"] for w in want]), abs=1e-12)
    assert gen.world_recall.tolist() == [w["recall"] for w in want]


def test_bench_sets_runs_each_prompt_set_pools_them_and_resumes(monkeypatch, tmp_path):
    import sparke.bench as bench
    from sparke.bench.combine import load
    from sparke.bench.pool import pool_folders, pooled_effect

    pipe, encoder = _tiny()
    config = BenchConfig(
        clusters=2, prompts=2, seeds=2, steps=2, n_boot=20, mixture=False, sweeps={"sparke": [0.1]}
    )
    rows = bench.run_bench_sets(config, [3, 4], tmp_path, progress=None, pipe=pipe, encoder=encoder)
    sets = [load(tmp_path / f"seed{s}") for s in (3, 4)]
    assert [m["config"]["seed"] for _, m, _ in sets] == [3, 4]
    assert [(r["label"], r["scale"]) for r in rows] == [("sparke", 0.1)]
    # the pooled row is the mean of the two sets' paired differences (exact: the same float64 sums)
    per_set = [
        100 * (next(r for r in rs if r["label"] == "sparke")["fidelity"] - rs[1]["fidelity"])
        for rs, _, _ in sets
    ]
    assert rows[0]["fidelity_delta"] == pytest.approx(np.mean(per_set), abs=1e-9)
    assert rows[0] == {
        **pooled_effect([(r, p) for r, _, p in sets], "sparke", 0.1),
        "label": "sparke",
        "scale": 0.1,
        "versus_default": None,
    }
    saved = json.loads((tmp_path / "pooled.json").read_text())
    assert saved["seeds"] == [3, 4] and saved["rows"][0]["fidelity_delta"] == pytest.approx(
        rows[0]["fidelity_delta"]
    )
    assert "Pooled over 2 prompt sets (seeds 3, 4)" in (tmp_path / "pooled.md").read_text()

    # a stopped run resumes: complete sets of the same config are kept, others (or changed ones) run again
    ran = []
    real = bench.run_bench

    def spy(one, out, **kwargs):
        ran.append(one.seed)
        return real(one, out, **kwargs)

    monkeypatch.setattr(bench, "run_bench", spy)
    meta = json.loads((tmp_path / "seed4" / "meta.json").read_text())
    (tmp_path / "seed4" / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    bench.run_bench_sets(config, [3, 4], tmp_path, progress=None, pipe=pipe, encoder=encoder)
    assert ran == [4]
    changed = dataclasses.replace(config, sweeps={"sparke": [0.1, 0.2]})
    rows = bench.run_bench_sets(changed, [3, 4], tmp_path, progress=None, pipe=pipe, encoder=encoder)
    assert ran == [4, 3, 4] and [r["scale"] for r in rows] == [0.1, 0.2]
    with pytest.raises(ValueError, match="at least two different"):
        bench.run_bench_sets(config, [3, 3], tmp_path, progress=None, pipe=pipe, encoder=encoder)

    # sets of different designs, or the same set twice, are not pooled
    other = tmp_path / "other"
    run_bench(dataclasses.replace(config, seed=5, steps=3), other, progress=None, pipe=pipe, encoder=encoder)
    with pytest.raises(ValueError, match=r"differs from .* in \['steps'\]"):
        pool_folders(tmp_path / "p", [tmp_path / "seed3", other])
    with pytest.raises(ValueError, match="seed 3 is already pooled"):
        pool_folders(tmp_path / "p", [tmp_path / "seed3", tmp_path / "seed3"])
    with pytest.raises(ValueError, match="not a sparke bench folder"):
        pool_folders(tmp_path / "p", [tmp_path / "seed3", tmp_path / "nothing"])


def test_cli_bench_with_several_seeds_pools_them(monkeypatch, tmp_path):
    import sparke.bench as bench
    from cli_helpers import cli

    seen = {}

    def fake_sets(config, seeds, out, **kwargs):
        seen.update(config=config, seeds=seeds, out=out)
        return [
            {
                "label": "sparke",
                "scale": 0.03,
                "gain": 0.156,
                "fidelity_delta": 0.3,
                "fidelity_delta_ci": [-1.3, 2.0],
                "closed": 0.42,
                "sets": 2,
            }
        ]

    monkeypatch.setattr(bench, "run_bench_sets", fake_sets)
    result = cli("bench", "--quick", "--seed", "5", "--seed", "6", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert seen["seeds"] == [5, 6] and seen["config"].clusters == 12
    # the ground truth first, Cond-Vendi after it (fragments: the console may break the line anywhere)
    said = " ".join(result.output.split())
    fragments = ["sparke 0.03: fidelity +0.3 points [-1.3, +2.0]", "gap closed 42%", "Cond-Vendi +15.6%"]
    positions = [said.find(f) for f in fragments]
    assert -1 not in positions and positions == sorted(positions), said
    result = cli("bench", "--seed", "5", "--seed", "5", "--out", tmp_path)
    assert result.exit_code != 0 and "each prompt set once" in result.output
    result = cli("bench", "--seed", "5", "--seed", "6", "--n-boot", "0", "--out", tmp_path)
    assert result.exit_code != 0 and "pooling needs the bootstrap" in result.output
