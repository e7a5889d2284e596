"""Benchmark measurements: ground-truth fidelity and free-attribute diversity, and the paper's scores.

Ground truth (the embedded world's attribute checker, ``sparke.embedded.checker``):
- fidelity: fraction of images whose detected shape, colour, count (and background when the prompt states
  it) match the cluster's required attributes;
- free-attribute coverage: within each cluster, over its *matching* images, the fraction of the possible
  values of each attribute the prompts leave free (position: 9 grid cells; size: 3 classes, 2 for two-object
  scenes; background: 4 when not stated) that occur at least once; averaged over the free attributes, then
  over clusters (a cluster without a matching image scores 0);
- free-attribute entropy: the same with the entropy of the observed values divided by log(#possible) (0..1).

The paper's scores in the embedded encoder's feature space (``load_encoder``: 128-d, unit norm) with
MiniLM prompt features (384-d, unit norm): Vendi and RKE over all images; Cond-Vendi and Cond-RKE given
the prompts; Gaussian kernels with the paper's bandwidths sigma_image = 0.8, sigma_text = 0.3, fixed in
advance (never tuned on results); Cond-Vendi among matching images (``matching_cond_vendi``: only the images
the checker reads as showing every stated attribute, so an ignored word, a wrong count or an artefact does not
count as diversity); Cond-Vendi with the cosine kernel too (no bandwidth at all), as a check that a
conclusion does not hang on the bandwidth. In-batch similarity: mean pairwise cosine similarity of
the encoder features within each cluster (its 32 images in the quick run), averaged over clusters (0..1;
the paper reports it x100).

Recall and coverage against the world (``world_scores``): the PRDC recall and coverage (k = 5,
``sparke.metrics.prdc``; k = n - 1 for a cluster of n <= 5 images) of each cluster's images against the world's own renders of that cluster (the
perfect reference the embedded model gives), in the encoder's feature space, averaged over clusters.

Intervals (``replicates``): paired bootstrap over prompt clusters, each with all its seed rounds
(``sparke.metrics.bootstrap``), for fidelity, Cond-Vendi (all images and matching ones only), Vendi, the
free-attribute coverage and entropy and the recall and coverage against the world.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sparke.core import cond_rke, cond_vendi, in_batch_similarity, rke, vendi
from sparke.core.defaults import SIGMA_IMAGE, SIGMA_PROMPT  # the paper's, on unit-norm features
from sparke.metrics import prdc
from sparke.metrics.bootstrap import Draws, cond_vendi_replicates, mean_replicates, vendi_replicates

__all__ = [
    "CI_METRICS",
    "SIGMA_IMAGE",
    "SIGMA_PROMPT",
    "Evidence",
    "attribute_values",
    "feature_scores",
    "free_attribute_scores",
    "matching_cond_vendi",
    "replicates",
    "world_scores",
]

# the metrics that get a bootstrap interval and a paired difference to `none`
CI_METRICS = (
    "fidelity",
    "cond_vendi",
    "cond_vendi_matching",
    "vendi",
    "free_attribute_coverage",
    "free_attribute_entropy",
    "world_recall",
    "world_coverage",
)
WORLD_NEAREST_K = 5


def attribute_values(attribute: str, count: int) -> int:
    """How many values a free attribute can take in the embedded world."""
    from sparke.embedded import world as W

    if attribute == "position":
        return 9
    if attribute == "size":
        return len(W.SIZE_NAMES) if count == 1 else len(W.SIZE_NAMES) - 1  # two large shapes do not fit
    if attribute == "background":
        return len(W.BACKGROUND_NAMES)
    raise ValueError(f"unknown free attribute {attribute!r}")


def _value(detection: dict[str, Any], attribute: str) -> Any:
    if attribute == "position":
        return detection["objects"][0]["position"] if detection["objects"] else None
    return detection.get(attribute)


def free_attribute_scores(
    detections: Sequence[dict[str, Any]], ok: Sequence[bool], cluster: Any
) -> tuple[float, float]:
    """(coverage, normalised entropy) in [0, 1] of the cluster's free attributes over its matching images."""
    good = [d for d, m in zip(detections, ok, strict=True) if m]
    if not good:
        return 0.0, 0.0
    cov, ent = [], []
    for attribute in cluster.free:
        possible = attribute_values(attribute, cluster.count)
        counts = Counter(_value(d, attribute) for d in good)
        counts.pop(None, None)
        cov.append(min(len(counts), possible) / possible)
        p = np.asarray(list(counts.values()), float)
        p = p / p.sum() if p.sum() else p
        h = float(-(p * np.log(p)).sum()) if len(p) else 0.0
        ent.append(h / np.log(possible))
    return float(np.mean(cov)), float(np.mean(ent))


def feature_scores(
    feats: torch.Tensor, prompt_feats: torch.Tensor, groups: Sequence[int]
) -> dict[str, float]:
    """The paper's scores of image features (N, d) given prompt features (N, e); groups: cluster of each row."""
    x = feats.double()
    y = prompt_feats.double()
    groups = np.asarray(groups)
    sims = [in_batch_similarity(x[torch.from_numpy(groups == g)]) for g in np.unique(groups)]
    return {
        "cond_vendi": cond_vendi(x, y, sigma_image=SIGMA_IMAGE, sigma_prompt=SIGMA_PROMPT),
        "vendi": vendi(x, sigma=SIGMA_IMAGE),
        "cond_rke": cond_rke(x, y, sigma_image=SIGMA_IMAGE, sigma_prompt=SIGMA_PROMPT),
        "rke": rke(x, sigma=SIGMA_IMAGE),
        "cond_vendi_cosine": cond_vendi(x, y, kernel="cosine"),
        "in_batch_similarity": float(np.mean(sims)),
    }


