"""``sparke evaluate``: metrics of run folders with the embedded encoder or a transformers image model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_helpers import WIDE, cli, fake_run, messages, one_error_line, one_thread, said
from sparke.core import cond_vendi, in_batch_similarity, vendi
from sparke.embedded.encoder import WEIGHTS as ENCODER_WEIGHTS
from sparke.runs.evaluation import evaluate_run, load_features, required_from_prompt

CLUSTERS = [("red", "a red circle"), ("red", "a crimson disc"), ("blue", "two blue squares")]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("eval-runs")
    return [
        fake_run(root / "none", method="none", scale=0.0, prompts=CLUSTERS, seed=0),
        fake_run(root / "sparke", method="sparke", scale=0.05, prompts=CLUSTERS, seed=1),
    ]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A random CLIPVisionModel (no projection) saved with save_pretrained, and one with a projection."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("clip")
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPVisionModel(config).eval().save_pretrained(root / "clip-vision")
    CLIPVisionModelWithProjection(config).eval().save_pretrained(root / "clip-projection")
    return root


def test_hf_clip_features(runs, tiny_clip):
    result = cli(
        "evaluate",
        *runs,
        "--features",
        tiny_clip / "clip-vision",
        "--per-cluster",
        "--device",
        "cpu",
        env=WIDE,
    )  # the metrics table fits a known width
    assert result.exit_code == 0, result.output
    for metric in ("Cond-", "Vendi", "RKE", "In-batch"):
        assert metric in result.stdout
    data = json.loads((runs[0] / "metrics.json").read_text())
    assert data["features"]["image"] == str(tiny_clip / "clip-vision") and data["features"]["image_dim"] == 32
    assert data["kernels"]["sigma_image"] == 0.8 and data["kernels"]["sigma_prompt"] == 0.3
    overall = data["overall"]
    assert overall["n_images"] == 12 and overall["n_prompts"] == 3
    assert 1 <= overall["cond_vendi"] <= 12 and 1 <= overall["vendi"] <= 12 and 1 <= overall["rke"] <= 12
    assert -1 <= overall["in_batch_similarity"] <= 1
    assert "match_rate" not in overall  # the fake runs' model folder is not known to be the shapes model
    assert [c["cluster"] for c in data["clusters"]] == ["red", "blue"]
    assert data["clusters"][0]["n_images"] == 8 and data["clusters"][1]["n_prompts"] == 1
    # the numbers are the core's scores on the extractor's features
    extractor = load_features(str(tiny_clip / "clip-vision"), "cpu")
    from sparke.encoders.minilm import encode_minilm
    from sparke.runs.evaluation import load_run

    run = load_run(runs[0])
    x = extractor(run.load_images())
    y = encode_minilm([r["prompt"] for r in run.records])
    # rel=1e-6: float32 features extracted in other batch sizes than the command's, so rounding differs
    assert overall["vendi"] == pytest.approx(vendi(x, sigma=0.8), rel=1e-6)
    assert overall["cond_vendi"] == pytest.approx(
        cond_vendi(x, y, sigma_image=0.8, sigma_prompt=0.3), rel=1e-6
    )
    sims = [in_batch_similarity(x[i * 4 : i * 4 + 4]) for i in range(3)]
    assert overall["in_batch_similarity"] == pytest.approx(sum(sims) / 3, rel=1e-6)


def test_hf_clip_with_projection(runs, tiny_clip):
    data = evaluate_run(runs[1], load_features(str(tiny_clip / "clip-projection"), "cpu"), write=False)
    assert data["features"]["image_dim"] == 16  # image_embeds, after the projection


def test_hf_dinov2_features(runs, tmp_path):
    """A random DINOv2 saved with save_pretrained: AutoModel, the pooled CLS token."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    Dinov2Model(config).eval().save_pretrained(tmp_path / "dinov2")
    data = evaluate_run(runs[0], load_features(str(tmp_path / "dinov2"), "cpu"), write=False)
    assert data["features"]["image_dim"] == 24 and data["overall"]["cond_vendi"] >= 1


@pytest.mark.skipif(not ENCODER_WEIGHTS.exists(), reason="the embedded encoder's weights are not shipped yet")
def test_embedded_features_and_match_rate(tmp_path):
    """A run of a ShapesPipeline gets the checker's prompt-match rate; the fake images match 'red square'."""
    import numpy as np
    from PIL import Image

    from sparke.embedded import world

    run = fake_run(
        tmp_path / "shapes", method="none", scale=0.0, prompts=[("c", "a small red square")], model="embedded"
    )
    rng = np.random.default_rng(0)
    for k in range(4):  # rendered scenes of the world, which the checker reads exactly
        scene = world.sample_scene(rng, "square", "red", size="small", count=1)
        Image.fromarray(world.render(scene)).save(run / "images" / f"{k:06d}.png")
    result = cli("evaluate", run, "--device", "cpu", env=WIDE)  # the metrics table fits a known width
    assert result.exit_code == 0, result.output
    data = json.loads((run / "metrics.json").read_text())
    assert data["features"]["image"] == "embedded" and data["features"]["image_dim"] == 128
    assert data["overall"]["match_rate"] == 1.0 and data["overall"]["match_n"] == 4
    assert "Match" in result.stdout


