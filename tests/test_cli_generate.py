"""``sparke generate``: the run folder, resume after interrupts and kills, bad input, model loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cli_helpers import (
    SUBPROCESS_ENV,
    WIDE,
    cli,
    dead_pid,
    folder_state,
    messages,
    one_error_line,
    one_thread,
    paused_sparke,
    said,
    save_tiny_shapes,
)
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
    # the same bank, bit for bit: rows, kept sums and marks, the index's search vectors and random state
    assert bank_content(a / "bank.safetensors") == bank_content(b / "bank.safetensors")


def bank_content(path: Path) -> tuple[dict, dict]:
    """(header metadata, tensors as exact bytes) of a bank file: safetensors writes the header's keys in a
    random order, so two saves of one bank differ in bytes but never in content."""
    with safe_open(str(path), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        meta = handle.metadata()
    return meta, {name: (t.dtype, tuple(t.shape), t.numpy().tobytes()) for name, t in tensors.items()}


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
    assert (
        meta["model"] == str(tiny.resolve()) and meta["method"] == "sparke" and meta["space"] == "x0-centred"
    )
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
    assert "0 new, 9 from before" in said(result)
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
    assert result.exit_code == 130 and "interrupted" in said(result), result.output
    assert Bank.load(out / "bank.safetensors").metadata["run"]["committed_batches"] == 2
    monkeypatch.undo()
    result = cli(*args(tiny, prompt_file, out))
    assert result.exit_code == 0, result.output
    assert "resuming" in said(result)
    assert_same_run(reference, out)
    assert not list(out.rglob("*.tmp"))


def test_kill_9_then_resume_equals_uninterrupted(reference, tiny, prompt_file, tmp_path):
    """A real SIGKILL of `python -m sparke generate` mid-run, then the same command again."""
    out = tmp_path / "killed"
    # the child (one thread, like this process: float sums, hence PNG bytes, can depend on the thread count)
    # stops as its batch 2 starts, two batches committed: killed there, whatever the machine's speed
    with paused_sparke(args(tiny, prompt_file, out), 2, tmp_path / "signals") as (proc, _):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(manifest(out)) == 4
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
    result = cli("generate", "--help", env=WIDE)  # the options table fits a known width
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
        env={**SUBPROCESS_ENV, **WIDE},
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
    assert result.exit_code == 0 and "0 new" in said(result), result.output


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


# -- issue 12: refused starts leave nothing ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, words",
    [
        (["--every", 0], "every"),
        (["--scale", -1], "scale"),
        (["--space", "foo"], "foo"),
        (["--height", 32, "--width", 32], "--height"),
        (["--model", "nobody/no-such-model"], "nobody/no-such-model"),
    ],
)
def test_refused_start_leaves_the_disk_as_it_was(tiny, prompt_file, tmp_path, extra, words):
    out = tmp_path / "new" / "run"
    line = one_error_line(cli(*args(tiny, prompt_file, out), *extra))
    assert words in line
    assert not (tmp_path / "new").exists()  # not even the parent it would have made
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    before = folder_state(existing)
    one_error_line(cli(*args(tiny, prompt_file, existing), *extra))
    assert folder_state(existing) == before and sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


def test_refused_bank_then_rerun_works(reference, tiny, prompt_file, tmp_path):
    """A --bank of another model is refused before run.json exists: a rerun without it, or with the right one,
    is not blocked."""
    other = Bank(metadata={"model": "someone/else", "space": "latent"})
    other.add(torch.randn(2, 3 * 32 * 32), torch.randn(2, 384))
    other.save(tmp_path / "other.safetensors")
    out = tmp_path / "run"
    one_error_line(cli(*args(tiny, prompt_file, out), "--bank", tmp_path / "other.safetensors"))
    assert not out.exists()
    result = cli(*args(tiny, prompt_file, out), "-n", 1)
    assert result.exit_code == 0, result.output


def test_first_batch_failure_is_one_line_and_leaves_nothing(tiny, prompt_file, tmp_path, monkeypatch):
    from sparke.embedded.pipeline import ShapesPipeline

    def broken(self, *a, **k):
        raise ValueError("the model does not like this")

    monkeypatch.setattr(ShapesPipeline, "__call__", broken)
    out = tmp_path / "run"
    line = one_error_line(cli(*args(tiny, prompt_file, out)))
    assert "first batch" in line and "does not like this" in line
    assert not out.exists()


def test_out_is_a_file_and_bare_generate(tmp_path, tiny):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = one_error_line(cli("generate", "-p", "a cat", "--model", tiny, "--out", blocker))
    assert "is a file, not a folder" in line and "parent" not in line
    line = one_error_line(cli("generate"))
    assert "--out DIR is required" in line
    assert "Usage" not in cli("generate").output


# -- issue 12: the lock ----------------------------------------------------------------------------------------------
def test_second_writer_is_refused_naming_the_holder(reference, tiny, prompt_file):
    import socket

    from sparke.runs.lock import RunLock

    before = folder_state(reference)
    with RunLock(reference):
        line = one_error_line(cli(*args(tiny, prompt_file, reference)))
        assert f"pid {os.getpid()}" in line and socket.gethostname() in line and "another sparke" in line
        assert "wait" in line
    assert folder_state(reference) == before  # the lock file is gone again
    assert not (reference / ".sparke.lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(reference, tiny, prompt_file, tmp_path):
    import shutil
    import socket

    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    dead = dead_pid()
    (out / ".sparke.lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    result = cli(*args(tiny, prompt_file, out))
    assert result.exit_code == 0, result.output
    assert "stale lock" in said(result) and f"pid {dead}" in said(result)
    assert not (out / ".sparke.lock").exists()


def test_lock_without_flock_uses_the_pid(tmp_path, monkeypatch):
    """On a file system without flock: a live pid on this host holds the lock, a dead one does not."""
    import socket

    from sparke.runs import RunError
    from sparke.runs import lock as lock_module

    class NoFlock:
        LOCK_EX = LOCK_NB = 0

        @staticmethod
        def flock(fd, op):
            import errno

            raise OSError(errno.ENOLCK, "no locks")

    monkeypatch.setattr(lock_module, "fcntl", NoFlock)
    (tmp_path / ".sparke.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(RunError, match=f"pid {os.getppid()}"):
        lock_module.RunLock(tmp_path).acquire()
    (tmp_path / ".sparke.lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    lock = lock_module.RunLock(tmp_path)
    assert "stale" in lock.acquire()
    lock.release()


def test_concurrent_generate_processes(reference, tiny, prompt_file, tmp_path):
    """A real second `sparke generate` into a folder being written exits at once naming the first."""
    out = tmp_path / "busy"
    # the first writer stops before its batch 1 (lock held) until the second one was refused
    with paused_sparke(args(tiny, prompt_file, out), 1, tmp_path / "signals") as (proc, _):
        line = one_error_line(cli(*args(tiny, prompt_file, out)))
        assert f"pid {proc.pid}" in line
    assert proc.returncode == 0
    assert len(manifest(out)) == 9  # one writer: one line per image
    assert_same_run(reference, out)


# -- issue 12: verify on resume --------------------------------------------------------------------------------------
def test_manifest_lines_record_size_and_hash(reference):
    from sparke.runs import file_sha256

    for record in manifest(reference):
        file = reference / record["file"]
        assert record["size"] == file.stat().st_size and record["sha256"] == file_sha256(file)


def test_damaged_png_is_regenerated_bit_exactly(reference, tiny, prompt_file, tmp_path):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(reference, out)
    png = out / "images" / "000004.png"
    png.write_bytes(png.read_bytes()[:40])  # truncated
    flipped = out / "images" / "000007.png"
    data = bytearray(flipped.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes
    flipped.write_bytes(bytes(data))
    result = cli(*args(tiny, prompt_file, out))
    assert result.exit_code == 0, result.output
    assert "000004.png is damaged" in said(result) and "000007.png is damaged" in said(result)
    assert "7 of 9 images already done" in said(result)
    assert_same_run(reference, out)


def test_damaged_manifest_tail_is_cut_with_a_note(reference, tiny, prompt_file, tmp_path):
    import shutil

    out = tmp_path / "tail"
    shutil.copytree(reference, out)
    lines = (out / "manifest.jsonl").read_bytes().splitlines(keepends=True)
    (out / "manifest.jsonl").write_bytes(
        b"".join(lines[:7]) + b"\x00" * 30 + b"\n" + b'{"oops": 1}\n' + b"{half"
    )
    result = cli(*args(tiny, prompt_file, out))
    assert result.exit_code == 0, result.output
    assert "cut 3 damaged lines" in said(result)
    assert_same_run(reference, out)


def test_damaged_manifest_middle_names_repair_and_repair_fixes_it(reference, tiny, prompt_file, tmp_path):
    import shutil

    from cli_helpers import cli as run_cli

    out = tmp_path / "middle"
    shutil.copytree(reference, out)
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    lines[2] = "{not json at all\n"  # image 2's line
    (out / "manifest.jsonl").write_text("".join(lines))
    (out / "images" / "000006.png").write_bytes(b"\x89PNG broken")  # and a damaged image
    for command in (
        args(tiny, prompt_file, out),
        ["evaluate", out],
        ["report", out, "--out", tmp_path / "r.html"],
    ):
        line = one_error_line(run_cli(*command))
        assert f"sparke repair {out}" in line and "manifest.jsonl:3" in line
    result = run_cli("repair", out)
    assert result.exit_code == 0, result.output
    assert "1 line rebuilt" in said(result) and "1 damaged line dropped" in said(result)
    assert "1 damaged or missing image dropped" in said(result)
    assert_same_run(reference, out)
    result = run_cli("repair", out)
    assert result.exit_code == 0 and "nothing to repair" in said(result), result.output


# -- issue 17: a run past the bank's crossover, in the index's sampled regime ----------------------------------------
# Public options lower the crossover to 3 rows and the index's reads to 2 nearest + 2 sampled rows: the bank is
# indexed from its 4th row (batch 1) and samples from its 5th (batches 2-4), as every large run does.
INDEXED = ("--set", "crossover=3", "--set", "neighbors=2", "--set", "samples=2")


@pytest.fixture(scope="module")
def indexed_reference(tiny, prompt_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("indexed") / "reference"
    result = cli(*args(tiny, prompt_file, out), *INDEXED)
    assert result.exit_code == 0, result.output
    from sparke.core.auto import bank_file_kind

    assert bank_file_kind(out / "bank.safetensors") == "indexed"
    return out


def test_repair_keeps_an_indexed_bank(indexed_reference, tiny, prompt_file, tmp_path):
    """`sparke repair` reads an indexed bank file (it used to set it aside as damaged and replay every batch)."""
    import shutil

    out = tmp_path / "repaired"
    shutil.copytree(indexed_reference, out)
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    lines[2] = "{not json at all\n"  # image 2's line: rebuilt from its PNG, as its batch is in the bank
    (out / "manifest.jsonl").write_text("".join(lines))
    result = cli("repair", out, "--no-generate")
    assert result.exit_code == 0, result.output
    assert "1 line rebuilt" in said(result) and "damaged" not in said(result).replace("damaged line", "")
    assert not list(out.glob("*.damaged"))
    assert folder_state(out) == folder_state(indexed_reference)  # the bank untouched, the manifest as made
    result = cli(*args(tiny, prompt_file, out), *INDEXED)
    assert result.exit_code == 0 and "0 new, 9 from before" in said(result), result.output
    assert folder_state(out) == folder_state(indexed_reference)


@pytest.mark.parametrize("deleted", [1, 6])
def test_indexed_run_makes_removed_images_again_exactly(
    indexed_reference, tiny, prompt_file, tmp_path, deleted
):
    """Image 1 (batch 0: the bank goes back to exact) or 6 (batch 3: indexed, sampling) deleted: the bank is
    truncated to its state then, and the batches made again are the uninterrupted run's, bit for bit."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(indexed_reference, out)
    (out / "images" / f"{deleted:06d}.png").unlink()
    result = cli(*args(tiny, prompt_file, out), *INDEXED)
    assert result.exit_code == 0, result.output
    assert_same_run(indexed_reference, out)


