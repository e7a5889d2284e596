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


def cli(*args: Any) -> Any:
    """Run ``sparke ARGS`` in process; the result has exit_code, stdout, stderr and output."""
    from sparke.cli import app

    runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=True)


def one_error_line(result: Any) -> str:
    """The single 'error: ...' line of a refused command (asserts there is no traceback)."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


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
