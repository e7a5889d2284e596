"""The free-attribute gap closed at equal counts (rarefaction): each cluster's entropy compared over as many
matching images for the setting, ``none`` and the world, so that a setting's fidelity does not count as
diversity.

    python experiments/scripts/rarefied.py CACHE/steps4 --seeds 25,26,27,28 --steps 4 --labels sparke@0.03

The bench's free-attribute entropy is a plug-in entropy over each cluster's matching images, and the plug-in
entropy of fewer draws is lower on average (``reachable.py``): a setting that matches its prompt more often gains
entropy from the count alone, and the world (every image matching) sets a gap that guidance at equal fidelity
cannot close. Here, per cluster c and setting s, k = min(matching images of s, of none) (clusters with k < 2 are
left out: one draw has no entropy); s, none and the world are each scored by their expected plug-in entropy over
k matching images drawn without replacement (``--draws`` random subsets), and the gap closed is
sum_c (H_s - H_none) / sum_c (H_world - H_none), pooled over the prompt sets. Interval: 95%, resampling the
clusters within each set (the same clusters for s, none and the world: paired).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from reachable import cluster_entropy  # noqa: E402  (a sibling script)

from sparke.bench.config import QUICK, BenchConfig
from sparke.bench.runner import reference_images
from sparke.embedded import world as W
from sparke.embedded.checker import check, matches


def matching_by_cluster(images: np.ndarray, cluster: np.ndarray, clusters: list) -> list[list[dict]]:
    det = [check(im) for im in images]
    out: list[list[dict]] = [[] for _ in clusters]
    for d, c in zip(det, cluster, strict=True):
        if matches(d, clusters[c]):
            out[c].append(d)
    return out


def rarefied(detections: list[dict], cl: object, k: int, draws: int, rng: np.random.Generator) -> float:
    """The expected plug-in entropy (normalised, the bench's) of k of these detections, drawn without replacement."""
    if len(detections) == k:
        return cluster_entropy(detections, cl)
    subsets = (rng.choice(len(detections), size=k, replace=False) for _ in range(draws))
    return float(np.mean([cluster_entropy([detections[i] for i in idx], cl) for idx in subsets]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path, help="CACHE/stepsN holding seedS/LABEL@SCALE.npz")
    parser.add_argument("--seeds", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--labels", required=True, help="LABEL@SCALE of the cached settings, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--boot", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = args.labels.split(",")
    per_set: dict[str, list[np.ndarray]] = {
        label: [] for label in labels
    }  # (clusters, 2): H_s - H_n, H_w - H_n
    for seed in (int(s) for s in args.seeds.split(",")):
        config = BenchConfig(
            **{**QUICK.to_dict(), "seed": seed, "mixture": False, "seeds": args.rounds, "steps": args.steps}
        )
        clusters = W.prompt_clusters(config.clusters, config.prompts, seed=seed)
        world = reference_images(clusters, config)
        w = matching_by_cluster(world.images, world.cluster, clusters)
        z = np.load(args.cache / f"seed{seed}" / "none@0.npz")
        n = matching_by_cluster(z["images"], z["cluster"], clusters)
        for label in labels:
            z = np.load(args.cache / f"seed{seed}" / f"{label}.npz")
            s = matching_by_cluster(z["images"], z["cluster"], clusters)
            rows = []
            for c, cl in enumerate(clusters):
                k = min(len(s[c]), len(n[c]))
                if k < 2:
                    continue
                hs, hn, hw = (rarefied(x[c], cl, k, args.draws, rng) for x in (s, n, w))
                rows.append((hs - hn, hw - hn))
            per_set[label].append(np.asarray(rows))
    print("| setting | sets | gap closed at equal counts | clusters kept |")
    print("|---|---|---|---|")
    for label in labels:
        sets = per_set[label]

        def closed(parts: list[np.ndarray]) -> float:
            # each set weighs the same: the mean over sets of the per-set sums' ratio parts
            num = np.mean([p[:, 0].mean() for p in parts])
            den = np.mean([p[:, 1].mean() for p in parts])
            return float(num / den)

        boot = [closed([p[rng.integers(0, len(p), len(p))] for p in sets]) for _ in range(args.boot)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        kept = "+".join(str(len(p)) for p in sets)
        print(
            f"| {label} | {len(sets)} | {100 * closed(sets):.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%] | {kept} |"
        )


if __name__ == "__main__":
    main()
