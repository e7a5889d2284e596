"""The GPU benchmark script runs end to end on the CPU with tiny sizes and writes its JSON."""

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


def test_issue20_tradeoff_reads_paired_folders_of_a_prompt_set(tmp_path):
    """Two folders of one prompt set merge (paired rows); each SPARKE row's gain, fidelity change and entropy
    gap closed are the exact ratios of the rows, and the plot is written."""
    import numpy as np

    def row(label, method, scale, fid, cv, ent):
        d = {"label": label, "method": method, "scale": scale, "fidelity": fid, "cond_vendi": cv}
        d["free_attribute_entropy"] = ent
        d["delta_vs_none"] = {"fidelity": {"value": fid - 0.5, "ci": [fid - 0.55, fid - 0.45]}}
        return d

    rows_a = [row("world", "world", 0, 1.0, 2.0, 0.9), row("none", "none", 0, 0.5, 2.0, 0.5)]
    rows_a.append(row("sparke", "sparke", 0.03, 0.49, 2.32, 0.64))
    rows_b = [rows_a[1], row("centre 0.5", "sparke", 0.03, 0.52, 2.4, 0.70)]
    for name, rows in (("a", rows_a), ("b", rows_b)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(rows))
        (folder / "meta.json").write_text(json.dumps({"config": {"seed": 5}}))
        reps = {
            f"{i}/{k}": np.full(20, r[k])
            for i, r in enumerate(rows)
            for k in ("cond_vendi", "free_attribute_entropy")
        }
        np.savez(folder / "replicates.npz", **reps)
    png = tmp_path / "plot.png"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "issue20_tradeoff.py"),
        str(tmp_path / "a"),
        str(tmp_path / "b"),
    ]
    done = subprocess.run([*cmd, "--png", str(png)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("| 5 |")]
    # gain 2.32 / 2.0 - 1, fidelity -1 point, gap (0.64 - 0.5) / (0.9 - 0.5) = 35%; constant replicates: point CIs
    assert (
        lines[0]
        == "| 5 | sparke | 0.03 | +16.0% [+16.0%, +16.0%] | -1.0 [-6.0, +4.0] | 35% [35%, 35%] | met |"
    )
    assert (
        lines[1]
        == "| 5 | centre 0.5 | 0.03 | +20.0% [+20.0%, +20.0%] | +2.0 [-3.0, +7.0] | 50% [50%, 50%] | met |"
    )
    assert png.stat().st_size > 10_000


def test_bench_settings_reproduces_sparke_bench_rows(tmp_path):
    """Settings generated one at a time and measured from their cached images give sparke bench's rows and
    intervals; measured beside a bench folder of the same prompt set (--base), a cached row stays paired."""
    import numpy as np

    from sparke.bench import QUICK, BenchConfig, run_bench
    from sparke.bench.combine import load

    sizes = dict(clusters=2, prompts=2, seeds=2, n_boot=50, seed=3, steps=4, mixture=False)
    config = BenchConfig(**{**QUICK.to_dict(), **sizes, "sweeps": {"sparke": [0.03]}})
    run_bench(config, tmp_path / "bench", progress=None)
    script = [sys.executable, str(ROOT / "benchmarks" / "bench_settings.py")]
    design = ["--clusters", "2", "--prompts", "2", "--rounds", "2"]
    cache = ["--cache", str(tmp_path / "cache")]

    def call(*args):
        done = subprocess.run([*script, *args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]

    for label, extra in (("none", []), ("sparke", ["--scale", "0.03"])):
        call("generate", "3", "--label", label, *extra, *cache, *design, "--steps", "4")
    call("measure", "3", *cache, *design, "--steps", "4", "--n-boot", "50", "--out", str(tmp_path / "mine"))
    want, _, want_reps = load(tmp_path / "bench")
    got, _, got_reps = load(tmp_path / "mine")
    by_label = {r["label"]: (r, p) for r, p in zip(got, got_reps, strict=True)}
    for row, reps in zip(want, want_reps, strict=True):
        mine, mine_reps = by_label[row["label"]]
        # the checker's counts are exact; feature scores come from float32 encoder and kernel sums, whose
        # rounding (~1e-7 relative) follows the thread count of the process that ran them
        assert mine["fidelity"] == row["fidelity"] and (mine_reps["fidelity"] == reps["fidelity"]).all()
        for key in ("cond_vendi", "vendi", "free_attribute_entropy", "world_recall"):
            if key not in row:  # the world row has no recall against itself
                assert key not in mine
                continue
            assert mine[key] == pytest.approx(row[key], rel=1e-5), (row["label"], key)
        for key, delta in row.get("delta_vs_none", {}).items():
            got_delta = mine["delta_vs_none"][key]
            assert got_delta["value"] == pytest.approx(delta["value"], rel=1e-5, abs=1e-6), (
                row["label"],
                key,
            )
            assert got_delta["ci"] == pytest.approx(delta["ci"], rel=1e-5, abs=1e-6), (row["label"], key)
        for key in reps:
            np.testing.assert_allclose(mine_reps[key], reps[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # beside the bench folder: none and sparke are the folder's; a cached setting of another label is paired
    call("generate", "3", "--label", "again", "--scale", "0.03", *cache, *design, "--steps", "4")
    call(
        "measure",
        "3",
        *cache,
        *design,
        "--steps",
        "4",
        "--n-boot",
        "50",
        "--base",
        str(tmp_path / "bench"),
        "--out",
        str(tmp_path / "paired"),
    )
    rows, _, reps = load(tmp_path / "paired")
    labels = [r["label"] for r in rows]
    assert labels == ["world", "none", "sparke", "again"]
    again, sparke = rows[3], rows[2]
    # "again" is the default under another name: the same images, so the same row and paired differences
    assert again["fidelity"] == sparke["fidelity"]
    for key, delta in sparke["delta_vs_none"].items():  # rounding as above
        assert again["delta_vs_none"][key]["value"] == pytest.approx(delta["value"], rel=1e-5, abs=1e-6), key
        assert again["delta_vs_none"][key]["ci"] == pytest.approx(delta["ci"], rel=1e-5, abs=1e-6), key
    np.testing.assert_allclose(reps[3]["cond_vendi"], reps[2]["cond_vendi"], rtol=1e-5)