@pytest.mark.skipif(not ENCODER_WEIGHTS.exists(), reason="the embedded encoder's weights are not shipped yet")
def test_every_interval_evaluate_writes_contains_its_value_and_stays_in_range(tmp_path):
    """Edge cases of issue 21: a rate of exactly 1 (shape+colour), a cluster the checker cannot read (its
    resamples have no rate), a cluster of misses; every interval holds its value, rates in [0, 1], Vendi in
    [1, n]."""
    import numpy as np
    from PIL import Image

    from sparke.embedded import world

    prompts = [("red", "a small red square"), ("blue", "a small blue square"), ("odd", "a quiet afternoon")]
    run = fake_run(
        tmp_path / "edges", method="none", scale=0.0, prompts=prompts, per_prompt=4, model="embedded"
    )
    rng = np.random.default_rng(0)
    for k in range(8):  # the red and blue clusters: rendered scenes; the second blue image has another size
        colour, size = ("red", "small") if k < 4 else ("blue", "large" if k == 5 else "small")
        scene = world.sample_scene(rng, "square", colour, size=size, count=1)
        Image.fromarray(world.render(scene)).save(run / "images" / f"{k:06d}.png")
    result = cli("evaluate", run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    overall = json.loads((run / "metrics.json").read_text())["overall"]
    assert overall["match_n"] == 8 and overall["match_shape_colour"] == 1.0 and overall["match_rate"] < 1.0
    assert set(overall["ci"]) == {"vendi", "cond_vendi", "match_rate", "match_shape_colour"}
    for metric, (low, high) in overall["ci"].items():
        lowest, highest = (0.0, 1.0) if metric.startswith("match") else (1.0, overall["n_images"])
        assert lowest <= low <= overall[metric] <= high <= highest, (metric, low, overall[metric], high)
    assert overall["ci"]["match_shape_colour"] == [1.0, 1.0]


def test_required_from_prompt():
    assert required_from_prompt("two crimson discs on a pale cream background") == {
        "shape": "circle",
        "colour": "red",
        "count": 2,
        "background": "beige",
    }
    assert required_from_prompt("a picture of a tiny royal blue wedge in the top left corner") == {
        "shape": "triangle",
        "colour": "blue",
        "count": 1,
        "size": "small",
        "position": "top left",
    }
    assert required_from_prompt("a photo of a cat") is None


def test_bad_input(tmp_path, runs):
    line = one_error_line(cli("evaluate", tmp_path / "nowhere"))
    assert "nowhere: no such folder" in line
    (tmp_path / "empty").mkdir()
    line = one_error_line(cli("evaluate", tmp_path / "empty"))
    assert "manifest.jsonl" in line
    line = one_error_line(cli("evaluate", runs[0], "--features", tmp_path / "no-model", "--device", "cpu"))
    assert "no-model" in line
    line = one_error_line(
        cli("evaluate", runs[0], "--sigma-image", 0, "--features", "embedded", "--device", "cpu")
    )
    assert "sigma-image" in line


# -- issue 12 ----------------------------------------------------------------------------------------------------
def _add_image(run: Path, index: int, prompt: str = "a red circle", cluster: str = "red") -> None:
    import numpy as np
    from PIL import Image

    from sparke.runs import image_file

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(run / image_file(index))
    record = {"file": image_file(index), "index": index, "prompt": prompt, "cluster": cluster}
    with open(run / "manifest.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def test_stale_metrics_are_recomputed_by_report(tmp_path):
    from sparke.runs.evaluation import metrics_stale, read_metrics

    run = fake_run(tmp_path / "run", method="none", scale=0.0, prompts=CLUSTERS, seed=3, model="embedded")
    assert cli("evaluate", run, "--device", "cpu").exit_code == 0
    assert metrics_stale(run) is None and read_metrics(run)["n_images"] == 12
    _add_image(run, 12)  # a resumed run: one more image
    assert metrics_stale(run) == "made from 12 images, the run has 13 now"
    page = tmp_path / "page.html"
    result = cli("report", run, "--out", page, "--no-evaluate")
    assert result.exit_code == 0 and "stale" in said(result) and f"sparke evaluate {run}" in said(result)
    assert read_metrics(run)["n_images"] == 12
    result = cli("report", run, "--out", page, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "is stale" in said(result)
    assert read_metrics(run)["n_images"] == 13 and metrics_stale(run) is None
    # a metrics.json of an older sparke (no manifest stamp) older than the manifest is stale too
    data = read_metrics(run)
    del data["manifest"]
    (run / "metrics.json").write_text(json.dumps(data))
    import os

    os.utime(run / "metrics.json", (1, 1))
    assert metrics_stale(run) == "it is older than the manifest"


def test_embedded_encoder_on_another_model_warns(runs):
    result = cli("evaluate", runs[0], "--device", "cpu")
    assert result.exit_code == 0, result.output
    warnings = messages(result.stderr, "warning:")
    assert any("embedded shapes encoder" in line and "fake-model" in line for line in warnings), result.stderr
    data = json.loads((runs[0] / "metrics.json").read_text())
    assert any("embedded shapes encoder" in note for note in data["notes"])


def test_truncated_png_names_the_repair(tmp_path):
    run = fake_run(tmp_path / "run", method="none", scale=0.0, prompts=CLUSTERS, seed=4)
    png = run / "images" / "000003.png"
    png.write_bytes(png.read_bytes()[:30])
    line = one_error_line(cli("evaluate", run, "--device", "cpu"))
    assert "000003.png" in line and f"sparke repair {run}" in line


def test_report_messages(runs, tmp_path):
    line = one_error_line(cli("report", *runs, "--out", tmp_path / "missing" / "dir" / "r.html"))
    assert "no such folder" in line and "mkdir -p" in line
    assert not (tmp_path / "missing").exists()
    line = one_error_line(cli("report", *runs, "--out", tmp_path))
    assert "is a folder" in line
    result = cli("report", *runs, "--out", tmp_path / "r.html", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "0.0 MB" not in said(result) and ("kB" in said(result) or "MB" in said(result))


def test_human_size():
    from sparke.cli.common import human_size

    assert human_size(532) == "532 bytes"
    assert human_size(14_200) == "14.2 kB"
    assert human_size(3_100_000) == "3.1 MB"
