"""CPU crossover of the exact and the indexed bank: the bank size from which ``IndexedBank.direction`` is faster
than ``Bank.direction`` (issue 10, point 4; the constant ``sparke.core.auto.CROSSOVER["cpu"]``).

    python benchmarks/crossover.py [--ds 4096,16384] [--ns 1000,2000,3000,4000,6000,8000] [--batch 4]

For each d, one exact bank (float32) and one indexed bank (default neighbors = 256, samples = 768) grow to
each n in turn (clustered unit rows, 768-column prompt rows, benchmarks/_data.py), and both directions of one
batch of B rows are timed: medians of ``--reps`` calls after two warm-ups, one torch and FAISS thread.
The exact bank's kept normaliser is set once and not updated as rows are added: its value does not change
the step's cost, and keeping it exact is an O(m n d) cost per ``add`` that is not part of the step.
Below ``neighbors + samples`` rows the indexed bank reads every row (exact), so it cannot win there.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import clustered, median_ms  # noqa: E402

import sparke  # noqa: E402
from sparke.core.auto import CROSSOVER  # noqa: E402

E = 768


def grow(banks, n_from: int, n_to: int, d: int, chunk: int = 2048) -> None:
    """Add rows n_from..n_to (the same rows to every bank), chunk by chunk."""
    for start in range(n_from, n_to, chunk):
        m = min(chunk, n_to - start)
        x, y = clustered(m, d, E, prompts=100, seed=start // chunk + 1, centres_seed=d)
        for bank in banks:
            bank.add(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ds", default="4096,16384")
    parser.add_argument("--ns", default="1000,2000,3000,4000,6000,8000")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} thread(s), load average {load:.2f} at start"
    )
    print("| d | n | exact (ms) | indexed (ms) | exact / indexed |")
    print("| --- | --- | --- | --- | --- |")
    t_start = time.perf_counter()
    moves = []
    for d in [int(v) for v in args.ds.split(",") if v]:
        qx, qy = clustered(args.batch, d, E, prompts=100, seed=999, centres_seed=d)
        index = sparke.IndexedBank(d, E)
        exact, n = sparke.Bank(), 0
        for target in [int(v) for v in args.ns.split(",") if v]:
            # a fresh exact bank each time: a kept normaliser would be updated on add, O(n m d) per add
            previous, exact = exact, sparke.Bank()
            if len(previous):
                exact.add(previous.x, previous.y)
            del previous
            grow([exact, index], n, target, d)
            exact.set_pair_sum(float(target))  # its value does not change the cost (see the module doc)
            n = target
            t_exact = median_ms(lambda b=exact, q=(qx, qy): b.direction(*q), args.reps)
            t_index = median_ms(lambda b=index, q=(qx, qy): b.direction(*q), args.reps)
            print(f"| {d} | {n} | {t_exact:.1f} | {t_index:.1f} | {t_exact / t_index:.2f} |", flush=True)
            if n >= CROSSOVER["cpu"] and d not in [m[0] for m in moves]:
                t0 = time.perf_counter()  # what AutoBank pays once: all rows into a new index
                sparke.IndexedBank(d, E).add(exact.x, exact.y)
                moves.append((d, n, time.perf_counter() - t0))
        del exact, index
    for d, n, seconds in moves:
        print(f"moving {n} rows of d = {d} into an IndexedBank (AutoBank's switch): {seconds:.1f} s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"total {time.perf_counter() - t_start:.0f} s, load average {load:.2f} at the end")


if __name__ == "__main__":
    main()
