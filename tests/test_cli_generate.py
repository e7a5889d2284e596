"""``sparke generate``: the run folder, resume after interrupts and kills, bad input, model loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cli_helpers import SUBPROCESS_ENV, cli, folder_state, one_error_line, one_thread, save_tiny_shapes
from sparke import Bank
from sparke.runs import PromptEntry, RunConfig, RunFolder, image_seed, plan, read_prompts

PROMPTS = ["a red circle", "a crimson disc", "two blue squares"]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_shapes(tmp_path_factory.mktemp("models") / "tiny-shapes")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(
        "# three prompts, two clusters\nred\ta red circle\nred\ta crimson disc\nblue\ttwo blue squares\n"
    )
    return path


def args(tiny: Path, prompt_file: Path, out: Path, *extra) -> list:
    return [
        "generate",
        "--model",
        tiny,
        "--prompts",
        prompt_file,
        "-n",
        3,
        "--batch-size",
        2,
        "--steps",
        3,
        "--every",
        1,
        "--scale",
        0.05,
        "--out",
        out,
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(tiny, prompt_file, tmp_path_factory) -> Path:
    """An uninterrupted run: 3 prompts x 3 images in batches of 2 (5 batches, one spanning two prompts)."""
    out = tmp_path_factory.mktemp("runs") / "ref"
    result = cli(*args(tiny, prompt_file, out))
    assert result.exit_code == 0, result.output
    return out


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    """Same PNG bytes, same manifest records, same bank rows and run bookkeeping."""
    files_a, files_b = folder_state(a / "images"), folder_state(b / "images")
    assert files_a.keys() == files_b.keys()
    for name in files_a:
        assert files_a[name] == files_b[name], name
    # the manifest is an append-only log: a regenerated image's new line wins over an older one
    assert RunFolder(a).read_manifest() == RunFolder(b).read_manifest()
    bank_a, bank_b = Bank.load(a / "bank.safetensors"), Bank.load(b / "bank.safetensors")
    torch.testing.assert_close(bank_a.x, bank_b.x, rtol=0, atol=1e-6)
    torch.testing.assert_close(bank_a.y, bank_b.y, rtol=0, atol=0)
    assert bank_a.metadata["run"] == bank_b.metadata["run"]


# -- the folder ---------------------------------------------------------------------------------------------------
def test_run_folder_contents(reference, tiny):
    records = manifest(reference)
    assert [r["index"] for r in records] == list(range(9))
    first = records[0]
    assert (
        first["file"] == "images/000000.png"
        and first["prompt"] == "a red circle"
        and first["cluster"] == "red"
    )
    assert first["method"] == "sparke" and first["scale"] == 0.05 and first["settings"]["every"] == 1
    assert first["model"] == str(tiny.resolve()) and first["steps"] == 3 and first["cfg"] == 4.0
    assert first["seed"] == image_seed(0, 0)
    assert len({r["seed"] for r in records}) == 9
    assert [r["batch"] for r in records] == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    from PIL import Image

    with Image.open(reference / first["file"]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    bank = Bank.load(reference / "bank.safetensors")
    assert len(bank) == 9 and bank.x.shape[1] == 3 * 32 * 32 and bank.y.shape[1] == 384
    meta = bank.metadata
    assert meta["model"] == str(tiny.resolve()) and meta["method"] == "sparke" and meta["space"] == "latent"
    assert meta["kernel"] == "gaussian" and meta["sigma_image"] == 0.8 and meta["sigma_prompt"] == 0.3
    assert meta["run"]["committed_batches"] == 5 and meta["run"]["committed_images"] == 9
    with safe_open(str(reference / "bank.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["user"])["model"] == str(tiny.resolve())
    assert not list(reference.rglob("*.tmp"))
    run = json.loads((reference / "run.json").read_text())
    assert run["steps"] == 3 and len(run["prompts"]) == 3


def test_rerun_is_a_no_op(reference, tiny, prompt_file):
    before = folder_state(reference)
    result = cli(*args(tiny, prompt_file, reference))
    assert result.exit_code == 0, result.output
    assert "0 new, 9 from before" in result.stdout
    assert folder_state(reference) == before


def test_guidance_changes_images(reference, tiny, prompt_file, tmp_path):
    result = cli(
        *args(tiny, prompt_file, tmp_path / "none")[:-6], "--method", "none", "--out", tmp_path / "none"
    )
    assert result.exit_code == 0, result.output
    same = [
        (reference / "images" / f).read_bytes() == (tmp_path / "none" / "images" / f).read_bytes()
        for f in ("000000.png", "000008.png")
    ]
    # the first image has an empty bank and no earlier batch: only in-batch terms move it; the last one differs
    assert not same[1]
    assert Bank.load(tmp_path / "none" / "bank.safetensors").metadata["method"] == "none"


# -- interrupts ---------------------------------------------------------------------------------------------------
class Boom(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("where", ["png", "manifest", "bank"])
def test_interrupt_then_resume_equals_uninterrupted(
    reference, tiny, prompt_file, tmp_path, monkeypatch, where
):
    """Ctrl-C inside batch 2's commit (mid-PNG, between manifest lines, before the bank save); rerun = reference."""
    from sparke.core import bank as bank_module
    from sparke.runs import RunFolder as Folder

    out = tmp_path / "run"
    calls = {"n": 0}
    if where == "png":
        original = Folder.write_png

        def write_png(self, index, image):
            if index == 5:  # batch 2, second image: leave a temporary file as a kill would
                (self.images_dir / ".000005.png.x.tmp").write_bytes(b"half a png")
                raise Boom()
            return original(self, index, image)

        monkeypatch.setattr(Folder, "write_png", write_png)
    elif where == "manifest":

        def append_manifest(self, records):
            calls["n"] += 1
            if calls["n"] == 3:  # batch 2: write its first line only
                fd = os.open(self.manifest_file, os.O_WRONLY | os.O_APPEND)
                os.write(fd, (json.dumps(records[0]) + "\n").encode())
                os.write(fd, b'{"file": "images/0000')  # and a torn line, as a power cut would
                os.close(fd)
                raise Boom()
            return original_append(self, records)

        original_append = Folder.append_manifest
        monkeypatch.setattr(Folder, "append_manifest", append_manifest)
    else:
        original_save = bank_module.Bank.save

        def save(self, path):
            calls["n"] += 1
            if calls["n"] == 3:  # batch 2's PNGs and lines are written, its bank rows are not
                raise Boom()
            return original_save(self, path)

        monkeypatch.setattr(bank_module.Bank, "save", save)
    result = cli(*args(tiny, prompt_file, out))
    assert result.exit_code == 130 and "interrupted" in result.stderr, result.output
    assert Bank.load(out / "bank.safetensors").metadata["run"]["committed_batches"] == 2
    monkeypatch.undo()
    result = cli(*args(tiny, prompt_file, out))
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr
    assert_same_run(reference, out)
    assert not list(out.rglob("*.tmp"))