def test_indexed_run_resumes_after_kill_9_exactly(indexed_reference, tiny, prompt_file, tmp_path):
    """Killed as batch 3 starts (the bank indexed and sampling, its random stream used): the same run."""
    out = tmp_path / "killed"
    with paused_sparke([*args(tiny, prompt_file, out), *INDEXED], 3, tmp_path / "signals") as (proc, _):
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(manifest(out)) == 6
    result = cli(*args(tiny, prompt_file, out), *INDEXED)
    assert result.exit_code == 0, result.output
    assert_same_run(indexed_reference, out)


def test_repair_refuses_what_is_not_a_run(tmp_path):
    line = one_error_line(cli("repair", tmp_path))
    assert "run.json" in line and "sparke repair" in line


# -- issue 12: modes, warnings, prompt files, messages ---------------------------------------------------------------
def test_files_follow_the_umask(tiny, prompt_file, tmp_path):
    import stat

    previous = os.umask(0o022)
    try:
        out = tmp_path / "modes"
        result = cli(*args(tiny, prompt_file, out), "-n", 1)
        assert result.exit_code == 0, result.output
        assert cli("evaluate", out).exit_code == 0
        assert cli("report", out, "--out", tmp_path / "report.html").exit_code == 0
        files = [
            out / "run.json",
            out / "manifest.jsonl",
            out / "bank.safetensors",
            out / "metrics.json",
            tmp_path / "report.html",
            *sorted((out / "images").glob("*.png")),
        ]
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o644, file
        os.umask(0o077)
        from sparke.runs import atomic_write

        atomic_write(tmp_path / "private.txt", b"x")
        assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_weak_guidance_warns_once_as_one_line(tiny, tmp_path):
    result = cli(
        "generate",
        "--model",
        tiny,
        "-p",
        "a red circle",
        "-n",
        4,
        "-b",
        2,
        "--steps",
        5,
        "--every",
        10,  # the default, "auto", guides every step of a 5-step run: nothing to warn about
        "--out",
        tmp_path / "w",
    )
    assert result.exit_code == 0, result.output
    warned = [line for line in messages(result.stderr, "warning:") if "guides only" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: SPARKE guides only 1 of 5"), result.stderr
    assert "--every" in warned[0] and "UserWarning" not in result.stderr


def test_required_values_checked_against_the_world(tmp_path, tiny):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "a purple circle", "required": {"shape": "circle", "colour": "purpleish"}}\n'
    )
    line = one_error_line(cli("generate", "--model", tiny, "--prompts", prompts, "--out", tmp_path / "o"))
    assert "'purpleish'" in line and "p.jsonl:1" in line and "purple" in line
    prompts.write_text('{"prompt": "a circle", "required": {"hue": "red"}}\n')
    line = one_error_line(cli("generate", "--model", tiny, "--prompts", prompts, "--out", tmp_path / "o"))
    assert "'hue'" in line
    assert not (tmp_path / "o").exists()
    prompts.write_text('{"prompt": "two red squares", "required": {"shape": "square", "colour": "red", "count": 2, '
                       '"position": "top left", "background": "grey", "size": "small"}}\n')  # fmt: skip
    assert read_prompts(prompts)[0].required["count"] == 2


