"""One setting's effect pooled over several prompt sets, with a stratified paired bootstrap interval.

One prompt set of the quick design (12 clusters) resolves a fidelity difference to about +-4 points: a
setting that costs nothing lands more than 2 points below ``none`` on about one set in six by chance. Pooling
the sets answers "what does this setting cost and gain" at the resolution of all of them.

Each set weighs the same (the sets of one design have the same size): the pooled fidelity difference is the
mean of the per-set differences (= the difference over all their images together), the pooled Cond-Vendi gain
the mean of the per-set gains, the pooled share of the free-attribute entropy gap closed the ratio of the
summed entropy gains to the summed gaps. Interval: the stratified cluster bootstrap. Each set's bench
resamples its own clusters with its own seed, so its i-th replicate is independent of the other sets' i-th:
the mean of the sets' i-th replicates is one draw of the pooled statistic (the sets must have the same number
of resamples), and the rows of one set stay paired with its ``none``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparke.metrics.bootstrap import interval

__all__ = ["pooled_comparison", "pooled_effect"]

Rows = list[dict[str, Any]]
Replicates = list[dict[str, np.ndarray] | None]


def _find(rows: Rows, label: str, scale: float | None = None) -> int | None:
    for i, row in enumerate(rows):
        if row["label"] == label and (scale is None or abs(float(row["scale"]) - scale) < 1e-12):
            return i
    return None


def _pooled(sets: list[tuple[Rows, Replicates]], label: str, scale: float) -> dict[str, Any]:
    """Estimates and (B,) replicates of the pooled fidelity difference, gain and gap closed (see below)."""
    if not sets:
        raise ValueError("pooled_effect: no prompt sets")
    parts: dict[str, list[Any]] = {k: [] for k in ("delta", "gain", "lift", "gap")}
    reps_of: dict[str, list[np.ndarray]] = {k: [] for k in parts}
    n_boot = None
    for rows, reps in sets:
        found = {"row": _find(rows, label, scale), "none": _find(rows, "none")}
        found["world"] = next((i for i, r in enumerate(rows) if r["method"] == "world"), None)
        missing = [name for name, i in found.items() if i is None or reps[i] is None]
        if missing:
            raise ValueError(
                f"pooled_effect: a prompt set lacks {missing} with replicates for {label} {scale:g}"
            )
        (row, r_row), (none, r_none), (world, r_world) = ((rows[found[k]], reps[found[k]]) for k in found)
        n_boot = n_boot or len(r_none["fidelity"])
        if len(r_none["fidelity"]) != n_boot:
            raise ValueError("pooled_effect: the prompt sets have different numbers of bootstrap resamples")
        for out, a, w, n in (
            (parts, row, world, none),
            (reps_of, r_row, r_world, r_none),
        ):  # estimates, replicates
            out["delta"].append(a["fidelity"] - n["fidelity"])
            out["gain"].append(a["cond_vendi"] / n["cond_vendi"] - 1)
            out["lift"].append(a["free_attribute_entropy"] - n["free_attribute_entropy"])
            out["gap"].append(w["free_attribute_entropy"] - n["free_attribute_entropy"])
    with np.errstate(divide="ignore", invalid="ignore"):
        closed_reps = np.sum(reps_of["lift"], 0) / np.sum(reps_of["gap"], 0)
    return {
        "delta": (float(np.mean(parts["delta"])), np.mean(reps_of["delta"], 0)),
        "gain": (float(np.mean(parts["gain"])), np.mean(reps_of["gain"], 0)),
        "closed": (float(np.sum(parts["lift"]) / np.sum(parts["gap"])), closed_reps),
        "per_set": [(100 * d, g) for d, g in zip(parts["delta"], parts["gain"], strict=True)],
    }


def pooled_effect(sets: list[tuple[Rows, Replicates]], label: str, scale: float) -> dict[str, Any]:
    """The row (label, scale) against ``none`` pooled over ``sets`` (each: a bench folder's rows and their
    bootstrap replicates, ``sparke.bench.combine.load``; every set must hold that row, ``none`` and the world).

    Returns sets (their number), fidelity_delta (points, guided - none), gain (relative Cond-Vendi gain),
    closed (share of the entropy gap closed), each with its 95% interval (``*_ci``), and per_set: the
    per-set (fidelity_delta in points, gain) estimates.
    """
    p = _pooled(sets, label, scale)
    (delta, delta_reps), (gain, gain_reps), (closed, closed_reps) = p["delta"], p["gain"], p["closed"]
    return {
        "sets": len(sets),
        "fidelity_delta": 100 * delta,
        "fidelity_delta_ci": [100 * v for v in interval(delta, delta_reps)],
        "gain": gain,
        "gain_ci": interval(gain, gain_reps),
        "closed": closed,
        "closed_ci": interval(closed, closed_reps),
        "per_set": p["per_set"],
    }


def pooled_comparison(
    sets: list[tuple[Rows, Replicates]], a: tuple[str, float], b: tuple[str, float]
) -> dict[str, Any]:
    """Row a minus row b, pooled over ``sets`` (both rows on every set, paired within each): the differences
    of their fidelity differences to none (points) and of their Cond-Vendi gains, with 95% intervals."""
    pa, pb = _pooled(sets, *a), _pooled(sets, *b)
    out: dict[str, Any] = {"sets": len(sets)}
    for key, name, unit in (("delta", "fidelity_delta", 100.0), ("gain", "gain", 1.0)):
        value = pa[key][0] - pb[key][0]
        out[name] = unit * value
        out[f"{name}_ci"] = [unit * v for v in interval(value, pa[key][1] - pb[key][1])]
    return out