def test_kill_9_then_resume_equals_uninterrupted(reference, tiny, prompt_file, tmp_path):
    """A real SIGKILL of `python -m sparke generate` mid-run, then the same command again."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sparke", *map(str, args(tiny, prompt_file, out))]
    # one thread, like this process (``one_thread``): float sums, hence PNG bytes, can depend on the thread count
    env = {**SUBPROCESS_ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            lines = (
                (out / "manifest.jsonl").read_text().count("\n") if (out / "manifest.jsonl").exists() else 0
            )
            if lines >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    done = len(manifest(out))
    assert 3 <= done < 9
    result = cli(*args(tiny, prompt_file, out))
    assert result.exit_code == 0, result.output
    assert_same_run(reference, out)


def test_disk_full_mid_run(reference, tiny, prompt_file, tmp_path, monkeypatch):
    """An OSError while writing (disk full) is one line; the finished batches stay, and a rerun completes."""
    import errno

    from sparke.runs import RunFolder as Folder

    original = Folder.write_png

    def write_png(self, index, image):
        if index == 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.images_dir / "000006.png"))
        return original(self, index, image)

    monkeypatch.setattr(Folder, "write_png", write_png)
    out = tmp_path / "full"
    line = one_error_line(cli(*args(tiny, prompt_file, out)))
    assert "No space left on device" in line and "000006.png" in line and "rerun" in line
    assert len(manifest(out)) == 6
    monkeypatch.undo()
    assert cli(*args(tiny, prompt_file, out)).exit_code == 0
    assert_same_run(reference, out)


def test_corrupt_bank_in_run_folder(reference, tiny, prompt_file, tmp_path):
    import shutil

    out = tmp_path / "corrupt"
    shutil.copytree(reference, out)
    data = (out / "bank.safetensors").read_bytes()
    (out / "bank.safetensors").write_bytes(
        data[: len(data) // 2]
    )  # not something sparke writes: Bank.save is atomic
    before = folder_state(out)
    line = one_error_line(cli(*args(tiny, prompt_file, out)))
    assert "bank.safetensors" in line and "corrupt" in line
    assert folder_state(out) == before


def test_removed_images_are_regenerated(reference, tiny, prompt_file, tmp_path):
    """A PNG deleted by hand: its batch and the later ones are regenerated, the bank rolled back first."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    (out / "images" / "000004.png").unlink()
    result = cli(*args(tiny, prompt_file, out))
    assert result.exit_code == 0, result.output
    assert_same_run(reference, out)


