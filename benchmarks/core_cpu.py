"""CPU timings of the core (issue 2): exact scores at n = 20,000, d = 512 and the Cond-RKE direction at
n = 100,000, d = 16,384, B = 4 (float32). Prints seconds and peak extra memory; no assertions.

``--plain`` (issue 10) times only ``diversity_direction`` on plain tensors with no pair sum given (so its
bank pair sum is estimated from 65,536 random pairs) at n = 50,000, d = 16,384, B = 4, and reports the peak
memory of the process against the size of the bank (run it on its own: the peak RSS is per process).

    python benchmarks/core_cpu.py [--n-scores 20000] [--n-bank 100000]
    python benchmarks/core_cpu.py --plain [--n-plain 50000] [--d-bank 16384]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import warnings

import torch

import sparke


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def unit_bank(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    bank_x = torch.empty(n, d)
    for start in range(0, n, 8192):
        rows = torch.randn(min(8192, n - start), d, generator=gen)
        bank_x[start : start + rows.shape[0]] = torch.nn.functional.normalize(rows, dim=1)
    return bank_x


def plain(n: int, d: int, repeats: int) -> None:
    """diversity_direction on plain tensors, pair sum estimated: seconds and peak memory against the bank."""
    gen = torch.Generator().manual_seed(0)
    bank_x = unit_bank(n, d, gen)
    bank_y = torch.nn.functional.normalize(torch.randn(n, 384, generator=gen), dim=1)
    batch = torch.nn.functional.normalize(torch.randn(4, d, generator=gen), dim=1)
    batch_y = bank_y[:4].clone()
    size = (bank_x.numel() + bank_y.numel()) * 4 / 2**30
    print(
        f"bank: {n} x {d} (+ {n} x 384 prompts) float32 = {size:.2f} GiB; process RSS {current_rss_gib():.2f} GiB"
    )
    for repeat in range(repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the "pair sum was estimated" warning
            timed(
                f"diversity_direction cond-rke (pair sum estimated) #{repeat}",
                lambda: (
                    sparke.diversity_direction(
                        batch, batch_y, bank_x, bank_y, sigma_image=0.8, sigma_prompt=0.3
                    )
                    is None
                    or 0.0
                ),
            )
    peak = peak_rss_gib()
    print(f"peak RSS of the process: {peak:.2f} GiB = {peak / size:.2f} x the bank")


def timed(label: str, fn) -> float:
    """Wall seconds of fn(); also prints the process CPU seconds (a figure less sensitive to other load)."""
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    shown = value if isinstance(value, float) else "-"
    print(f"{label:<42} {seconds:8.2f} s   (cpu {cpu:.2f} s)   value {shown}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-scores", type=int, default=20_000)
    parser.add_argument("--d-scores", type=int, default=512)
    parser.add_argument("--n-bank", type=int, default=100_000)
    parser.add_argument("--d-bank", type=int, default=16_384)
    parser.add_argument("--plain", action="store_true", help="only the plain-tensor case of issue 10")
    parser.add_argument("--n-plain", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        f", load average {os.getloadavg()[0]:.1f}"
    )
    if args.plain:
        plain(args.n_plain, args.d_bank, args.repeats)
        return
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(args.n_scores, args.d_scores, generator=gen), dim=1)
    y = torch.nn.functional.normalize(torch.randn(args.n_scores, 384, generator=gen), dim=1)
    base = peak_rss_gib()
    timed(f"rke gaussian n={args.n_scores} d={args.d_scores}", lambda: sparke.rke(x, sigma=0.8))
    timed("cond_rke gaussian", lambda: sparke.cond_rke(x, y, sigma_image=0.8, sigma_prompt=0.3))
    timed("vendi cosine (d x d dual)", lambda: sparke.vendi(x, kernel="cosine"))
    small = 4096  # where the O(n^3) spectra still run in seconds (they refuse beyond 8,192)
    timed(f"vendi gaussian n={small}", lambda: sparke.vendi(x[:small], sigma=0.8))
    timed(
        f"cond_vendi gaussian n={small}",
        lambda: sparke.cond_vendi(x[:small], y[:small], sigma_image=0.8, sigma_prompt=0.3),
    )
    timed("in_batch_similarity", lambda: sparke.in_batch_similarity(x))
    print(f"peak extra memory of the scores: {peak_rss_gib() - base:.2f} GiB")

    n, d = args.n_bank, args.d_bank
    bank_x = unit_bank(n, d, gen)
    bank_y = torch.nn.functional.normalize(torch.randn(n, 384, generator=gen), dim=1)
    batch = torch.nn.functional.normalize(torch.randn(4, d, generator=gen), dim=1)
    batch_y = bank_y[:4].clone()
    print(f"bank: {n} x {d} float32 = {bank_x.numel() * 4 / 2**30:.1f} GiB")
    base = peak_rss_gib()
    for repeat in range(3):
        timed(
            f"diversity_direction cond-rke (pair_sum given) #{repeat}",
            lambda: (
                sparke.diversity_direction(
                    batch, batch_y, bank_x, bank_y, sigma_image=0.8, sigma_prompt=0.3, pair_sum=float(n)
                )
                is None
                or 0.0
            ),
        )
    print(f"peak extra memory of the direction: {peak_rss_gib() - base:.2f} GiB")


if __name__ == "__main__":
    main()
