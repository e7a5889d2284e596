"""One ``sparke bench --quick`` setting at a time, its images kept, then measured into a bench folder: so that
``none`` and the default are generated once per prompt set, not again beside every candidate.

    python experiments/scripts/settings.py generate 1 --label "motion 2" --scale 0.06 --set motion=2 --cache runs/cache
    python experiments/scripts/settings.py generate 1 --label none --cache runs/cache
    python experiments/scripts/settings.py measure 1 --cache runs/cache --out runs/round3-seed1
    python experiments/scripts/settings.py measure 5 --cache runs/cache --base runs/confirm-seed5 --out runs/round3-seed5
    python experiments/scripts/settings.py measure 1 --cache runs/cache --only "motion 2@0.06" --out runs/one-seed1

``generate`` runs one setting of the quick design (12 clusters x 8 prompts x 4 rounds, ``--seed``) exactly as
``sparke bench`` does (``sparke.bench.runner.generate_setting``: the same images) and writes its images to
CACHE/seedS/LABEL@SCALE.npz. ``measure`` measures every cached setting of a seed like ``run_bench`` and writes a
bench folder (results.json, replicates.npz, results.md) that ``tradeoff.py`` and ``sparke.bench.combine``
read. ``--base`` takes the ``none`` and ``sparke`` rows from an earlier bench folder of the same prompt set
instead of cached images: the bootstrap resamples depend only on the prompt set, so its rows stay paired with
the new ones (checked: a cached default measured beside such a folder gives its row to the last printed digit;
float32 feature sums differ by ~1e-7 relative between thread counts).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sparke.bench import Intervals, write_state
from sparke.bench.config import QUICK, BenchConfig
from sparke.bench.runner import Generated, Setting


def config_for(args: argparse.Namespace) -> BenchConfig:
    """The quick design at this seed (other sizes with the design options), as ``sparke bench`` runs it."""
    sizes = {"clusters": args.clusters, "prompts": args.prompts, "seeds": args.rounds, "steps": args.steps}
    return BenchConfig(
        **{**QUICK.to_dict(), "seed": args.seed, "mixture": False, "n_boot": args.n_boot, **sizes}
    )


def _method(label: str) -> str:
    return "none" if label == "none" else "sparke"


def generate(args: argparse.Namespace) -> None:
    import torch

    from sparke.bench.runner import generate_setting
    from sparke.cli.bench import parse_variants
    from sparke.embedded import world as W
    from sparke.embedded.pipeline import load_pipeline

    out = args.cache / f"seed{args.seed}" / f"{args.label}@{args.scale:g}.npz"
    if out.exists():
        print(f"{out}: cached")
        return
    method = _method(args.label)
    options = {}
    if args.set:  # checked and typed as ``sparke bench --variant`` does
        options = parse_variants([f"x:sparke:{args.scale}:{';'.join(args.set)}"])["x"].get("options", {})
    config = config_for(args)
    clusters = W.prompt_clusters(config.clusters, config.prompts, seed=args.seed)
    torch.manual_seed(args.seed)  # as run_bench does before every setting
    start = time.perf_counter()
    gen = generate_setting(
        load_pipeline("cpu"), clusters, Setting(args.label, method, args.scale, options), config
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        images=gen.images,
        cluster=gen.cluster,
        round=gen.round,
        prompts=np.array(gen.prompts),
        options=json.dumps(options),
        seconds=gen.seconds,
    )
    print(f"{out}: {time.perf_counter() - start:.0f} s")


def measure(args: argparse.Namespace) -> None:
    from sparke.bench import report
    from sparke.bench.combine import load
    from sparke.bench.runner import reference_images, setting_row, world_row
    from sparke.embedded import world as W
    from sparke.embedded.encoder import load_encoder
    from sparke.encoders.minilm import encode_minilm

    config = config_for(args)
    clusters = W.prompt_clusters(config.clusters, config.prompts, seed=args.seed)
    texts = sorted({p for cl in clusters for p in cl.prompts})
    prompt_features = dict(zip(texts, encode_minilm(texts).cpu(), strict=True))
    encoder = load_encoder("cpu")
    intervals = Intervals(config)
    first, world_evidence = world_row(reference_images(clusters, config), clusters, encoder, prompt_features)
    rows = [first]
    reps = [intervals.add(first, world_evidence)]
    if args.base is not None:
        base_rows, meta, base_reps = load(args.base)
        if any(
            meta["config"][k] != getattr(config, k)
            for k in ("seed", "clusters", "prompts", "seeds", "steps", "n_boot")
        ):
            raise SystemExit(
                f"{args.base}: another prompt set or resample count; its rows would not be paired"
            )
        kept = [(r, p) for r, p in zip(base_rows, base_reps, strict=True) if r["label"] in ("none", "sparke")]
        rows += [r for r, _ in kept]
        reps += [p for _, p in kept]
        intervals.none = next((r, p) for r, p in kept if r["label"] == "none")
    cached = sorted(
        (args.cache / f"seed{args.seed}").glob("*.npz"), key=lambda f: not f.name.startswith("none@")
    )
    for path in cached:
        label, scale = path.stem.rsplit("@", 1)
        if args.base is not None and label in ("none", "sparke"):
            continue  # the base folder's
        if args.only and label not in ("none", "sparke") and path.stem not in args.only:
            continue
        z = np.load(path)
        gen = Generated(z["images"], z["cluster"], list(z["prompts"]), float(z["seconds"]), 0.0, z["round"])
        setting = Setting(label, _method(label), float(scale), json.loads(str(z["options"])))
        row, evidence = setting_row(setting, gen, clusters, encoder, prompt_features, world_evidence)
        rows.append(row)
        reps.append(intervals.add(row, evidence))
        print(
            f"seed {args.seed} {label} {float(scale):g}: fidelity {row['fidelity']:.3f} cond-vendi {row['cond_vendi']:.3f}"
        )
    command = (
        f"python experiments/scripts/settings.py measure {args.seed} (cached settings of the quick design)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    meta = write_state(args.out, config, command, time.perf_counter(), rows, reps, intervals, complete=True)
    report.write_markdown(args.out, rows, meta, None)
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="run one setting and cache its images")
    g.add_argument("seed", type=int)
    g.add_argument("--label", required=True, help="'none', 'sparke' (the defaults) or a candidate's name")
    g.add_argument("--scale", type=float, default=0.0)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a SPARKE setting")
    g.add_argument("--cache", type=Path, required=True)
    m = sub.add_parser("measure", help="measure a seed's cached settings into a bench folder")
    m.add_argument("seed", type=int)
    m.add_argument("--cache", type=Path, required=True)
    m.add_argument(
        "--base", type=Path, help="a bench folder of the same prompt set with none and sparke rows"
    )
    m.add_argument("--out", type=Path, required=True)
    m.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="LABEL@SCALE",
        help="measure only these cached settings (repeatable; none and sparke always)",
    )
    for command in (g, m):
        command.add_argument("--clusters", type=int, default=QUICK.clusters, help="prompt clusters")
        command.add_argument("--prompts", type=int, default=QUICK.prompts, help="paraphrases per cluster")
        command.add_argument("--rounds", type=int, default=QUICK.seeds, help="images per prompt")
        command.add_argument("--steps", type=int, default=QUICK.steps, help="denoising steps")
        command.add_argument("--n-boot", type=int, default=QUICK.n_boot, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if args.command == "generate" and args.label == "none" and (args.scale or args.set):
        parser.error("none takes no scale or settings")
    generate(args) if args.command == "generate" else measure(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
