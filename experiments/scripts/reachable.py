"""How much of the free-attribute entropy gap is the entropy estimator's sample size: the world's renders
subsampled, per cluster, to as many images as the unguided run has matching ones.

    python experiments/scripts/reachable.py CACHE/steps4 --seeds 1,2 --steps 4

The bench's free-attribute entropy is the plug-in entropy over each cluster's *matching* images: the world has
all of its images (every one matches), an unguided few-step run about half. The plug-in entropy of fewer draws
is lower on average, so part of the gap to the world is not diversity the guidance could add at equal fidelity.
Prints, per prompt set: the world's entropy, the world's at the unguided run's matching counts (mean over
``--draws`` random subsets), the unguided run's, and the share of the gap that subsampling alone explains.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sparke.bench.config import QUICK, BenchConfig
from sparke.bench.metrics import _value, free_attribute_scores
from sparke.bench.runner import reference_images
from sparke.embedded import world as W
from sparke.embedded.checker import check, matches


def value(detection: dict, attribute: str) -> object:
    """A detection's value of a free attribute, as the bench reads it (``sparke.bench.metrics``)."""
    return _value(detection, attribute)


def cluster_entropy(detections: list[dict], cluster: object) -> float:
    """The bench's normalised free-attribute entropy of one cluster over these (matching) detections."""
    return free_attribute_scores(detections, [True] * len(detections), cluster)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="CACHE/stepsN holding seedS/none@0.npz")
    parser.add_argument("--seeds", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--draws", type=int, default=200, help="random subsets per cluster")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        "| set | steps | world | world at the unguided run's matching counts | unguided | gap explained by count |"
    )
    print("|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        config = BenchConfig(
            **{**QUICK.to_dict(), "seed": seed, "mixture": False, "seeds": args.rounds, "steps": args.steps}
        )
        clusters = W.prompt_clusters(config.clusters, config.prompts, seed=seed)
        world = reference_images(clusters, config)
        world_det = [check(im) for im in world.images]
        z = np.load(args.cache / f"seed{seed}" / "none@0.npz")
        none_det = [check(im) for im in z["images"]]
        full, sub, unguided = [], [], []
        for c, cl in enumerate(clusters):
            w = [d for d, k in zip(world_det, world.cluster, strict=True) if k == c and matches(d, cl)]
            n = [d for d, k in zip(none_det, z["cluster"], strict=True) if k == c and matches(d, cl)]
            full.append(cluster_entropy(w, cl))
            unguided.append(cluster_entropy(n, cl))
            draws = [rng.choice(len(w), size=len(n), replace=False) for _ in range(args.draws)] if n else []
            sub.append(np.mean([cluster_entropy([w[i] for i in idx], cl) for idx in draws]) if draws else 0.0)
        f, s, u = np.mean(full), np.mean(sub), np.mean(unguided)
        print(f"| {seed} | {args.steps} | {f:.3f} | {s:.3f} | {u:.3f} | {100 * (f - s) / (f - u):.0f}% |")


if __name__ == "__main__":
    main()