# -- pure parts -----------------------------------------------------------------------------------------------------
def test_plan_and_seeds():
    config = RunConfig([PromptEntry(p) for p in PROMPTS], images_per_prompt=3, batch_size=4)
    items = plan(config)
    assert [item.indices for item in items] == [(0, 1, 2, 3), (4, 5, 6, 7), (8,)]
    assert plan(config) == items
    seeds = {image_seed(s, i) for s in range(3) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= v < 2**63 for v in seeds)
    assert image_seed(7, 3) == image_seed(7, 3)


def test_read_prompts_formats(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a red circle", "cluster": "c1", "required": {"shape": "circle"}}\n\n')
    assert read_prompts(jsonl) == [PromptEntry("a red circle", "c1", {"shape": "circle"})]
    txt = tmp_path / "p.txt"
    txt.write_text("a\n\n# comment\nc\tb\n")
    assert read_prompts(txt) == [PromptEntry("a"), PromptEntry("b", "c")]


def test_help_reads_well():
    result = cli("generate", "--help")
    assert result.exit_code == 0
    for option in (
        "--prompts",
        "--images-per-prompt",
        "--model",
        "--method",
        "--scale",
        "--every",
        "--sigma-image",
    ):
        assert option in result.stdout
    assert "none" in result.stdout and "sparke" in result.stdout
    assert cli("methods").exit_code == 0


def test_python_dash_m_entry_points(monkeypatch, capsys):
    """`python -m sparke` in a real subprocess (what `accelerate launch -m sparke` runs); `-m sparke.cli` in process."""
    proc = subprocess.run(
        [sys.executable, "-m", "sparke", "--help"],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "generate" in proc.stdout and "Usage: sparke" in proc.stdout
    import runpy

    monkeypatch.setattr(sys, "argv", ["sparke", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("sparke.cli", run_name="__main__")
    assert exit_info.value.code == 0 and "generate" in capsys.readouterr().out


# -- bad input: one line, exit 1, nothing lost -----------------------------------------------------------------------
def test_empty_prompt_file(tmp_path, tiny):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n\n")
    line = one_error_line(cli("generate", "--model", tiny, "--prompts", empty, "--out", tmp_path / "o"))
    assert "no prompts" in line and "empty.txt" in line
    line = one_error_line(cli("generate", "--prompts", tmp_path / "missing.txt", "--out", tmp_path / "o"))
    assert "no such prompt file" in line
    line = one_error_line(cli("generate", "--out", tmp_path / "o"))
    assert "no prompts" in line


def test_missing_model(tmp_path):
    line = one_error_line(
        cli("generate", "-p", "a cat", "--model", tmp_path / "nowhere", "--out", tmp_path / "o")
    )
    assert "no such folder" in line
    (tmp_path / "empty-model").mkdir()
    line = one_error_line(
        cli("generate", "-p", "a cat", "--model", tmp_path / "empty-model", "--out", tmp_path / "o")
    )
    assert "model_index.json" in line
    line = one_error_line(
        cli("generate", "-p", "a cat", "--model", "nobody/no-such-model", "--out", tmp_path / "o")
    )
    assert "nobody/no-such-model" in line and "cache" in line


def test_unwritable_output(tmp_path, tiny):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_error_line(cli("generate", "-p", "a cat", "--model", tiny, "--out", blocker / "run"))
    assert "a-file" in line and "not a folder" in line
    line = one_error_line(cli("generate", "-p", "a cat", "--model", tiny, "--out", blocker))
    assert "not a folder" in line
    if os.geteuid() != 0:  # root writes anywhere; the permission check only means something for a user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        line = one_error_line(cli("generate", "-p", "a cat", "--model", tiny, "--out", locked / "run"))
        assert "permission denied" in line


def test_other_settings_refused_and_nothing_lost(reference, tiny, prompt_file):
    before = folder_state(reference)
    for extra, words in (
        (["--seed", 1], "seed was 0, now 1"),
        (["--sigma-image", 0.5], "sigma_image was 0.8, now 0.5"),
        (["--steps", 4], "steps was 3, now 4"),
    ):
        a = args(tiny, prompt_file, reference)
        line = one_error_line(cli(*a, *extra))
        assert words in line and "another --out" in line
    line = one_error_line(
        cli("generate", "--model", tiny, "-p", "another prompt", "-n", 3, "--out", reference)
    )
    assert "prompts" in line
    assert folder_state(reference) == before


def test_bank_from_another_model_or_space(reference, tiny, prompt_file, tmp_path):
    other = Bank(metadata={"model": "someone/else", "space": "latent"})
    other.add(torch.randn(2, 3 * 32 * 32), torch.randn(2, 384))
    other.save(tmp_path / "other-model.safetensors")
    line = one_error_line(
        cli(*args(tiny, prompt_file, tmp_path / "a"), "--bank", tmp_path / "other-model.safetensors")
    )
    assert "someone/else" in line and "model" in line
    x0 = Bank.load(reference / "bank.safetensors")
    x0.metadata["space"] = "x0"
    x0.save(tmp_path / "x0.safetensors")
    line = one_error_line(
        cli(*args(tiny, prompt_file, tmp_path / "b"), "--bank", tmp_path / "x0.safetensors")
    )
    assert "feature space 'x0'" in line
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    line = one_error_line(
        cli(*args(tiny, prompt_file, tmp_path / "c"), "--bank", tmp_path / "junk.safetensors")
    )
    assert "junk.safetensors" in line
    # a run folder whose bank.safetensors was replaced by another model's bank
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    shutil.copy(tmp_path / "other-model.safetensors", copy / "bank.safetensors")
    before = folder_state(copy)
    line = one_error_line(cli(*args(tiny, prompt_file, copy)))
    assert "someone/else" in line
    assert folder_state(copy) == before


def test_start_from_a_bank(reference, tiny, prompt_file, tmp_path):
    """--bank: the run starts from another run's rows (and resumes with them)."""
    out = tmp_path / "from-bank"
    result = cli(*args(tiny, prompt_file, out), "--bank", reference / "bank.safetensors")
    assert result.exit_code == 0, result.output
    bank = Bank.load(out / "bank.safetensors")
    assert len(bank) == 18 and bank.metadata["run"]["initial_rows"] == 9
    torch.testing.assert_close(bank.x[:9], Bank.load(reference / "bank.safetensors").x)
    assert not np.array_equal(
        np.asarray(bytearray((out / "images" / "000000.png").read_bytes())),
        np.asarray(bytearray((reference / "images" / "000000.png").read_bytes())),
    )
    result = cli(*args(tiny, prompt_file, out))  # resuming without --bank keeps the one it started from
    assert result.exit_code == 0 and "0 new" in result.stdout, result.output


def test_bad_method_settings(tmp_path, tiny):
    line = one_error_line(
        cli("generate", "-p", "x", "--model", tiny, "--method", "none", "--scale", 0.1, "-o", tmp_path / "a")
    )
    assert "no scale" in line
    line = one_error_line(
        cli("generate", "-p", "x", "--model", tiny, "--method", "none", "--every", 2, "-o", tmp_path / "a")
    )
    assert "'every'" in line
    line = one_error_line(
        cli("generate", "-p", "x", "--model", tiny, "--objective", "nope", "-o", tmp_path / "a")
    )
    assert "objective" in line
    line = one_error_line(cli("generate", "-p", "x", "--model", tiny, "--window", "0", "-o", tmp_path / "a"))
    assert "START,END" in line
    line = one_error_line(
        cli("generate", "-p", "x", "--model", tiny, "--set", "bogus=1", "-o", tmp_path / "a")
    )
    assert "bogus" in line
    if not torch.cuda.is_available():
        line = one_error_line(
            cli("generate", "-p", "x", "--model", tiny, "--device", "cuda", "-o", tmp_path / "a")
        )
        assert "CUDA" in line


def test_diffusers_pipeline_folder(tmp_path):
    """A stock StableDiffusionPipeline saved with save_pretrained loads through DiffusionPipeline.from_pretrained."""
    from tiny_pipelines import tiny_sd

    folder = tmp_path / "tiny-sd"
    tiny_sd().save_pretrained(str(folder))
    out = tmp_path / "sd-run"
    result = cli(
        "generate", "--model", folder, "-p", "a photo of a cat", "-p", "a red car", "-n", 2, "--steps", 2,
        "--height", 32, "--width", 32, "--every", 1, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = manifest(out)
    assert len(records) == 4 and records[0]["steps"] == 2 and records[0]["cfg"] == 7.5
    bank = Bank.load(out / "bank.safetensors")
    assert len(bank) == 4 and bank.x.shape[1] == 4 * 16 * 16  # SD latents: 4 channels at 1/2 resolution here


def test_folder_api(tmp_path):
    """A torn last manifest line is ignored and cut before the next append."""
    folder = RunFolder(tmp_path)
    folder.manifest_file.write_bytes(b'{"file": "images/000000.png", "index": 0}\n{"file": "ima')
    assert list(folder.read_manifest()) == [0]
    folder.repair_manifest_tail()
    folder.append_manifest([{"file": "images/000001.png", "index": 1}])
    assert list(folder.read_manifest()) == [0, 1]
