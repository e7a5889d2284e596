"""The benchmark scripts behind docs/scale.md's figures run end to end on the CPU with tiny sizes and write
their JSON. (The scripts that chose the defaults are a record, in experiments/scripts/, and no test runs them.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_step_tiny(tmp_path):
    out = tmp_path / "tiny.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_step.py"),
        "--tiny",
        "--reps",
        "1",
        "--steps",
        "4",
        "--unet-backend",
        "torch",
    ]
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [row["n"] for row in result["steps"]] == [64, 256]
    for row in result["steps"]:
        assert {"unet", "exact-fp32", "exact-fp16", "exact-bf16", "exact-fp16-nosync"} <= set(row["ms"])
        assert all(v > 0 for v in row["ms"].values())
    assert result["end_to_end"]["s_per_image_guided"] > 0


def test_gpu_plugin_tiny(tmp_path):
    """The end-to-end plug-in benchmark on a tiny real StableDiffusionPipeline: every variant, every n."""
    out = tmp_path / "plugin.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu_plugin.py"),
        "--tiny",
        "--ns",
        "0,40",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [row["n"] for row in result["rows"]] == [0, 40]
    for row in result["rows"]:
        assert {"vanilla", "default", "exact", "indexed", "exact-cpu"} <= set(row["per_image"])
        assert all(v["median_s"] > 0 for v in row["per_image"].values())
    assert result["rows"][1]["bank_kind"]["default"] == "AutoBank"


def test_eval_scale_tiny(tmp_path):
    """The evaluation-scale benchmark at tiny sizes: sparke's PRDC equals the prdc package's there too."""
    out = tmp_path / "eval.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "eval_scale.py"),
        "--prdc-rows",
        "300",
        "--prdc-dim",
        "16",
    ]
    cmd += ["--vendi-rows", "500", "--vendi-dim", "16", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    ours, reference = result["prdc_sparke"]["scores"], result["prdc_package"]["scores"]
    assert ours == pytest.approx(reference, abs=1e-12)  # density: sum/k vs (1/k) sum rounds apart
    assert 1 < result["vendi_cosine"]["scores"]["vendi_cosine"] <= 16  # at most d for the cosine kernel
