"""Evaluate the embedded pipeline: prompt fidelity and free-attribute diversity per cluster.

``python -m sparke.embedded.evaluate --clusters 12 --prompts 8 --images 2 --cfg 1 4``

For each prompt cluster (one scene description, many paraphrases) the pipeline draws
images; the checker reads their attributes. Fidelity = fraction matching the required
attributes (shape, colour, count, background if stated); ``shape_colour`` is the looser
quality bar (every object has the prompt's shape and colour). Diversity of the attributes the
prompts leave free is summarised per cluster as the entropy (nats) of the position cell,
size class and background, and the spread (std, pixels) of the object centre, over
matching images; the same numbers for renders of the world's own distribution give the
reference a perfectly diverse generator would reach.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sparke.embedded import world as W
from sparke.embedded.checker import check, matches


def _entropy(values: Sequence) -> float:
    if not values:
        return float("nan")
    c = np.asarray(list(Counter(values).values()), float)
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def diversity_stats(detections: list[dict], cluster: W.Cluster) -> dict[str, float]:
    """Entropies of the free categorical attributes and centre spread over ``detections``."""
    out: dict[str, float] = {}
    ok = [d for d in detections if d["objects"]]
    out["position_entropy"] = _entropy([d["objects"][0]["position"] for d in ok])
    out["size_entropy"] = _entropy([d["size"] for d in ok])
    if cluster.background is None:
        out["background_entropy"] = _entropy([d["background"] for d in ok])
    xy = np.asarray([(d["objects"][0]["cx"], d["objects"][0]["cy"]) for d in ok]) if ok else np.zeros((0, 2))
    out["centre_std_px"] = float(np.sqrt(xy.var(0).sum())) if len(xy) > 1 else float("nan")
    return out


def reference_stats(cluster: W.Cluster, n: int, seed: int = 0) -> dict[str, float]:
    """The same statistics on ``n`` renders of the world's distribution for this cluster."""
    rng = np.random.default_rng(seed)
    dets = [
        check(
            W.render(
                W.sample_scene(
                    rng, cluster.shape, cluster.colour, background=cluster.background, count=cluster.count
                )
            )
        )
        for _ in range(n)
    ]
    return diversity_stats(dets, cluster)


def in_cluster_similarity(feats: torch.Tensor) -> float:
    """Mean off-diagonal cosine similarity of L2-normalised features (N, D)."""
    n = feats.shape[0]
    if n < 2:
        return float("nan")
    s = feats @ feats.T
    return float((s.sum() - s.diagonal().sum()) / (n * (n - 1)))


@torch.no_grad()
def _encoder_similarities(encoder: Any, images: torch.Tensor, cl: W.Cluster, seed: int) -> dict[str, float]:
    """In-cluster similarity of the images' encoder features (B, 3, H, W) in [0, 1], and of as many renders of
    the cluster's world."""
    f = encoder(images.to(next(encoder.parameters()).device) * 2 - 1)
    rng = np.random.default_rng(seed)
    scenes = [
        W.sample_scene(rng, cl.shape, cl.colour, background=cl.background, count=cl.count) for _ in images
    ]
    refs = torch.as_tensor(np.stack([W.render(scene) for scene in scenes])).permute(0, 3, 1, 2).float()
    return {
        "encoder_similarity": in_cluster_similarity(f),
        "ref_encoder_similarity": in_cluster_similarity(encoder((refs / 127.5 - 1).to(f.device))),
    }


def evaluate(
    pipe,
    clusters: list[W.Cluster],
    images_per_prompt: int = 2,
    guidance_scale: float = 4.0,
    steps: int = 25,
    seed: int = 0,
    encoder=None,
) -> dict:
    """Generate for every prompt of every cluster; return fidelity and diversity summaries."""
    per_cluster = []
    all_ok: list[bool] = []
    all_sc: list[bool] = []
    for ci, cl in enumerate(clusters):
        g = torch.Generator("cpu").manual_seed(seed * 1000 + ci)
        out = pipe(
            cl.prompts,
            num_images_per_prompt=images_per_prompt,
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=g,
            output_type="pt",
        ).images
        imgs = (out.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        dets = [check(im) for im in imgs]
        ok = [matches(d, cl) for d in dets]
        # the quality bar: every object has the prompt's shape and colour (count and background aside)
        sc = [
            d["count"] > 0 and matches(d, {"shape": cl.shape, "colour": cl.colour, "count": d["count"]})
            for d in dets
        ]
        all_ok += ok
        all_sc += sc
        row = {
            "cluster": cl.name,
            "match": float(np.mean(ok)),
            "shape_colour": float(np.mean(sc)),
            "count_ok": float(np.mean([d["count"] == cl.count for d in dets])),
            **diversity_stats([d for d, m in zip(dets, ok, strict=True) if m], cl),
        }
        if cl.background is not None:
            row["background_ok"] = float(np.mean([d["background"] == cl.background for d in dets]))
        ref = reference_stats(cl, len(imgs), seed=ci)
        row.update({f"ref_{k}": v for k, v in ref.items()})
        if encoder is not None:
            row.update(_encoder_similarities(encoder, out, cl, ci))
        per_cluster.append(row)
    keys = [k for k in per_cluster[0] if k not in ("cluster",)]
    summary = {k: float(np.nanmean([r[k] for r in per_cluster if k in r])) for k in keys}
    summary["match"] = float(np.mean(all_ok))
    summary["shape_colour"] = float(np.mean(all_sc))
    summary["n_images"] = len(all_ok)
    return {"guidance_scale": guidance_scale, "steps": steps, "summary": summary, "clusters": per_cluster}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clusters", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--weights", default=None, help="folder with unet.safetensors (default: shipped)")
    ap.add_argument("--encoder", default=None, help="encoder.safetensors (default: shipped, if present)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="write the full results as JSON here")
    a = ap.parse_args(argv)
    from sparke.embedded.encoder import WEIGHTS, load_encoder
    from sparke.embedded.pipeline import load_pipeline

    pipe = load_pipeline(a.device, weights_dir=a.weights)
    enc = None
    if a.encoder or WEIGHTS.exists():
        enc = load_encoder(a.device, a.encoder)
    clusters = W.prompt_clusters(a.clusters, a.prompts, seed=a.seed)
    results = []
    for cfg in a.cfg:
        r = evaluate(pipe, clusters, a.images, cfg, a.steps, a.seed, enc)
        results.append(r)
        print(json.dumps({"cfg": cfg, **{k: round(v, 3) for k, v in r["summary"].items()}}), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
