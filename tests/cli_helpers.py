"""Helpers of the command-line and report tests: tiny saved pipelines, an in-process CLI runner, fake runs."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from typer.testing import CliRunner

# Oversubscribed CPUs (several test processes on 2 cores) make OpenMP's spinning threads 10x slower;
# subprocesses of the tests get the passive policy, the test process runs torch on one thread (see below).
SUBPROCESS_ENV = {
    **os.environ,
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@contextlib.contextmanager
def one_thread():
    """torch on one thread for the block: the tiny models gain nothing from two, and lose a lot when the
    machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def save_tiny_shapes(folder: Path) -> Path:
    """A tiny random ShapesPipeline saved with save_pretrained (model_index.json, unet/, scheduler/)."""
    from sparke.embedded.pipeline import TINY_UNET_CONFIG, ShapesPipeline, build_scheduler, build_unet

    torch.manual_seed(0)
    pipe = ShapesPipeline(unet=build_unet(TINY_UNET_CONFIG).eval(), scheduler=build_scheduler())
    pipe.save_pretrained(str(folder))
    return folder


def cli(*args: Any, env: dict[str, str] | None = None) -> Any:
    """Run ``sparke ARGS`` in process (``env``: variables set for the call); the result has exit_code,
    stdout, stderr and output."""
    from sparke.cli import app

    runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=True, env=env)


def one_error_line(result: Any) -> str:
    """The single 'error: ...' line of a refused command (asserts there is no traceback)."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = messages(result.stderr, "error:")
    assert len(errors) == 1, result.stderr
    return errors[0]


def messages(text: str, prefix: str) -> list[Unwrapped]:
    """The messages of console ``text`` that start with ``prefix`` ("warning:", ...), each unwrapped: a console
    narrower than a message breaks it over several lines, which run up to the next message."""
    lines = [line for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith(MESSAGE_PREFIXES)] + [len(lines)]
    return [
        unwrapped("\n".join(lines[start:stop]))
        for start, stop in zip(starts, starts[1:], strict=False)
        if lines[start].startswith(prefix)
    ]


MESSAGE_PREFIXES = ("error:", "warning:", "note:", "hint:")


class Unwrapped(str):
    """Console text with its line breaks joined by spaces; ``phrase in text`` ignores white space altogether,
    so a phrase matches wherever the console broke a line (between words, or inside a long path it folded)."""

    def __contains__(self, phrase: object) -> bool:
        if not isinstance(phrase, str):
            return NotImplemented
        return "".join(phrase.split()) in "".join(self.split())


def unwrapped(text: str) -> Unwrapped:
    """``text`` as one line (every run of white space one space), with a wrap-blind ``in`` (``Unwrapped``)."""
    return Unwrapped(" ".join(text.split()))


def said(result: Any) -> Unwrapped:
    """Everything a command printed (stdout and stderr), unwrapped: assert ``"phrase" in said(result)``."""
    return unwrapped(result.output)


WIDE = {"COLUMNS": "400"}  # help tables fit the terminal: a test of their rows gives them a known width


def folder_state(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` by relative name -> its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def fake_run(
    path: Path,
    *,
    method: str,
    scale: float,
    prompts: list[tuple[str, str]],
    per_prompt: int = 4,
    seed: int = 0,
    metrics: dict[str, float] | None = None,
    model: str = "fake-model",
) -> Path:
    """A run folder written by hand (random 32x32 PNGs, manifest, run.json, optional metrics.json)."""
    from PIL import Image

    from sparke.runs import PromptEntry, RunConfig, image_file

    rng = np.random.default_rng(seed)
    (path / "images").mkdir(parents=True)
    config = RunConfig(
        prompts=[PromptEntry(p, c) for c, p in prompts],
        model=model,
        method=method,
        scale=scale,
        images_per_prompt=per_prompt,
    )
    (path / "run.json").write_text(json.dumps(config.to_json()))
    lines = []
    for p_index, (cluster, prompt) in enumerate(prompts):
        for k in range(per_prompt):
            index = p_index * per_prompt + k
            arr = np.full((32, 32, 3), rng.integers(0, 255, 3), np.uint8)
            x, y = rng.integers(4, 24, 2)
            arr[y : y + 8, x : x + 8] = (220, 40, 40)
            Image.fromarray(arr).save(path / image_file(index))
            lines.append(
                json.dumps(
                    {
                        "file": image_file(index),
                        "index": index,
                        "prompt": prompt,
                        "cluster": cluster,
                        "method": method,
                        "scale": scale,
                        "model": model,
                    }
                )
            )
    (path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    if metrics is not None:
        overall = {"n_images": len(lines), **metrics}
        clusters = [{"cluster": c, **overall} for c in dict.fromkeys(c for c, _ in prompts)]
        data = {
            "format": "sparke.metrics",
            "format_version": 1,
            "run": path.name,
            "method": method,
            "scale": scale,
            "n_images": len(lines),
            "features": {"image": "embedded", "image_dim": 128, "prompt": "all-MiniLM-L6-v2"},
            "kernels": {"kernel": "gaussian", "sigma_image": 0.8, "sigma_prompt": 0.3},
            "overall": overall,
            "clusters": clusters,
        }
        (path / "metrics.json").write_text(json.dumps(data))
    return path


def dead_pid() -> int:
    """A pid no process can have (above the kernel's largest), unlike a finished child's, which may be reused."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except (OSError, ValueError):
        return 2**22 + 1  # Linux's largest pid_max, plus one; macOS stops at 99,998


# A `sparke ARGS` child that stops before batch BATCH: it creates READY, then waits until GO exists. Tests that
# race a child (a second writer, a SIGKILL mid-run) wait for READY instead of guessing how fast the child runs.
_PAUSED_CHILD = """
import sys, time
from pathlib import Path
import sparke.runs.generation as generation
ready, go, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
run_item = generation.run_item
def paused(session, item):
    if item.batch == batch:
        ready.touch()
        while not go.exists():
            time.sleep(0.01)
    return run_item(session, item)
generation.run_item = paused
from sparke.cli import main
sys.argv = ["sparke", *sys.argv[4:]]
main()
"""


@contextlib.contextmanager
def paused_sparke(args: list[Any], batch: int, signals: Path, timeout: float = 300.0):
    """Run ``sparke ARGS`` in a child process (one torch thread) that stops before its batch ``batch``.

    Yields (the Popen, the path to touch to let it go on) once the child is stopped there; the child's stderr
    is captured. On leaving, the child is let go and waited for (unless it was killed)."""
    import subprocess
    import sys
    import time

    signals.mkdir(parents=True, exist_ok=True)
    ready, go = signals / "ready", signals / "go"
    cmd = [sys.executable, "-c", _PAUSED_CHILD, str(ready), str(go), str(batch), *map(str, args)]
    env = {**SUBPROCESS_ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout  # a bound on a hung child, not a guess at its speed
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timed out"
        yield proc, go
    finally:
        go.touch()
        proc.wait(timeout=timeout)
        proc.stderr.close()
