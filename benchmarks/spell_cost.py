"""SPELL's step cost against the size of its shield (issue 18): the time of one guided step's repellency
(``SpellGuidance.push``: nearest shield rows of each sample + the sparse repellency) for a batch of B x0 rows,
against shield sizes n, beside the embedded model's own denoising step (UNet with classifier-free guidance).

The shield is a ``Bank`` of float16 rows searched exactly (a chunked scan of every row) or through a
``ProjectedSearch`` (``projected``: a 64-column random projection scanned, 8k candidates re-ranked on the full
rows; what ``SpellGuidance`` uses for a shield of 65,536 rows or more), or an ``IndexedBank`` (its own index:
``--search flat`` scans its 64-column projections; its build keeps pair sums, slow past 10^5 rows).
Rows are Gaussian, d columns (``--dims``: 3072 = the embedded model's 3 x 32 x 32 x0; 256 = a compact latent);
combinations whose float16 rows exceed ``--max-gib`` are skipped. Prints a table and writes JSON.

    python benchmarks/spell_cost.py [--ns 1e3,1e4,1e5,1e6] [--dims 256,3072] [--out FILE.json]
    python benchmarks/spell_cost.py --tiny --out /tmp/spell.json      # seconds, for the tests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from sparke.core import Bank
from sparke.core.indexed import IndexedBank
from sparke.methods.spell import SpellGuidance


def gaussian_rows(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, d, dtype=torch.float16)
    for start in range(0, n, 65536):
        out[start : start + 65536] = torch.randn(min(65536, n - start), d, generator=gen).half()
    return out


def guide_of(kind: str, rows: torch.Tensor, search: str) -> tuple[SpellGuidance, float]:
    """(a guide with a shield of ``rows``, seconds to build the shield and its search)."""
    start = time.perf_counter()
    if kind in ("exact", "projected"):
        bank = Bank(dtype=torch.float16)
        bank.add(rows)
    else:
        bank = IndexedBank(rows.shape[1], dtype=torch.float16, search=search, samples=0, neighbors=16)
        bank.add(rows)
    guide = SpellGuidance(scale=0.3, shield=bank, search="projected" if kind == "projected" else "exact")
    guide.push(torch.zeros(1, rows.shape[1]))  # builds the projected search (once per static shield)
    return guide, time.perf_counter() - start


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def model_step_ms(batch: int, reps: int, tiny: bool) -> float | None:
    """One denoising step of the embedded model for ``batch`` images (UNet on 2B rows: CFG), or None."""
    if tiny:
        return None
    from sparke.embedded.pipeline import load_pipeline

    pipe = load_pipeline("cpu")
    x = torch.randn(2 * batch, 3, 32, 32)
    t = torch.tensor(500)
    embeds = torch.randn(2 * batch, pipe.unet.config.cross_attention_dim)
    kwargs = pipe._unet_kwargs(embeds)
    with torch.no_grad():
        return median_ms(lambda: pipe.unet(x, t, **kwargs, return_dict=False), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", default="1e3,1e4,1e5,1e6", help="shield sizes, comma-separated")
    parser.add_argument("--dims", default="256,3072", help="row widths d, comma-separated")
    parser.add_argument("--batch", type=int, default=8, help="x0 rows per step (B)")
    parser.add_argument(
        "--kinds", default="exact,projected,indexed", help="exact, projected, indexed shields"
    )
    parser.add_argument(
        "--indexed-max", type=float, default=1e5, help="largest indexed shield (its build is slow)"
    )
    parser.add_argument("--search", default="flat", help="IndexedBank search: flat or faiss")
    parser.add_argument("--max-gib", type=float, default=1.0, help="skip shields larger than this (float16)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="seconds-long sizes, for the tests")
    parser.add_argument("--out", default=None, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tiny:
        args.ns, args.dims, args.reps = "100,1000", "64", 2
    ns = [int(float(v)) for v in args.ns.split(",") if v]
    dims = [int(v) for v in args.dims.split(",") if v]
    step = model_step_ms(args.batch, args.reps, args.tiny)
    rows_out = []
    print(f"embedded model step (UNet, {2 * args.batch} rows): {step if step is None else round(step, 1)} ms")
    print("| d | n | shield | build (s) | push (ms) | push / model step |")
    print("| --- | --- | --- | --- | --- | --- |")
    for d in dims:
        x0 = torch.randn(args.batch, d, generator=torch.Generator().manual_seed(1))
        base = SpellGuidance(scale=0.3)
        no_shield = median_ms(lambda base=base, x0=x0: base.push(x0), args.reps)
        rows_out.append(dict(d=d, n=0, kind="none", build_s=0.0, push_ms=no_shield))
        print(f"| {d} | 0 | (batch only) | - | {no_shield:.2f} | - |")
        for n in ns:
            if n * d * 2 / 2**30 > args.max_gib:
                continue
            rows = gaussian_rows(n, d, seed=n)
            for kind in args.kinds.split(","):
                if kind == "indexed" and n > args.indexed_max:
                    continue
                guide, build = guide_of(kind, rows, args.search)
                ms = median_ms(lambda guide=guide, x0=x0: guide.push(x0), args.reps)
                ratio = "-" if step is None else f"{ms / step:.2f}"
                print(f"| {d} | {n} | {kind} | {build:.1f} | {ms:.2f} | {ratio} |", flush=True)
                rows_out.append(dict(d=d, n=n, kind=kind, build_s=build, push_ms=ms))
                del guide
            del rows
    if args.out:
        meta = dict(
            machine=f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{args.threads} thread(s)",
            load_average=os.getloadavg(),
            batch=args.batch,
            model_step_ms=step,
            reps=args.reps,
            search=args.search,
        )
        with open(args.out, "w") as handle:
            json.dump(dict(meta=meta, rows=rows_out), handle, indent=1)


if __name__ == "__main__":
    main()