def test_messages(reference, tiny, prompt_file, tmp_path):
    from sparke.runs.generation import one_line

    # a method change is one difference, not a list of settings "now None"
    line = one_error_line(
        cli("generate", "--model", tiny, "--prompts", prompt_file, "-n", 3, "-b", 2, "--steps", 3,
            "--method", "none", "--out", reference)
    )  # fmt: skip
    assert "method was 'sparke', now 'none'" in line and "None" not in line.replace("'none'", "")
    # a bank path said once
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    line = one_error_line(
        cli(*args(tiny, prompt_file, tmp_path / "c"), "--bank", tmp_path / "junk.safetensors")
    )
    assert line.count("junk.safetensors") == 1
    # no word cut in two; no pydantic prefix
    long = (
        "We couldn't connect to 'https://huggingface.co' to load the files "
        + "and so on " * 30
        + "local_files_only"
    )
    short = one_line(ValueError(long), 120)
    assert short.endswith(" ...") and short[:-4].split()[-1] in long.split()
    assert one_line(ValueError("Value error, bad thing")) == "bad thing"
    line = one_error_line(
        cli("generate", "-p", "x", "--model", "nobody/no-such-model", "--out", tmp_path / "o")
    )
    assert "local_files_o" not in line or "local_files_only" in line
    # help: no blank first line, per-method defaults, a version
    help_text = cli("generate", "--help").stdout
    assert help_text.splitlines()[0].strip().startswith("Usage")
    assert "(pg)" in " ".join(help_text.split())
    version = cli("--version")
    assert version.exit_code == 0 and version.stdout.startswith("sparke ")


