"""Every SPARKE default and option is declared once (``sparke.guidance.options``) and read everywhere else:
the constructor, ``Update``, the method specs behind ``sparke methods`` and ``--set``, the command line's help,
the benchmark's sweeps and goal check, the report's recommended row and the options table of docs/guide.md.
A default changed in one of these places alone fails here."""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import fields
from pathlib import Path

from cli_helpers import cli
from sparke import SPARKE, Update
from sparke.bench import report
from sparke.bench.config import FULL, QUICK
from sparke.guidance.options import DEFAULTS, OPTIONS, PAPER, help_of, names, options_table
from sparke.methods import METHODS
from sparke.methods.sparke import SPARKE_HELP, SPARKE_SETTINGS

GUIDE = Path(__file__).parents[1] / "docs" / "guide.md"


def _json(value):
    return json.loads(json.dumps(value))


def test_the_constructor_and_update_take_their_defaults_from_the_table():
    params = inspect.signature(SPARKE).parameters
    assert len(params) <= 12
    for name in names("guide"):
        assert params[name].default == DEFAULTS[name], name
    assert params["update"].default == Update()
    for field in fields(Update):
        assert field.default == DEFAULTS[field.name], field.name
    assert {f.name for f in fields(Update)} == set(names("update"))
    guide = SPARKE()
    for name in names("update"):
        assert getattr(guide.update, name) == DEFAULTS[name], name
    assert {k: guide.bank.index_options[k] for k in ("neighbors", "samples")} == {
        k: DEFAULTS[k] for k in ("neighbors", "samples")
    }
    assert guide.bank.crossover == DEFAULTS["crossover"]


def test_the_method_specs_and_help_read_the_table():
    spec = METHODS["sparke"]
    assert spec.default_scale == DEFAULTS["scale"]
    assert dict(spec.defaults) == _json({name: DEFAULTS[name] for name in SPARKE_SETTINGS})
    assert SPARKE_HELP == {option.name: option.help for option in OPTIONS if option.name in SPARKE_SETTINGS}
    for method in ("rke", "vendi"):  # the baselines run the paper's step
        assert {k: METHODS[method].defaults[k] for k in ("space", "centre", "motion")} == _json(PAPER)
    paper = SPARKE.paper()
    assert (paper.space, paper.update.centre, paper.update.motion) == (
        PAPER["space"],
        PAPER["centre"],
        PAPER["motion"],
    )


def test_the_command_line_help_reads_the_table():
    text = re.sub(r"\s+", " ", cli("generate", "--help", env={"COLUMNS": "400", "NO_COLOR": "1"}).output)
    for name in ("every", "sigma_image", "sigma_prompt", "objective", "kernel", "step", "prompt_encoder"):
        first_words = " ".join(help_of(name)[name].split()[1:5])
        assert first_words in text, name
    methods = cli("methods", env={"COLUMNS": "400"}).output
    assert f"{DEFAULTS['scale']:g}" in methods


def test_the_benchmark_and_the_report_run_the_default():
    assert QUICK.sweeps["sparke"] == [DEFAULTS["scale"]]
    assert DEFAULTS["scale"] in FULL.sweeps["sparke"]
    assert report.RECOMMENDED == ("sparke", DEFAULTS["scale"])
    assert FULL.variants["sparke latent"]["options"] == PAPER  # named after the paper's step: it is that step
    for method in ("rke", "vendi", "cads", "pg"):
        assert QUICK.sweeps[method] == [METHODS[method].default_scale], method


def test_the_docs_table_is_the_generated_one():
    text = GUIDE.read_text()
    start, end = "<!-- options-table:start -->\n", "<!-- options-table:end -->"
    table = text[text.index(start) + len(start) : text.index(end)].strip("\n") + "\n"
    assert table == options_table(), (
        "docs/guide.md: paste the output of sparke.guidance.options.options_table()"
    )
