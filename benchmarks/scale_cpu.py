"""CPU micro-benchmark of the guided step against the bank size (issue 6, point 5).

    python benchmarks/scale_cpu.py [--ns 1000,10000,30000] [--search-ns 1000,10000,100000] [--search faiss]
                                   [--out FILE]

(an empty list, ``--ns ""``, skips that part).

1. step cost against n at d = 16,384 (SD-1.5 latents), one image row with a 768-column prompt row:
   the exact ``Bank.direction`` (float32 and float16 storage) and ``IndexedBank.direction`` (default
   neighbors = samples = 256);
2. the indexed step alone at small d (64 image + 32 prompt columns: rows cost nothing to read), up to
   larger n, to show how the search grows. ``--search flat`` times the exact flat scan that an
   ``IndexedBank`` runs on CUDA (here on the CPU: it grows linearly in n, FAISS's HNSW does not).
Medians of ``--reps`` calls after two warm-ups; the rows are clustered unit features (benchmarks/_data.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import clustered, median_ms  # noqa: E402

import sparke  # noqa: E402

SX, SY = 0.8, 0.3


def fill(bank, n: int, d: int, e: int, seed: int, chunk: int = 4096) -> float:
    """Add n clustered rows chunk by chunk (never the whole set in memory twice); returns seconds."""
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x, y = clustered(m, d, e, prompts=100, seed=seed * 1000 + start // chunk + 1, centres_seed=seed)
        bank.add(x, y)
    return time.perf_counter() - t0


def _kind(bank) -> str:
    if bank.search_mode == "flat":
        return "device flat scan"
    return "HNSW" if bank._graph else "FAISS flat"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ns", default="1000,10000,30000")
    parser.add_argument("--search-ns", default="1000,10000,100000")
    parser.add_argument("--d", type=int, default=16_384)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and FAISS threads (1: stable on a shared machine)"
    )
    parser.add_argument(
        "--search", default="auto", choices=["auto", "faiss", "flat"], help="the IndexedBank's search"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s)"
    )
    print(f"machine: {machine}")
    results: dict = {"machine": machine, "d": args.d, "search_mode": args.search, "step": [], "search": []}
    e = 768
    qx, qy = clustered(1, args.d, e, prompts=100, seed=999, centres_seed=1)
    for n in [int(v) for v in args.ns.split(",") if v]:
        row = {"n": n}
        for name, dtype in (("exact-fp32", torch.float32), ("exact-fp16", torch.float16)):
            bank = sparke.Bank(dtype=dtype)
            fill(bank, n, args.d, e, seed=1)
            # the kept normaliser: its value does not change the cost (computing it is a one-off O(n^2 d))
            bank.set_pair_sum(float(n), sigma_image=SX, sigma_prompt=SY)
            row[name] = median_ms(
                lambda b=bank: b.direction(qx, qy, sigma_image=SX, sigma_prompt=SY), args.reps
            )
            del bank
        indexed = sparke.IndexedBank(args.d, e, sigma_image=SX, sigma_prompt=SY, search=args.search)
        row["indexed_build_s"] = fill(indexed, n, args.d, e, seed=1)
        row["indexed"] = median_ms(lambda b=indexed: b.direction(qx, qy), args.reps)
        del indexed
        results["step"].append(row)
        print(
            f"d={args.d} n={n:>7}: exact fp32 {row['exact-fp32']:8.1f} ms, exact fp16 {row['exact-fp16']:8.1f} ms, "
            f"indexed {row['indexed']:6.1f} ms (built in {row['indexed_build_s']:.0f} s)"
        )
    sx, sy = clustered(1, 64, 32, prompts=100, seed=999, centres_seed=2)
    for n in [int(v) for v in args.search_ns.split(",") if v]:
        indexed = sparke.IndexedBank(64, 32, sigma_image=SX, sigma_prompt=SY, search=args.search)
        build = fill(indexed, n, 64, 32, seed=2, chunk=16384)
        ms = median_ms(lambda b=indexed: b.direction(sx, sy), args.reps * 4)
        results["search"].append({"n": n, "indexed": ms, "build_s": build, "kind": _kind(indexed)})
        print(f"d=64+32 n={n:>7}: indexed {ms:6.2f} ms ({_kind(indexed)}, built in {build:.0f} s)")
        del indexed
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