def test_bank_follows_the_pipeline_device():
    """Issue 10 point 1: a run's bank lives on the pipeline's execution device, fp16 on CUDA."""
    from types import SimpleNamespace

    from sparke.runs.generation import bank_placement, place_bank

    assert bank_placement(SimpleNamespace(_execution_device=torch.device("cpu"))) == (
        torch.device("cpu"),
        torch.float32,
    )
    cuda_pipe = SimpleNamespace(_execution_device=torch.device("cuda", 0))
    assert bank_placement(cuda_pipe) == (torch.device("cuda", 0), torch.float16)
    calls = []

    class FakeBank:
        def to(self, device=None, dtype=None):
            calls.append((device, dtype))
            return self

    place_bank(FakeBank(), cuda_pipe)
    assert calls == [(torch.device("cuda", 0), torch.float16)]


def test_run_bank_is_float32_on_cpu_and_loadable(reference):
    bank = Bank.load(reference / "bank.safetensors")
    assert bank.x.dtype == torch.float32 and bank.x.device.type == "cpu"


def test_the_run_bank_switches_to_the_index_and_resumes_exactly(tiny, prompt_file, tmp_path, monkeypatch):
    """The CLI's SPARKE bank is an AutoBank: past the crossover its rows move into an IndexedBank, the saved
    file is an indexed bank file, and an interrupted run resumes to the same bytes."""
    pytest.importorskip("faiss")
    from sparke.core import auto
    from sparke.core.auto import bank_file_kind

    monkeypatch.setitem(auto.CROSSOVER, "cpu", 3)
    monkeypatch.setitem(auto.CROSSOVER_DIM, "cpu", 1)  # no widening for narrow rows: switch past 3 rows
    whole = tmp_path / "whole"
    assert cli(*args(tiny, prompt_file, whole)).exit_code == 0
    assert bank_file_kind(whole / "bank.safetensors") == "indexed"
    part = tmp_path / "part"
    assert cli(*args(tiny, prompt_file, part)).exit_code == 0
    (part / "images" / "000008.png").unlink()  # the last batch is lost: replayed from the saved index
    result = cli(*args(tiny, prompt_file, part))
    assert result.exit_code == 0, result.output
    assert (whole / "images" / "000008.png").read_bytes() == (part / "images" / "000008.png").read_bytes()


