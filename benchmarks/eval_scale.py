"""Evaluation at scale on the CPU: PRDC against the ``prdc`` package, and exact cosine Vendi.

Targets (issue 19): PRDC of 20,000 x 20,000 rows of 256 columns at least 2x faster than ``prdc.compute_prdc``
with at most 1/4 of its peak memory; exact cosine Vendi of 50,000 x 768 under 10 s.

Each measurement runs in its own process so that its peak resident memory (``ru_maxrss``) is its own; the
memory figure given is the peak minus the resident memory once the features are made (the metric's own
working memory), and the whole process's peak beside it. Run heavy sizes once, e.g.
``nice -n 10 python benchmarks/eval_scale.py --json benchmarks/results/...json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _features(rows: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian rows, the fake set shifted and wider (overlapping manifolds, as real and generated are)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    return x if seed == 0 else x * np.float32(1.2) + np.float32(0.1)


def _child(task: str, rows: int, dim: int) -> dict:
    """One measurement in this process: seconds, working and total peak memory (MiB), the scores."""
    import torch

    if task == "vendi":
        import sparke

        x = torch.from_numpy(_features(rows, dim, 0))
        base = _rss_mib()
        start = time.perf_counter()
        score = sparke.vendi(x, kernel="cosine")
        scores = {"vendi_cosine": score}
    else:
        real, fake = _features(rows, dim, 0), _features(rows, dim, 1)
        base = _rss_mib()
        start = time.perf_counter()
        if task == "prdc-sparke":
            from sparke.metrics import prdc

            scores = prdc(torch.from_numpy(real), torch.from_numpy(fake), nearest_k=5)
        else:
            import prdc as prdc_package

            with contextlib.redirect_stdout(io.StringIO()):
                scores = prdc_package.compute_prdc(real, fake, nearest_k=5)
            scores = {k: float(v) for k, v in scores.items()}
    seconds = time.perf_counter() - start
    peak = _rss_mib()
    return {"task": task, "seconds": seconds, "work_mib": peak - base, "peak_mib": peak, "scores": scores}


def _measure(task: str, rows: int, dim: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", task, "--rows", str(rows), "--dim", str(dim)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prdc-rows", type=int, default=20_000)
    parser.add_argument("--prdc-dim", type=int, default=256)
    parser.add_argument("--vendi-rows", type=int, default=50_000)
    parser.add_argument("--vendi-dim", type=int, default=768)
    parser.add_argument("--skip-reference", action="store_true", help="do not run the prdc package")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.rows, args.dim)))
        return
    results = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared with other jobs), {platform.system()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    ours = _measure("prdc-sparke", args.prdc_rows, args.prdc_dim)
    results["prdc_sparke"] = ours
    print(f"PRDC sparke       {args.prdc_rows} x {args.prdc_rows} x {args.prdc_dim}: {_line(ours)}")
    if not args.skip_reference:
        ref = _measure("prdc-package", args.prdc_rows, args.prdc_dim)
        results["prdc_package"] = ref
        print(f"PRDC prdc package {args.prdc_rows} x {args.prdc_rows} x {args.prdc_dim}: {_line(ref)}")
        results["speedup"] = ref["seconds"] / ours["seconds"]
        results["working_memory_ratio"] = ours["work_mib"] / ref["work_mib"]
        results["max_score_difference"] = max(
            abs(ours["scores"][k] - ref["scores"][k]) for k in ref["scores"]
        )
        print(
            f"speed-up {results['speedup']:.1f}x, working memory {results['working_memory_ratio']:.3f} of the "
            f"package's, largest score difference {results['max_score_difference']:.2e}"
        )
    vendi = _measure("vendi", args.vendi_rows, args.vendi_dim)
    results["vendi_cosine"] = vendi
    print(f"exact cosine Vendi {args.vendi_rows} x {args.vendi_dim}: {_line(vendi)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


def _line(result: dict) -> str:
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result["scores"].items())
    return (
        f"{result['seconds']:.2f} s, working memory {result['work_mib']:.0f} MiB "
        f"(process peak {result['peak_mib']:.0f} MiB); {scores}"
    )


if __name__ == "__main__":
    main()
