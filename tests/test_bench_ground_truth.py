"""The benchmark's ground-truth columns: Cond-Vendi among matching images, and the world's renders ranking first
on every ground-truth column against the embedded model's unguided images and less diverse renders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparke.bench.metrics import Evidence, _matching_cond_vendi_replicates, matching_cond_vendi
from sparke.core import cond_vendi, vendi
from sparke.core.defaults import SIGMA_IMAGE, SIGMA_PROMPT
from sparke.metrics.bootstrap import Draws


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1
    )


def test_matching_cond_vendi_is_cond_vendi_of_the_matching_images_only():
    x, y = _features(12, 16, 0).double(), _features(12, 8, 1).double()
    ok = np.array([True, False, True, True, False, True, True, True, False, True, True, True])
    keep = torch.from_numpy(ok)
    expected = cond_vendi(x[keep], y[keep], sigma_image=SIGMA_IMAGE, sigma_prompt=SIGMA_PROMPT)
    assert matching_cond_vendi(x, y, ok) == expected  # the same tensors through the same function
    assert matching_cond_vendi(x, y, np.ones(12, bool)) == cond_vendi(
        x, y, sigma_image=SIGMA_IMAGE, sigma_prompt=SIGMA_PROMPT
    )
    assert matching_cond_vendi(x, y, np.zeros(12, bool)) is None  # nothing matches: no score, not 0 or 1
    assert matching_cond_vendi(x, y, np.eye(1, 12, 4, dtype=bool)[0]) == 1.0  # one image: one mode


def test_clusters_weigh_by_their_matching_images_and_a_lone_match_counts_as_no_variety():
    # three clusters with orthogonal prompt features (identical within a cluster): the prompt kernel is
    # block-diagonal up to exp(-2 / (2 * 0.3^2)) = 1.5e-5 between clusters
    prompts = torch.eye(3, 8, dtype=torch.float64)
    cluster = np.repeat(np.arange(3), 6)
    x = _features(18, 16, 2).double()
    y = prompts[torch.from_numpy(cluster)]
    ok = np.ones(18, bool)
    ok[6:11] = False  # cluster 1 keeps one matching image
    ok[12:] = False  # cluster 2 keeps none: it drops out
    # the weighted geometric mean of each cluster's Vendi: cluster 0 (6 of 7 images), cluster 1 (1 of 7, Vendi 1)
    by_hand = np.exp(6 / 7 * np.log(vendi(x[:6], sigma=SIGMA_IMAGE)) + 1 / 7 * np.log(1.0))
    # tolerance: the 1.5e-5 off-block prompt kernel entries move the entropies by ~1e-5
    assert matching_cond_vendi(x, y, ok) == pytest.approx(by_hand, rel=1e-4)


def test_matching_replicates_restrict_each_resample_and_drop_those_without_a_match():
    x, y = _features(8, 16, 3), _features(8, 8, 4)
    cluster = np.repeat(np.arange(4), 2)
    ok = np.array([True, True, False, False, True, False, True, True])
    ev = Evidence(
        ok=ok,
        cluster=cluster,
        round=np.zeros(8, np.int64),
        feats=x,
        prompt_feats=y,
        coverage=np.zeros(4),
        entropy=np.zeros(4),
    )
    weights = np.zeros((3, 4, 1), np.int64)
    weights[0, :, 0] = 1  # every cluster once: the set itself
    weights[1, 1, 0] = 4  # cluster 1 only: no matching image
    weights[2, 3, 0], weights[2, 0, 0] = 3, 1  # cluster 3 three times, cluster 0 once
    reps = _matching_cond_vendi_replicates(ev, Draws(weights).per_item(cluster, np.zeros(8, np.int64)))
    # float32 eigendecompositions in the bootstrap (sparke.metrics.bootstrap): ~1e-6 relative
    assert reps[0] == pytest.approx(matching_cond_vendi(x, y, ok), rel=1e-5)
    assert np.isnan(reps[1])
    assert 1.0 <= reps[2] <= 4.0  # 4 distinct matching images drawn (cluster 3's twice, cluster 0's)


@pytest.fixture(scope="module")
def measured_rows():
    """Ground truth and scores of a small prompt set (4 clusters x 4 paraphrases x 2 rounds = 32 images,
    10 steps): the world's renders, the embedded model unguided, and two less diverse sets of renders."""
    from sparke.bench import BenchConfig
    from sparke.bench.runner import Generated, Setting, generate_setting, measure, reference_images
    from sparke.embedded import world as W
    from sparke.embedded.encoder import load_encoder
    from sparke.embedded.pipeline import load_pipeline
    from sparke.encoders.minilm import encode_minilm

    config = BenchConfig(clusters=4, prompts=4, seeds=2, steps=10, n_boot=0, mixture=False)
    clusters = W.prompt_clusters(config.clusters, config.prompts, seed=config.seed)
    texts = sorted({p for c in clusters for p in c.prompts})
    prompt_features = dict(zip(texts, encode_minilm(texts).cpu(), strict=True))
    encoder = load_encoder("cpu")
    pipe = load_pipeline("cpu")
    pipe.set_progress_bar_config(disable=True)
    world = reference_images(clusters, config)

    def renders(only_position_free: bool) -> Generated:
        """The world's renders with the free attributes held at one scene's per cluster: all of them (the
        same image throughout the cluster), or all but the position."""
        rng = np.random.default_rng(7)
        first = [
            W.sample_scene(rng, c.shape, c.colour, background=c.background, count=c.count) for c in clusters
        ]
        images = []
        for c in world.cluster:
            scene, count = first[c], clusters[c].count
            if only_position_free:
                scene = W.sample_scene(rng, scene.shape, scene.colour, scene.size, scene.background, count)
            images.append(W.render(scene))
        return Generated(np.stack(images), world.cluster, world.prompts, 0.0, 0.0, world.round)

    torch.manual_seed(config.seed)
    unguided = generate_setting(pipe, clusters, Setting("none", "none", 0.0, {}), config)
    sets = {
        "world": world,
        "none": unguided,
        "world, only the position free": renders(only_position_free=True),
        "world, one scene per cluster": renders(only_position_free=False),
    }
    return {name: measure(gen, clusters, encoder, prompt_features) for name, gen in sets.items()}