def test_folders_from_before_a_new_setting_still_resume():
    from sparke.runs.config import ADDED_SETTINGS, config_differences

    old = {"method": "sparke", "settings": {"every": 2, "sigma_image": 0.8}}
    now = {"method": "sparke", "settings": {"every": 2, "sigma_image": 0.8, **ADDED_SETTINGS}}
    assert config_differences(old, now) == []  # the folder ran with what the new settings default to
    changed = {"method": "sparke", "settings": {**now["settings"], "smooth": 1.0}}
    assert config_differences(old, changed) == ["smooth was not set, now 1.0"]
    assert config_differences(now, old) == [
        f"{k} was {v!r}, now not set" for k, v in sorted(ADDED_SETTINGS.items())
    ]


def test_folders_from_before_every_auto_still_resume():
    """every="auto" became the default after folders recorded every=10: it resolves to 10 from 20 steps on, so
    such a folder resumes; at 8 steps auto guides every 2nd step, another run, which is refused."""
    from sparke.runs.config import config_differences

    def config(every, steps):
        return {"method": "sparke", "steps": steps, "settings": {"every": every}}

    assert config_differences(config(10, 25), config("auto", 25)) == []
    assert config_differences(config(10, 8), config("auto", 8)) == ["every was 10, now 'auto'"]
    assert config_differences(config(3, 25), config("auto", 25)) == ["every was 3, now 'auto'"]
