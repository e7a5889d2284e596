"""``torchrun --nproc_per_node=2 -m sparke generate``: 2 CPU processes (gloo) share one bank, manifest, resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from cli_helpers import SUBPROCESS_ENV, cli, folder_state, one_thread, save_tiny_shapes, unwrapped
from sparke import Bank
from sparke.runs import RunFolder

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is unavailable",
)

PROMPTS = ["a red circle", "a crimson disc", "two blue squares"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    with one_thread():
        return save_tiny_shapes(tmp_path_factory.mktemp("models") / "tiny-shapes")


def generate_args(tiny: Path, out: Path, scale: float) -> list[str]:
    prompts = [a for p in PROMPTS for a in ("-p", p)]
    # 3 prompts x 2 images in batches of 2: 3 batches, so the second round has one item for two processes
    return ["generate", "--model", str(tiny), *prompts, "-n", "2", "-b", "2", "--steps", "2", "--every", "1",
            "--scale", str(scale), "--device", "cpu", "-o", str(out)]  # fmt: skip


def torchrun(tiny: Path, out: Path, scale: float) -> subprocess.CompletedProcess:
    # --standalone: the launcher binds its own free port (a port picked here could be taken before it binds)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sparke", *generate_args(tiny, out, scale)]  # fmt: skip
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def check_complete(out: Path) -> Bank:
    records = manifest(out)
    assert [r["index"] for r in records] == list(range(6))  # one line per image, in image order
    assert [r["batch"] for r in records] == [0, 0, 1, 1, 2, 2]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(6)]
    # every rank's PNG is stamped (size, sha256) and rank 0's lock is gone once the run ends
    assert RunFolder(out).verify({r["index"]: r for r in records}) == {}
    assert all("sha256" in r for r in records) and not (out / ".sparke.lock").exists()
    bank = Bank.load(out / "bank.safetensors")
    assert len(bank) == 6 and bank.y is not None
    assert bank.metadata["run"]["committed_batches"] == 3
    assert len({tuple(row.tolist()) for row in bank.x}) == 6  # six distinct rows
    return bank


def test_two_processes_guided_then_resume(tiny, tmp_path):
    """A guided run on 2 processes is whole; losing its last round and rerunning gives the same folder."""
    out = tmp_path / "guided"
    proc = torchrun(tiny, out, 0.05)
    assert unwrapped(proc.stdout).count("done: 6 images") == 1  # rank 0 alone reports
    bank = check_complete(out)
    reference = folder_state(out)
    reference.pop("bank.safetensors")

    # a crash during the last round: image 4 written but not in the manifest, image 5 never written
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(lines[:4]))
    (out / "images" / "000005.png").unlink()
    proc = torchrun(tiny, out, 0.05)
    assert "6 images" in unwrapped(proc.stdout) and "2 new" in unwrapped(proc.stdout), proc.stdout
    resumed = check_complete(out)
    state = folder_state(out)
    state.pop("bank.safetensors")
    assert state == reference  # the same PNGs, byte for byte, and the same manifest
    assert torch.equal(resumed.x, bank.x) and torch.equal(resumed.y, bank.y)
    assert resumed.metadata["run"] == bank.metadata["run"]


def test_two_processes_unguided_equals_one_process(tiny, tmp_path):
    """Unguided (scale 0), sharding changes nothing: same PNGs, manifest, and bank rows in the same order,
    so the gathered rows join every bank in item order."""
    out = tmp_path / "two"
    torchrun(tiny, out, 0.0)
    two = check_complete(out)
    single = tmp_path / "one"
    with one_thread():
        result = cli(*generate_args(tiny, single, 0.0))
    assert result.exit_code == 0, result.output
    one = check_complete(single)
    assert torch.equal(two.x, one.x) and torch.equal(two.y, one.y)
    for i in range(6):
        name = f"images/{i:06d}.png"
        assert (out / name).read_bytes() == (single / name).read_bytes()
    strip = lambda rs: [{k: v for k, v in r.items() if k != "model"} for r in rs]  # noqa: E731
    assert strip(manifest(out)) == strip(manifest(single))
    shutil.rmtree(single)