@pytest.mark.slow  # about 20 s on one idle CPU core: 32 images at 10 steps, MiniLM and the encoder
@pytest.mark.parametrize(
    "column", ["free_attribute_entropy", "free_attribute_coverage", "cond_vendi_matching"]
)
def test_the_worlds_renders_rank_first_on_every_ground_truth_column(measured_rows, column):
    world = measured_rows["world"][column]
    others = {name: row[column] for name, row in measured_rows.items() if name != "world"}
    assert all(world > value for value in others.values()), (world, others)
    assert measured_rows["world"]["fidelity"] == 1.0


def _rows():
    def row(label, method, scale, fidelity, entropy, coverage, cv, cvm):
        return {
            "label": label,
            "method": method,
            "scale": scale,
            "fidelity": fidelity,
            "free_attribute_entropy": entropy,
            "free_attribute_coverage": coverage,
            "cond_vendi": cv,
            "cond_vendi_matching": cvm,
        }

    return [
        row("world", "world", 0.0, 1.0, 0.9, 0.95, 2.4, 2.4),
        row("none", "none", 0.0, 0.6, 0.5, 0.70, 2.5, 1.6),
        row("sparke", "sparke", 0.03, 0.59, 0.7, 0.80, 2.9, 2.0),  # more of the gap, less Cond-Vendi
        row("sparke", "sparke", 0.05, 0.59, 0.6, 0.75, 3.0, 1.9),
        row("sparke", "sparke", 0.1, 0.50, 0.8, 0.85, 3.2, 2.1),  # loses fidelity
    ]


