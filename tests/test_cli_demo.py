"""``python -m sparke.cli.demo`` (what ``make demo`` runs), on a tiny prompt set."""

from __future__ import annotations

import json

import pytest

from cli_helpers import WIDE, one_thread, unwrapped
from sparke.embedded.encoder import WEIGHTS as ENCODER_WEIGHTS
from sparke.embedded.pipeline import WEIGHTS_DIR

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / "unet.safetensors").exists() or not ENCODER_WEIGHTS.exists(),
    reason="the embedded model's weights are not shipped yet",
)


def test_demo_small(tmp_path, capsys, monkeypatch):
    from sparke.cli.demo import RUNS, main

    monkeypatch.setenv("COLUMNS", WIDE["COLUMNS"])  # its metrics table fits a known width

    args = [
        "--out",
        str(tmp_path / "demo"),
        "--clusters",
        "1",
        "--prompts",
        "2",
        "--images",
        "2",
        "--steps",
        "2",
    ]
    with one_thread():
        assert main(args) == 0
        text = unwrapped(capsys.readouterr().out)
        assert "report:" in text and "Cond-Vendi" in text and "wall time" in text
        page = (tmp_path / "demo" / "report.html").read_text()
        assert page.count("data:image/png;base64,") == 2 * len(RUNS)
        assert "Free attributes among the images" in page and "Too small to conclude" in page
        for name, *_ in RUNS:
            metrics = json.loads((tmp_path / "demo" / name / "metrics.json").read_text())
            assert metrics["n_images"] == 4 and metrics["overall"]["match_rate"] is not None
        # a second run resumes: nothing is generated again
        before = (tmp_path / "demo" / "none" / "manifest.jsonl").read_bytes()
        assert main(args) == 0
        assert (tmp_path / "demo" / "none" / "manifest.jsonl").read_bytes() == before
        # a folder an older version made with other settings is moved aside and made again, not refused
        run_file = tmp_path / "demo" / "sparke" / "run.json"
        old = json.loads(run_file.read_text())
        old["settings"].update(space="latent", centre=False)
        run_file.write_text(json.dumps(old))
        assert main(args) == 0
        aside = list((tmp_path / "demo").glob("sparke.before-*"))
        assert len(aside) == 1, aside
        assert json.loads((aside[0] / "run.json").read_text()) == old
        assert json.loads(run_file.read_text())["settings"]["space"] == "x0"
        assert "moved to sparke.before-" in unwrapped(capsys.readouterr().err)


def test_demo_guides_at_the_defaults_the_benchmark_recommends():
    # README.md "What you get": SPARKE()'s defaults, confirmed on held-out prompt sets at 4, 8 and 10 steps
    from sparke.bench import QUICK
    from sparke.bench.report import RECOMMENDED
    from sparke.cli.demo import RUNS
    from sparke.methods import METHODS

    default = METHODS["sparke"].default_scale
    assert RUNS[0][1] == "none"
    assert [(method, scale) for _, method, scale, _ in RUNS[1:]] == [("sparke", None)]  # None: the default
    assert RECOMMENDED == ("sparke", default) and QUICK.sweeps["sparke"] == [default]
    assert METHODS["sparke"].defaults["space"] == "x0" and METHODS["sparke"].defaults["centre"] is True
