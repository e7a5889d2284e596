"""Bounds and messages of ``sparke generate`` (issue 21): refused before anything is loaded or written, each
as one line; the config is built by plain functions, tested here without typer."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from cli_helpers import cli, one_error_line
from sparke.cli.common import cli_wording, plural
from sparke.cli.generate import MAX_RUN_IMAGES, GenerateRequest, build_config
from sparke.runs import RunError


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-n", "99999999999999999999"], "--images-per-prompt 99999999999999999999: 1 prompt x"),
        (["-n", "0"], "--images-per-prompt 0: give 1 or more"),
        (["-b", "0"], "--batch-size 0: give 1 or more"),
        (["--steps", "1"], "--steps 1: the embedded model needs 2 or more"),
        (["--steps", "0"], "--steps 0: give 1 or more"),
        (["--cfg", "-5"], "--cfg -5: the guidance scale must be 0 or more"),
    ],
)
def test_impossible_counts_are_one_line_and_write_nothing(tmp_path, args, expected):
    out = tmp_path / "run"
    line = one_error_line(cli("generate", "-p", "a red circle", *args, "--out", out))
    assert line.startswith(f"error: {expected}"), line
    assert not out.exists()


def test_huge_run_is_refused_without_building_its_plan():
    request = GenerateRequest(prompt=["a", "b"], images_per_prompt=MAX_RUN_IMAGES // 2 + 1)
    with pytest.raises(
        RunError, match=f"2 prompts x {MAX_RUN_IMAGES // 2 + 1} images is more than a run holds"
    ):
        build_config(request)
    config, _ = build_config(GenerateRequest(prompt=["a", "b"], images_per_prompt=MAX_RUN_IMAGES // 2))
    assert config.n_images == MAX_RUN_IMAGES  # the largest run allowed; its plan is only built by `generate`


def test_build_config_without_typer():
    config, notes = build_config(
        GenerateRequest(
            prompt=["a red circle", "two blue squares", "a red circle"],
            images_per_prompt=3,
            method="pg",
            settings={"every": 2, "window": "0,0.5"},
        )
    )
    assert config.method == "pg" and config.scale == pytest.approx(0.003)  # the method's default scale
    assert config.settings == {"every": 2, "window": [0.0, 0.5]} and config.n_images == 9
    # duplicates are kept (each copy gets its own images) and said
    assert [p.prompt for p in config.prompts].count("a red circle") == 2
    assert len(notes) == 1 and "'a red circle' is given 2 times" in notes[0]
    with pytest.raises(RunError, match="--method none: .*every"):
        build_config(GenerateRequest(prompt=["x"], method="none", settings={"every": 2}))


def test_few_steps_on_the_embedded_model_warn_naming_the_minimum():
    from sparke.embedded.pipeline import CLEAN_STEPS

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_config(GenerateRequest(prompt=["a red circle"], steps=CLEAN_STEPS - 1))
        build_config(GenerateRequest(prompt=["a red circle"], steps=CLEAN_STEPS))
        build_config(GenerateRequest(prompt=["a red circle"], model=str(Path("some-folder")), steps=2))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and f"noise below {CLEAN_STEPS} steps" in messages[0], messages


def test_library_wording_becomes_the_command_line_s():
    library = "SPARKE guides only 1 of 5 denoising steps (every=10); lower `every` to guide at least 2"
    assert cli_wording(library).endswith("lower --every to guide at least 2")
    assert cli_wording("pass one of `prompt` and `sigma_image`") == "pass one of `prompt` and --sigma-image"


def test_plurals():
    assert [plural(1, "image"), plural(2, "image"), plural(1, "batch"), plural(3, "batch")] == [
        "1 image",
        "2 images",
        "1 batch",
        "3 batches",
    ]
    assert plural(12000, "row") == "12,000 rows"


@pytest.mark.parametrize("command", ["generate", "evaluate", "report", "repair", "bench", "shield"])
def test_help_at_60_columns_keeps_every_option_name_whole(command):
    from typer.testing import CliRunner

    from sparke.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "60", "TERMINAL_WIDTH": "60"})
    assert result.exit_code == 0, result.output
    import typer.main

    click_command = typer.main.get_command(app).get_command(None, command)  # built on first use
    names = [name for param in click_command.params for name in param.opts if name.startswith("--")]
    assert names and all(name in result.output for name in names), [
        n for n in names if n not in result.output
    ]


def test_help_paragraphs_are_reflowed():
    from sparke.cli import _help
    from sparke.cli.bench import bench_command

    text = _help(bench_command)
    summary, body = text.split("\n\n", 1)
    assert summary == "Benchmark SPARKE against the baselines on the embedded model, with ground truth."
    assert "\n" not in body and "DIR/results.json" in body  # the source's line breaks are gone


def test_usage_errors_are_one_line_like_sparke_s(tmp_path):
    result = cli("generate", "-n", "abc", "--out", tmp_path / "x")
    assert result.exit_code == 2  # click's code for a malformed command line
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --images-per-prompt/-n: "), result.stderr
    assert "sparke generate --help" in lines[0] and not (tmp_path / "x").exists()


def test_a_run_given_twice_is_refused(tmp_path):
    from cli_helpers import fake_run

    run = fake_run(tmp_path / "none", method="none", scale=0.0, prompts=[("c", "a red circle")])
    for command in (["report", run, tmp_path / "none" / ".." / "none", "--out", tmp_path / "r.html"],
                    ["evaluate", run, run]):  # fmt: skip
        line = one_error_line(cli(*command))
        assert "given twice" in line, line
    assert not (tmp_path / "r.html").exists() and not (run / "metrics.json").exists()


def test_a_prompt_longer_than_the_encoder_reads_gets_a_note():
    from sparke.cli.generate import long_prompt_notes
    from sparke.embedded.pipeline import ShapesPipeline, build_scheduler, build_unet
    from sparke.encoders.minilm import MAX_LENGTH

    pipe = ShapesPipeline(unet=build_unet(), scheduler=build_scheduler())
    long = "a red circle " + "on a very pale background " * 60  # ~300 words, beyond MiniLM's 256 tokens
    assert long_prompt_notes(pipe, ["a red circle", "two blue squares"]) == []
    (note,) = long_prompt_notes(pipe, ["a red circle", long, long])
    assert note.startswith(f"1 prompt longer than the {MAX_LENGTH} tokens the text encoder reads"), note


@pytest.mark.slow  # a fresh Python process that imports diffusers and transformers
def test_loading_a_diffusers_folder_prints_no_transformers_notices(tmp_path):
    """transformers 5 notes that CLIPImageProcessor falls back to its PIL version without torchvision, and
    draws "Loading weights" bars: neither reaches the user of `sparke generate`."""
    from transformers import CLIPImageProcessor

    from tiny_pipelines import tiny_sd

    pipe = tiny_sd()
    pipe.register_modules(feature_extractor=CLIPImageProcessor(size=32, crop_size=32))
    pipe.save_pretrained(str(tmp_path / "sd"))
    # a fresh process: transformers says each notice once per process, and this one has seen them already
    command = [sys.executable, "-m", "sparke.cli", "generate", "--model", str(tmp_path / "sd"), "-p", "a cat",
               "-n", "1", "--steps", "2", "--height", "32", "--width", "32", "--every", "1",
               "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "torchvision" not in output and "Loading weights" not in output, output


def test_model_and_features_messages_name_the_right_fix(tmp_path):
    from cli_helpers import fake_run

    line = one_error_line(
        cli(
            "generate",
            "-p",
            "a cat",
            "--model",
            "nobody/no-such-model",
            "--out",
            tmp_path / "x",
            "--device",
            "cpu",
        )
    )
    assert "`hf download nobody/no-such-model`" in line and "huggingface-cli" not in line, line
    assert not (tmp_path / "x").exists()
    pipeline = tmp_path / "a-pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    run = fake_run(tmp_path / "run", method="none", scale=0.0, prompts=[("c", "a red circle")])
    line = one_error_line(cli("evaluate", run, "--features", pipeline, "--device", "cpu"))
    assert "a diffusers pipeline folder, not an image model" in line, line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error_line(cli("evaluate", run, "--features", empty, "--device", "cpu"))
    assert "a folder without an image model (no config.json)" in line, line
