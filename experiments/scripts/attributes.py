"""Which free attribute a setting diversifies: per attribute, the normalised entropy over each cluster's matching
images (the bench's free-attribute entropy before it averages the attributes), for cached settings and the world.

    python experiments/scripts/attributes.py CACHE/steps4 --seeds 1,25 --steps 4 --labels none,sparke

CACHE/stepsN/seedS/LABEL@SCALE.npz as ``settings.py generate`` writes them (2 rounds: ``--rounds``).
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from reachable import value  # a sibling script: the bench's reading of a free attribute

from sparke.bench.config import QUICK, BenchConfig
from sparke.bench.metrics import attribute_values
from sparke.bench.runner import reference_images
from sparke.embedded import world as W
from sparke.embedded.checker import check, matches


def attribute_entropies(images: np.ndarray, cluster: np.ndarray, clusters: list) -> tuple[float, dict]:
    """(matching share, {attribute: mean normalised entropy over the clusters that leave it free})."""
    det = [check(im) for im in images]
    ok = np.array([matches(d, clusters[c]) for d, c in zip(det, cluster, strict=True)])
    ent: dict[str, list[float]] = defaultdict(list)
    for c, cl in enumerate(clusters):
        idx = [i for i in range(len(det)) if cluster[i] == c and ok[i]]
        for attribute in cl.free:
            counts = Counter(value(det[i], attribute) for i in idx)
            counts.pop(None, None)
            p = np.array(list(counts.values()), float)
            h = float(-(p / p.sum() * np.log(p / p.sum())).sum()) if p.sum() else 0.0
            ent[attribute].append(h / np.log(attribute_values(attribute, cl.count)))
    return float(ok.mean()), {a: float(np.mean(v)) for a, v in sorted(ent.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="CACHE/stepsN")
    parser.add_argument("--seeds", required=True, help="prompt sets, comma-separated")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--labels", default="", help="cached labels to read (default: all)")
    args = parser.parse_args()
    labels = [s for s in args.labels.split(",") if s]
    print("| set | setting | matching | " + " | ".join(("background", "position", "size")) + " |")
    print("|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        config = BenchConfig(
            **{**QUICK.to_dict(), "seed": seed, "mixture": False, "seeds": args.rounds, "steps": args.steps}
        )
        clusters = W.prompt_clusters(config.clusters, config.prompts, seed=seed)
        world = reference_images(clusters, config)
        rows = {"world": (world.images, world.cluster)}
        for f in sorted((args.cache / f"seed{seed}").glob("*.npz")):
            if not labels or f.stem.split("@")[0] in labels:
                z = np.load(f)
                rows[f.stem] = (z["images"], z["cluster"])
        for name, (images, cluster) in rows.items():
            share, ent = attribute_entropies(images, cluster, clusters)
            cells = " | ".join(f"{ent.get(a, float('nan')):.2f}" for a in ("background", "position", "size"))
            print(f"| {seed} | {name} | {share:.2f} | {cells} |")


if __name__ == "__main__":
    main()
