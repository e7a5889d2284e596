"""Accuracy of the scalable approximations against the exact quantities (issue 6; docs/scale.md).

    python benchmarks/scale_quality.py [--part indexed,projection,rff] [--out FILE]

- indexed: cosine of ``IndexedBank.direction`` to the exact direction, per query row, against ``neighbors``
  (``samples`` = 3 * ``neighbors``, the default) and n, for clustered unit features (d = 256, prompts 32 columns, sigma 0.8 / 0.3) in two
  regimes: 100 prompt clusters (few rows per prompt) and 10 (thousands of rows per prompt, flat weights);
  and the kept normaliser's ratio to the exact pair sum;
- projection: cosine of the fast exact path with ``project_dim`` (kernel weights from a random projection)
  to the unprojected direction, d = 16,384;
- rff: relative error of the RFF metrics against the exact scores on the same rows, over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import clustered  # noqa: E402

import sparke  # noqa: E402
from sparke import metrics  # noqa: E402
from sparke.core import order2 as fast  # noqa: E402
from sparke.core.direction import bank_pair_sum  # noqa: E402
from sparke.core.spec import KernelSpec  # noqa: E402

SX, SY = 0.8, 0.3
SPEC = KernelSpec(kernel="gaussian", sigma_image=SX, sigma_prompt=SY)
QUERIES = 16


def exact_rows(qx, qy, bx, by):
    """Exact direction of each query row alone against the bank (float32 fast path, 1 row at a time)."""
    return torch.cat(
        [
            fast.order2_direction(
                qx[b : b + 1],
                qy[b : b + 1],
                bx,
                by,
                spec=SPEC,
                pair_sum=1.0,
            )
            for b in range(qx.shape[0])
        ]
    )


def indexed_part(ns, ks, d, out):
    for prompts in (100, 10):
        for n in ns:
            x, y = clustered(n, d, 32, prompts=prompts, seed=1, centres_seed=7)
            qx, qy = clustered(QUERIES, d, 32, prompts=prompts, seed=2, centres_seed=7)
            exact = exact_rows(qx, qy, x, y)
            t0 = time.perf_counter()
            bank = sparke.IndexedBank(d, 32, sigma_image=SX, sigma_prompt=SY)
            bank.add(x, y)
            build = time.perf_counter() - t0
            ratio = None
            if n <= 20_000:
                ratio = (
                    bank.pair_sum()
                    / bank_pair_sum(x, y, kernel="gaussian", sigma_image=SX, sigma_prompt=SY)[0]
                )
            for k in ks:
                bank.neighbors, bank.samples = k, 3 * k  # the default samples = 3 * neighbors
                got = torch.cat([bank.direction(qx[b : b + 1], qy[b : b + 1]) for b in range(QUERIES)])
                cos = torch.nn.functional.cosine_similarity(got.double(), exact.double(), dim=1)
                row = {
                    "prompts": prompts,
                    "n": n,
                    "neighbors": k,
                    "cos_mean": float(cos.mean()),
                    "cos_min": float(cos.min()),
                    "pair_sum_ratio_at_256": ratio,
                    "build_s": build,
                }
                out.append(row)
                print(
                    f"prompts={prompts:>3} n={n:>7} neighbors={k:>5}: cosine mean {row['cos_mean']:.4f} "
                    f"min {row['cos_min']:.4f}" + ("" if ratio is None else f"  pair-sum ratio {ratio:.3f}")
                )


def projection_part(n, d, dims, out):
    x, y = clustered(n, d, 32, prompts=100, seed=1, centres_seed=7)
    qx, qy = clustered(QUERIES, d, 32, prompts=100, seed=2, centres_seed=7)
    bank = sparke.Bank()
    bank.add(x, y)
    exact = torch.cat(
        [
            fast.bank_direction(bank, qx[b : b + 1], qy[b : b + 1], sigma_image=SX, sigma_prompt=SY)
            for b in range(QUERIES)
        ]
    )
    for p in dims:
        got = torch.cat(
            [
                fast.bank_direction(
                    bank, qx[b : b + 1], qy[b : b + 1], sigma_image=SX, sigma_prompt=SY, project_dim=p
                )
                for b in range(QUERIES)
            ]
        )
        cos = torch.nn.functional.cosine_similarity(got.double(), exact.double(), dim=1)
        out.append(
            {"n": n, "d": d, "project_dim": p, "cos_mean": float(cos.mean()), "cos_min": float(cos.min())}
        )
        print(f"projection d={d} n={n} project_dim={p:>5}: cosine mean {cos.mean():.4f} min {cos.min():.4f}")


def rff_part(n, d, seeds, out):
    x, y = clustered(n, d, 32, prompts=20, seed=3, centres_seed=8)
    cases = [
        (metrics.RFFRKE, sparke.rke(x, sigma=SX), dict(sigma=SX), (1024, 4096, 16384), False),
        (
            metrics.RFFCondRKE,
            sparke.cond_rke(x, y, sigma_image=SX, sigma_prompt=SY),
            dict(sigma_image=SX, sigma_prompt=SY),
            (1024, 4096, 16384),
            True,
        ),
        (metrics.RFFVendi, sparke.vendi(x, sigma=SX), dict(sigma=SX), (256, 512, 1024), False),
        (
            metrics.RFFCondVendi,
            sparke.cond_vendi(x, y, sigma_image=SX, sigma_prompt=SY),
            dict(sigma_image=SX, sigma_prompt=SY),
            (256, 512, 1024),
            True,
        ),
    ]
    for cls, exact, kw, features, conditional in cases:
        for f in features:
            errs = []
            for s in range(seeds):
                m = cls(**kw, features=f, seed=s)
                m.update(x, y if conditional else None)
                errs.append(m.compute() / exact - 1)
            row = {
                "metric": cls.__name__,
                "n": n,
                "features": f,
                "exact": exact,
                "rel_err_mean": statistics.mean(errs),
                "rel_err_abs_mean": statistics.mean(abs(v) for v in errs),
            }
            out.append(row)
            print(
                f"{cls.__name__:<13} n={n} features={f:>6}: exact {exact:9.2f}, relative error mean {row['rel_err_mean']:+.3f}"
                f" (|err| {row['rel_err_abs_mean']:.3f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", default="indexed,projection,rff")
    parser.add_argument("--ns", default="1000,10000,100000")
    parser.add_argument("--ks", default="16,64,256,1024")
    parser.add_argument("--rff-n", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict = {"indexed": [], "projection": [], "rff": []}
    parts = args.part.split(",")
    if "indexed" in parts:
        indexed_part(
            [int(v) for v in args.ns.split(",")],
            [int(v) for v in args.ks.split(",")],
            256,
            results["indexed"],
        )
    if "projection" in parts:
        projection_part(5000, 16_384, (128, 256, 1024), results["projection"])
    if "rff" in parts:
        rff_part(args.rff_n, 256, args.seeds, results["rff"])
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
