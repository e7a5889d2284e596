"""The smaller findings of issue 30, one test each (the bad image, 16-bit and RGBA cases, the single-image note
and the narrow report are in tests/test_eval_stream.py): a bank from another feature space, the checker's
unknown words, interval with cfg <= 1, help text at 80 columns, a light ``sparke --help``, a missing local
model folder, save errors naming the user's path, single-file checkpoints."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from cli_helpers import cli, one_error_line
from sparke.core import Bank


def test_a_bank_from_another_space_of_the_same_width_is_named():
    """Finding 3: rows of the same width from another space are refused on what the bank says it holds."""
    from sparke.core.compat import bank_mismatch

    meta = {"pipeline": "ShapesPipeline", "space": "latent", "prompt_encoder": "pipeline"}
    assert bank_mismatch(meta, space="latent", pipeline="ShapesPipeline", prompt_encoder="pipeline") is None
    assert bank_mismatch(meta, space="x0", pipeline="ShapesPipeline") == (
        "bank in feature space 'latent', but this run guides in 'x0'"
    )
    assert bank_mismatch(meta, space="latent", prompt_encoder="minilm") == (
        "bank with prompt encoder 'pipeline', but this run uses 'minilm'"
    )
    assert bank_mismatch(meta, pipeline="StableDiffusionPipeline") == (
        "bank of a ShapesPipeline, but this run uses a StableDiffusionPipeline"
    )
    assert bank_mismatch({}, space="x0") is None  # a bank that records nothing is not compared
    # a run's model record decides over the pipeline class (two SD checkpoints share the class)
    assert bank_mismatch({**meta, "model": "a"}, model="b", pipeline="ShapesPipeline") == (
        "bank of model 'a', but this run uses 'b'"
    )


def test_generate_says_at_start_which_prompts_the_checker_cannot_read(tmp_path):
    """Finding 4: 'a navy box' names no colour of the shapes world; generate says so before making images."""
    from sparke.cli.generate import checker_warnings
    from sparke.runs import PromptEntry, RunConfig

    config = RunConfig(prompts=[PromptEntry("a navy box"), PromptEntry("a red circle")], model="embedded")
    (warning,) = checker_warnings(config)
    assert warning.startswith("1 of 2 prompts name no shape or colour")
    assert "'a navy box': no colour word the shapes world knows" in warning
    assert checker_warnings(RunConfig(prompts=[PromptEntry("a red circle")], model="embedded")) == []


def test_evaluate_counts_unreadable_prompts_loudly():
    """Finding 4: images of unreadable prompts are counted in a warning, and Match is not a silent 1.000."""
    from sparke.runs.evaluation import unread_notes

    records = [{"prompt": "a navy box"}, {"prompt": "a navy box"}]
    (note,) = unread_notes(records, 6)
    assert note.startswith("2 of 6 images have prompts the shapes checker cannot read (e.g. 'a navy box'")
    assert note.endswith("Match counts the other 4")
    assert unread_notes(records, 2)[0].endswith("Match is not given")


def test_interval_with_cfg_one_warns():
    """Finding 5: with guidance scale <= 1 there is no CFG to limit; the method says so instead of nothing."""
    from sparke.guidance import attach
    from sparke.methods.interval import IntervalGuidance
    from tiny_pipelines import build, call_kwargs

    pipe = build("sd")
    # cfg 1: nothing to limit, said; cfg 5: limited outside the interval; an interval holding every step:
    # nothing to do, and nothing wrong to say
    for cfg, hi, expected in ((1.0, 5.42, 1), (5.0, 5.42, 0), (5.0, 1e9, 0)):
        guide = IntervalGuidance(lo=0.0, hi=hi)
        with warnings.catch_warnings(record=True) as caught, attach(pipe):
            warnings.simplefilter("always")
            guide(pipe, **call_kwargs(pipe, ["a cat"], steps=3, guidance_scale=cfg))
        said = [str(w.message) for w in caught if "interval:" in str(w.message)]
        assert len(said) == expected, (cfg, hi, said)


def test_interval_cfg_one_warning_text():
    from sparke.guidance import attach
    from sparke.methods.interval import IntervalGuidance
    from tiny_pipelines import build, call_kwargs

    pipe = build("sd")
    with pytest.warns(UserWarning, match=r"interval: the guidance scale \(cfg\) is 1 <= 1.*use cfg > 1"):
        with attach(pipe):
            IntervalGuidance()(pipe, **call_kwargs(pipe, ["a cat"], steps=3, guidance_scale=1.0))


@pytest.mark.parametrize(
    "command", ["generate", "evaluate", "report", "repair", "bench", "shield", "methods"]
)
def test_help_is_wrapped_not_cut_at_80_columns(command):
    """Finding 7: long words in the help column ('FOLDER/metrics.json') fold onto the next line, never '…'."""
    from typer.testing import CliRunner

    from sparke.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output


def test_top_level_help_imports_no_torch():
    """Finding 8: `sparke --help` lists the commands without importing any of them (no torch: 2-4 s)."""
    code = (
        "import sys\nfrom sparke.cli import main\nsys.argv = ['sparke', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'LIGHT', file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stderr.strip().endswith("LIGHT"), result.stderr[-2000:]
    for name in ("generate", "evaluate", "report", "repair", "shield", "methods", "bench"):
        assert name in result.stdout


def test_command_summaries_match_their_docstrings():
    """The summaries `sparke --help` lists without importing the commands are their docstrings' first lines."""
    from importlib import import_module

    from sparke.cli import COMMANDS, _help

    for name, (module, function, _, summary) in COMMANDS.items():
        command = getattr(import_module(f"sparke.cli.{module}"), function)
        assert _help(command).split("\n\n")[0] == summary, name


@pytest.mark.parametrize("option", ["--clip", "--features"])
def test_a_missing_local_model_folder_is_named(tmp_path, option):
    """Finding 9: a path that does not exist is a missing folder, not a bad hub repository id."""
    from PIL import Image

    (tmp_path / "f").mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / "f" / f"{i}.png")
    (tmp_path / "f" / "metadata.jsonl").write_text(
        '{"file_name": "0.png", "prompt": "a"}\n{"file_name": "1.png", "prompt": "b"}\n'
    )
    line = one_error_line(cli("evaluate", tmp_path / "f", option, "/nonexistent/dir"))
    assert line == f"error: {option} /nonexistent/dir: no such folder"


def test_save_errors_name_the_users_path(tmp_path):
    """Finding 10: bank.save into a missing folder names that path, not the hidden temporary file."""
    bank = Bank()
    bank.add(torch.ones(2, 3))
    target = tmp_path / "missing" / "bank.safetensors"
    with pytest.raises(FileNotFoundError) as caught:
        bank.save(target)
    assert caught.value.filename == str(target) and ".tmp" not in str(caught.value)


def test_a_single_file_checkpoint_gets_a_message_that_says_how(tmp_path):
    """Finding 11: --model x.safetensors is not 'no such folder' but how to convert it."""
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"\0" * 16)
    line = one_error_line(
        cli("generate", "-p", "a red circle", "--model", checkpoint, "--out", tmp_path / "o")
    )
    assert "a single-file checkpoint, not a pipeline folder" in line
    assert "from_single_file('model.safetensors', config='CONFIG_FOLDER')" in line
    assert line.endswith("and give --model model") and not (tmp_path / "o").exists()
