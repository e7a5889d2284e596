"""Paired bootstrap intervals over prompt clusters and seed rounds, vectorised.

A benchmark (or a run) is a grid of *units*: prompt clusters x seed rounds. Every method generates the same
grid from the same initial noise, so the methods are paired: one resample of the units is applied to every
method, and a difference between two methods is computed inside each resample.

Resampling: draw ``C`` clusters with replacement, each with all its seed rounds (the cluster bootstrap; the
rounds of one cluster share its prompts, so they are not independent, and a cluster's value already carries
its seed noise). Resampling the rounds within each drawn cluster as well (``rounds="resample"``, two-stage)
counts the seed noise twice: on independent data its intervals are ~1.4x too wide (tested). A resample is
described by the multiplicity of each (cluster, round) unit, ``weights`` (B, C, R); every statistic is
computed from those multiplicities without copying images:

- means (fidelity): weighted sums, ``mean_replicates``;
- Vendi / Cond-Vendi: a multiset with multiplicities ``w`` has the same spectrum as ``D^1/2 K D^1/2 / sum w``
  (D = diag(w)), so each resample needs one eigendecomposition of the kernel restricted to the images it
  drew (about 63% of them): ``vendi_replicates``, ``cond_vendi_replicates``.

Intervals (``interval``, ``metric_interval``) contain their estimate and lie in the metric's range by
construction. A mean (a rate, fidelity) gets the plain percentile interval of its replicates, which a mean of
values in [0, 1] keeps in [0, 1]. Set-level scores (Vendi, Cond-Vendi) count *distinct* images, and a
resample's duplicates lower them, so their replicates sit below the estimate: their interval keeps the
replicates' percentile spread, moved so the replicates' median is the estimate, then clipped to [1, n].
Coverage near 95% is tested by simulation.

It uses numpy and torch only (kernels as in ``sparke.core``: k(a, b) = exp(-|a - b|^2 / (2 sigma^2))).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sparke.core.defaults import KERNEL, SIGMA_IMAGE, SIGMA_PROMPT

__all__ = [
    "LEVEL",
    "N_BOOT",
    "Draws",
    "cluster_intervals",
    "cond_vendi_replicates",
    "delta",
    "draw_units",
    "gaussian_kernel",
    "interval",
    "mean_replicates",
    "metric_bounds",
    "metric_interval",
    "spectral_entropy_replicates",
    "vendi_replicates",
]

N_BOOT = 500  # resamples: the 2.5% quantile is the 13th lowest of 500
LEVEL = 0.95
# means of values in [0, 1] (their replicates stay in range) and set-level scores in [1, n images]
RATE_METRICS = frozenset(
    {
        "match_rate",
        "match_shape_colour",
        "fidelity",
        "free_attribute_coverage",
        "free_attribute_entropy",
        "world_recall",
        "world_coverage",
    }
)
# set-level scores; cond_vendi_matching (matching images only) lies in [1, n matching images]
SET_METRICS = frozenset({"vendi", "cond_vendi", "cond_vendi_matching"})


@dataclass(frozen=True)
class Draws:
    """``weights[b, c, r]``: how often resample b drew unit (cluster c, round r); every resample has C*R units."""

    weights: np.ndarray  # (B, C, R) int

    @property
    def n_boot(self) -> int:
        return int(self.weights.shape[0])

    def per_item(self, cluster: np.ndarray, round_: np.ndarray) -> np.ndarray:
        """(B, N) multiplicity of each item (image) given its cluster and round index."""
        return self.weights[:, np.asarray(cluster), np.asarray(round_)]


def draw_units(
    n_clusters: int, n_rounds: int, n_boot: int = N_BOOT, seed: int = 0, rounds: str = "keep"
) -> Draws:
    """Resamples of a clusters x rounds grid: clusters with replacement; ``rounds="keep"`` keeps each drawn
    cluster's rounds (the cluster bootstrap, the default), ``"resample"`` draws them with replacement too
    (two-stage: it counts the round-to-round variance twice, ~1.4x too wide on independent data)."""
    if n_clusters < 1 or n_rounds < 1 or n_boot < 1:
        raise ValueError("n_clusters, n_rounds and n_boot must be >= 1")
    if rounds not in ("keep", "resample"):
        raise ValueError(f"rounds={rounds!r}: choose 'keep' or 'resample'")
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, n_clusters, size=(n_boot, n_clusters))  # (B, C) drawn cluster of each slot
    if rounds == "keep":
        drawn = np.broadcast_to(np.arange(n_rounds), (n_boot, n_clusters, n_rounds))
    else:
        drawn = rng.integers(0, n_rounds, size=(n_boot, n_clusters, n_rounds))  # (B, slot, R)
    weights = np.zeros((n_boot, n_clusters, n_rounds), np.int64)
    b = np.broadcast_to(np.arange(n_boot)[:, None, None], drawn.shape)
    c = np.broadcast_to(clusters[:, :, None], drawn.shape)
    np.add.at(weights, (b.ravel(), c.ravel(), drawn.ravel()), 1)
    return Draws(weights)


def interval(
    estimate: float,
    replicates: np.ndarray,
    level: float = LEVEL,
    *,
    bounds: tuple[float, float] | None = None,
    recentre: bool = True,
) -> list[float]:
    """[low, high]: the replicates' central ``level`` percentile range, which contains ``estimate`` and lies in
    ``bounds`` (the metric's range) by construction.

    ``recentre=False`` (means: rates, fidelity): the plain percentile interval, widened to the estimate in the
    rare case that it falls outside (a skewed bootstrap distribution); replicates of a mean of values in a range
    stay in it. ``recentre=True`` (set-level scores such as Vendi, whose resamples' duplicates pull the
    replicates below the estimate; paired differences): the percentile range shifted so the replicates'
    *median* lands on the estimate; the 2.5% quantile is <= the median <= the 97.5% quantile, so the
    estimate is inside. Both are then clipped to ``bounds``, which cannot lose coverage: the true value lies in
    the metric's range.
    """
    reps = np.asarray(replicates, float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0 or not np.isfinite(estimate):
        return [float("nan"), float("nan")]
    value = float(estimate)
    alpha = (1 - level) / 2
    low, high = (float(q) for q in np.quantile(reps, [alpha, 1 - alpha]))
    if recentre:
        shift = value - float(np.median(reps))
        low, high = low + shift, high + shift
    low, high = min(low, value), max(high, value)
    if bounds is not None:
        low, high = max(low, min(bounds[0], value)), min(high, max(bounds[1], value))
    return [low, high]


def metric_bounds(metric: str, n_items: int) -> tuple[float, float] | None:
    """The range of a metric: rates and cluster means in [0, 1], Vendi and Cond-Vendi in [1, n] (n images)."""
    if metric in RATE_METRICS:
        return (0.0, 1.0)
    if metric in SET_METRICS:
        return (1.0, float(max(n_items, 1)))
    return None


def metric_interval(metric: str, estimate: float, replicates: np.ndarray, n_items: int) -> list[float]:
    """``interval`` with the metric's own range and rule: set scores recentred, means plain percentile."""
    return interval(
        estimate, replicates, bounds=metric_bounds(metric, n_items), recentre=metric in SET_METRICS
    )


def delta(
    estimate_a: float,
    replicates_a: np.ndarray,
    estimate_b: float,
    replicates_b: np.ndarray,
    level: float = LEVEL,
) -> dict[str, object]:
    """Paired difference a - b: ``{"value": a - b, "ci": [low, high]}`` from replicates of the same resamples."""
    value = float(estimate_a) - float(estimate_b)
    reps = np.asarray(replicates_a, float) - np.asarray(replicates_b, float)
    return {"value": value, "ci": interval(value, reps, level)}


def mean_replicates(values: np.ndarray, counts: np.ndarray, draws: Draws) -> np.ndarray:
    """(B,) replicates of a mean over items: ``values`` (C, R) per-unit sums, ``counts`` (C, R) items per unit.

    A resample that drew no items (only units with count 0, e.g. prompts the checker cannot read) has no mean:
    NaN, which ``interval`` drops, as the estimate would be undefined on such data (not 0, which pulled the
    replicates away from the estimate).
    """
    w = draws.weights.astype(float)
    total = (w * np.asarray(counts, float)).sum((1, 2))
    sums = (w * np.asarray(values, float)).sum((1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, sums / np.where(total > 0, total, 1.0), np.nan)


def gaussian_kernel(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """exp(-|a - b|^2 / (2 sigma^2)) of the rows of x (float64)."""
    x = x.to(torch.float64)
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    return torch.exp(d2 / (-2.0 * sigma * sigma))


def spectral_entropy_replicates(
    kernel: torch.Tensor, item_weights: np.ndarray, chunk: int = 50
) -> np.ndarray:
    """(B,) von Neumann entropy of the kernel of each weighted multiset: ``item_weights`` (B, N) multiplicities.

    Each resample keeps only its drawn items (padded with zero weight to the largest count in a chunk), so a
    resample with ~63% of the items costs ~25% of a full eigendecomposition.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small eigendecompositions: one thread each is fastest (and on a busy CPU)
    try:
        return _entropies(kernel.to(torch.float64), np.asarray(item_weights, float), chunk)
    finally:
        torch.set_num_threads(threads)


REPLICATE_BYTES = 1 << 26  # float64 kernel blocks of one chunk of replicates: 64 MB, whatever n


def _entropies(k: torch.Tensor, w_all: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty(w_all.shape[0])
    # replicates per chunk: (chunk, m, m) float64 blocks, m <= n, within REPLICATE_BYTES (at n = 1,000 the
    # 50 of a chunk held 400 MB twice over; at 2,048, 1.7 GB)
    chunk = max(1, min(chunk, REPLICATE_BYTES // (8 * k.shape[0] * k.shape[0])))
    for start in range(0, w_all.shape[0], chunk):
        w = w_all[start : start + chunk]
        m = int((w > 0).sum(1).max())
        idx = np.zeros((w.shape[0], m), np.int64)
        wt = np.zeros((w.shape[0], m))
        for i, row in enumerate(w):
            nz = np.flatnonzero(row > 0)
            idx[i, : nz.size] = nz
            wt[i, : nz.size] = row[nz] / row.sum()
        idx_t = torch.from_numpy(idx)
        sub = k[idx_t[:, :, None], idx_t[:, None, :]]  # (b, m, m)
        s = torch.from_numpy(np.sqrt(wt))
        mat = sub.mul_(s[:, :, None]).mul_(s[:, None, :]).to(torch.float32)  # in place: one float64 block
        eig = torch.linalg.eigvalsh(mat).to(torch.float64).clamp_min(0)
        h = -(torch.where(eig > 0, eig * torch.log(eig.clamp_min(1e-300)), torch.zeros_like(eig))).sum(1)
        out[start : start + w.shape[0]] = h.numpy()
    return out


def vendi_replicates(x: torch.Tensor, sigma: float, item_weights: np.ndarray) -> np.ndarray:
    """(B,) Gaussian-kernel Vendi scores of the resamples of x (N, d)."""
    return np.exp(spectral_entropy_replicates(gaussian_kernel(x, sigma), item_weights))


def cond_vendi_replicates(
    x: torch.Tensor,
    y: torch.Tensor,
    sigma_image: float,
    sigma_prompt: float,
    item_weights: np.ndarray,
    prompt_entropy: np.ndarray | None = None,
) -> np.ndarray:
    """(B,) Cond-Vendi exp(H(K_x o K_y) - H(K_y)) of the resamples; ``prompt_entropy``: H(K_y) replicates
    when already known (the same prompts and draws for every method)."""
    k_y = gaussian_kernel(y, sigma_prompt)
    if prompt_entropy is None:
        prompt_entropy = spectral_entropy_replicates(k_y, item_weights)
    joint = spectral_entropy_replicates(gaussian_kernel(x, sigma_image) * k_y, item_weights)
    return np.exp(joint - prompt_entropy)


MAX_KERNEL_ROWS = 2048  # beyond this, run intervals skip the kernel scores (500 eigendecompositions each)


def cluster_intervals(
    x: torch.Tensor,
    y: torch.Tensor,
    groups: list,
    estimates: dict,
    *,
    kernel: str = KERNEL,
    sigma_image: float = SIGMA_IMAGE,
    sigma_prompt: float = SIGMA_PROMPT,
    flags: list | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, list[float]] | None:
    """95% intervals of one run's overall scores over its prompt clusters (``groups``: cluster of each image):
    ``{metric: [low, high]}`` for vendi, cond_vendi (at most ``MAX_KERNEL_ROWS`` images), match_rate and
    match_shape_colour (when ``flags``: per image (all, shape+colour) or None). None with fewer than 2 clusters.
    """
    names = list(dict.fromkeys(groups))
    if len(names) < 2 or n_boot < 1:
        return None
    index = {g: i for i, g in enumerate(names)}
    cluster = np.asarray([index[g] for g in groups])
    draws = draw_units(len(names), 1, n_boot, seed=seed)
    item = draws.per_item(cluster, np.zeros_like(cluster))
    n_items = int(x.shape[0])
    out: dict[str, list[float]] = {}

    def kern(a: torch.Tensor, sigma: float) -> torch.Tensor:
        if kernel == "cosine":
            a = torch.nn.functional.normalize(a.to(torch.float64), dim=1)
            return a @ a.T
        return gaussian_kernel(a, sigma)

    if x.shape[0] <= MAX_KERNEL_ROWS:
        k_x, k_y = kern(x, sigma_image), kern(y, sigma_prompt)
        if estimates.get("vendi") is not None:
            reps = np.exp(spectral_entropy_replicates(k_x, item))
            out["vendi"] = metric_interval("vendi", estimates["vendi"], reps, n_items)
        if estimates.get("cond_vendi") is not None:
            joint = spectral_entropy_replicates(k_x * k_y, item) - spectral_entropy_replicates(k_y, item)
            out["cond_vendi"] = metric_interval("cond_vendi", estimates["cond_vendi"], np.exp(joint), n_items)
    if flags is not None:
        known = np.asarray([f is not None for f in flags])
        for j, metric in enumerate(("match_rate", "match_shape_colour")):
            if estimates.get(metric) is None or not known.any():
                continue
            hit = np.asarray([bool(f[j]) if f is not None else False for f in flags], float)
            sums = np.zeros((len(names), 1))
            counts = np.zeros((len(names), 1))
            np.add.at(sums, (cluster, 0), hit * known)
            np.add.at(counts, (cluster, 0), known.astype(float))
            reps = mean_replicates(sums, counts, draws)
            out[metric] = metric_interval(metric, estimates[metric], reps, n_items)
    return out