def test_best_rows_and_the_goal_check_lead_with_the_ground_truth():
    from sparke.bench.report import best_rows, gap_closed, goal_check, goal_lines

    rows = _rows()
    assert (
        best_rows(rows)["sparke"]["scale"] == 0.03
    )  # the most entropy within 2 points, not the most Cond-Vendi
    assert gap_closed(rows[2], rows) == pytest.approx(0.5, abs=1e-12)  # (0.7 - 0.5) / (0.9 - 0.5)
    assert gap_closed(rows[0], rows) == 1.0 and gap_closed(rows[1], rows) == 0.0
    goal = goal_check(rows)
    assert goal["sparke_scale"] == 0.03
    assert goal["world_cond_vendi_gain"] == pytest.approx(2.4 / 2.5 - 1, abs=1e-12)
    assert goal["cond_vendi_matching_gain"] == pytest.approx(2.0 / 1.6 - 1, abs=1e-12)
    assert goal["world_cond_vendi_matching_gain"] == pytest.approx(2.4 / 1.6 - 1, abs=1e-12)
    assert goal["coverage_delta"] == pytest.approx(0.1, abs=1e-12)
    lines = [line for line in goal_lines(goal) if line.startswith("- ")]
    assert [line.split(":")[0] for line in lines] == [
        "- fidelity vs none",
        "- free-attribute entropy gap from none to the world closed",
        "- free-attribute coverage vs none",
        "- Cond-Vendi vs none",
        "- Cond-Vendi among matching images vs none",
        "- beats each baseline at matched fidelity (interval above 0)",
    ]
    assert "+16.0%; the world's: -4.0%" in lines[3] and "+25.0%; the world's: +50.0%" in lines[4]


def test_tables_put_the_world_first_and_rows_without_the_matching_score_show_a_dash(tmp_path):
    from sparke.bench.report import write_markdown

    rows = _rows()
    del rows[3]["cond_vendi_matching"]  # as a results.json from before the score existed
    meta = {
        "command": "test",
        "config": {"clusters": 12, "prompts": 8, "seeds": 4, "steps": 10, "cfg": 4.0, "device": "cpu"},
        "wall_seconds": 60.0,
        "goal": {"met": False, "reason": "test"},
    }
    write_markdown(tmp_path, rows, meta, None)
    text = (tmp_path / "results.md").read_text()
    best = text.split("## Best scale per method")[1].split("\n\n")[1].splitlines()
    assert best[0].startswith(
        "| method | scale | fidelity | gap closed | free-attr. entropy | free-attr. coverage"
    )
    assert [line.split(" | ")[0] for line in best[2:]] == ["| world", "| none", "| sparke"]
    assert best[4].startswith("| sparke | 0.03 | 0.590 | 50% | 0.700 | 0.800 | 2.00 | 2.90 |")
    every = text.split("## All settings")[1]
    assert "| sparke | 0.05 | 0.590 | 25% | 0.600 | 0.750 | - | 3.00 |" in every


def test_the_console_reports_the_defaults_ground_truth_first(monkeypatch, tmp_path):
    import sparke.bench as bench
    from cli_helpers import cli
    from sparke.bench.report import goal_check

    rows = _rows()
    meta = {"goal": goal_check(rows), "goal_at_default": goal_check(rows, fixed=("sparke", 0.05))}
    monkeypatch.setattr(bench, "run_bench", lambda config, out, **kwargs: {**meta, "wall_seconds": 1.0})
    result = cli("bench", "--quick", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console may break the line anywhere
    fragments = [
        "fidelity -1.0 points",
        "gap closed 25%",
        "coverage +0.050",
        "Cond-Vendi +20.0% (the world's: -4.0%)",
    ]
    positions = [said.find(f) for f in fragments]
    assert -1 not in positions and positions == sorted(positions), said


def test_each_settings_progress_line_leads_with_the_ground_truth():
    from sparke.bench import progress_line

    rows = _rows()
    rows[2]["sec_per_image"] = 0.5
    line = progress_line(rows[2], rows, 12.0)
    assert line == (
        "sparke 0.03: fidelity 0.590, gap closed 50%, coverage 0.800; Cond-Vendi 2.90 (world 2.40), among "
        "matching 2.00 (world 2.40); 0.50 s/image (12 s elapsed)"
    )
    del rows[2]["cond_vendi_matching"]
    assert "among matching - (world 2.40)" in progress_line(rows[2], rows, 12.0)