def matching_cond_vendi(
    feats: torch.Tensor, prompt_feats: torch.Tensor, ok: Sequence[bool] | np.ndarray
) -> float | None:
    """Cond-Vendi (Gaussian, the paper's bandwidths) of the matching images only: the rows of ``feats`` (N, d)
    and ``prompt_feats`` (N, e) whose ``ok`` (N,) is true, i.e. the checker reads every attribute their
    prompt states. None when no image matches.

    When the clusters' prompts are far apart in the prompt kernel (block-diagonal), Cond-Vendi is the
    geometric mean over clusters of each cluster's own conditional Vendi, weighted by its share of the matching
    images. So a cluster with one matching image counts as one image for its prompt (a conditional Vendi of 1:
    no variety) with its small weight, and a cluster with none drops out: its loss is fidelity's to report,
    not a diversity of 0 or 1 to average in.
    """
    keep = torch.from_numpy(np.asarray(ok, bool))
    if not bool(keep.any()):
        return None
    x, y = feats[keep].double(), prompt_feats[keep].double()
    return cond_vendi(x, y, sigma_image=SIGMA_IMAGE, sigma_prompt=SIGMA_PROMPT)


def _matching_cond_vendi_replicates(ev: Evidence, item: np.ndarray) -> np.ndarray:
    """(B,) replicates of ``matching_cond_vendi``: each resample's multiset restricted to its matching images
    (NaN for a resample that drew none, which the interval drops). The prompt kernel's entropy is computed on
    the matching images of each setting, so it is not shared between settings as the plain Cond-Vendi's is."""
    keep = np.asarray(ev.ok, bool)
    out = np.full(item.shape[0], np.nan)
    if not keep.any():
        return out
    weights = item[:, keep]
    drawn = weights.sum(1) > 0
    if drawn.any():
        mask = torch.from_numpy(keep)
        reps = cond_vendi_replicates(
            ev.feats[mask], ev.prompt_feats[mask], SIGMA_IMAGE, SIGMA_PROMPT, weights[drawn]
        )
        out[drawn] = reps
    return out


@dataclass
class Evidence:
    """What one setting's intervals need, per image: match flag, cluster, round, features; per cluster: the
    free-attribute coverage and entropy."""

    ok: np.ndarray  # (N,) bool: the image matches its cluster
    cluster: np.ndarray  # (N,) cluster index
    round: np.ndarray  # (N,) seed round
    feats: torch.Tensor  # (N, d) image features
    prompt_feats: torch.Tensor  # (N, e) prompt features
    coverage: np.ndarray  # (C,) free-attribute coverage per cluster
    entropy: np.ndarray  # (C,) free-attribute entropy per cluster
    world_recall: np.ndarray | None = None  # (C,) recall against the world's renders per cluster
    world_coverage: np.ndarray | None = None  # (C,) coverage against the world's renders per cluster


def world_scores(ev: Evidence, world: Evidence) -> dict[str, float]:
    """Recall and coverage (k = 5) of each cluster's images against the world's renders of that cluster,
    averaged over clusters; the per-cluster values are kept in ``ev`` for the intervals."""
    recall, coverage = [], []
    for c in range(len(ev.coverage)):
        real, fake = world.feats[world.cluster == c], ev.feats[ev.cluster == c]
        k = min(WORLD_NEAREST_K, real.shape[0] - 1, fake.shape[0] - 1)  # tiny runs: fewer neighbours
        if k < 1:
            raise ValueError(f"cluster {c}: recall against the world needs 2 images or more of each")
        scores = prdc(real, fake, nearest_k=k)
        recall.append(scores["recall"])
        coverage.append(scores["coverage"])
    ev.world_recall, ev.world_coverage = np.asarray(recall), np.asarray(coverage)
    return {"world_recall": float(np.mean(recall)), "world_coverage": float(np.mean(coverage))}


def replicates(ev: Evidence, draws: Draws, prompt_entropy: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """(B,) bootstrap replicates of each of ``CI_METRICS`` (the same ``draws`` for every setting: paired).

    ``prompt_entropy``: replicates of the prompt kernel's entropy, shared by all settings of one prompt set.
    """
    n_clusters, n_rounds = draws.weights.shape[1:]
    ok_sum = np.zeros((n_clusters, n_rounds))
    count = np.zeros((n_clusters, n_rounds))
    np.add.at(ok_sum, (ev.cluster, ev.round), ev.ok.astype(float))
    np.add.at(count, (ev.cluster, ev.round), 1.0)
    cluster_weight = draws.weights.sum(2).astype(float)  # (B, C): how often each cluster was drawn
    cluster_weight /= cluster_weight.sum(1, keepdims=True)
    item = draws.per_item(ev.cluster, ev.round)
    world = {}
    if ev.world_recall is not None and ev.world_coverage is not None:
        world = {
            "world_recall": cluster_weight @ ev.world_recall,
            "world_coverage": cluster_weight @ ev.world_coverage,
        }
    return {
        **world,
        "fidelity": mean_replicates(ok_sum, count, draws),
        "cond_vendi": cond_vendi_replicates(
            ev.feats, ev.prompt_feats, SIGMA_IMAGE, SIGMA_PROMPT, item, prompt_entropy
        ),
        "cond_vendi_matching": _matching_cond_vendi_replicates(ev, item),
        "vendi": vendi_replicates(ev.feats, SIGMA_IMAGE, item),
        "free_attribute_coverage": cluster_weight @ ev.coverage,
        "free_attribute_entropy": cluster_weight @ ev.entropy,
    }
