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

    python -m sparke.bench.pool OUT DIR1 DIR2 ...    # bench folders of one design, one prompt set each

writes OUT/pooled.json and OUT/pooled.md: every guided row held by all the sets, pooled, and its paired
difference to SPARKE's defaults (``sparke bench --seed 5 --seed 6 ...`` writes them itself). Folders without
bootstrap replicates (written before replicates.npz existed, or with ``--n-boot 0``) pool as estimates only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from sparke.metrics.bootstrap import interval

from . import report

__all__ = ["pool_folders", "pooled_comparison", "pooled_effect", "pooled_rows"]

Rows = list[dict[str, Any]]
Replicates = list[dict[str, np.ndarray] | None]


def _find(rows: Rows, label: str, scale: float | None = None) -> int | None:
    for i, row in enumerate(rows):
        if row["label"] == label and (scale is None or abs(float(row["scale"]) - scale) < 1e-12):
            return i
    return None


def _pooled(sets: list[tuple[Rows, Replicates]], label: str, scale: float) -> dict[str, Any]:
    """Estimates and (B,) replicates of the pooled fidelity difference, gain and gap closed (see below); the
    replicates are None when a set has none (a folder written without replicates.npz): estimates only."""
    if not sets:
        raise ValueError("pooled_effect: no prompt sets")
    parts: dict[str, list[Any]] = {k: [] for k in ("delta", "gain", "lift", "gap", "coverage", "matching")}
    reps_of: dict[str, list[Any]] = {k: [] for k in parts}
    n_boot = None
    picked = []  # per set: (row, replicates) of the row, none and the world
    for rows, reps in sets:
        found = {"row": _find(rows, label, scale), "none": _find(rows, "none")}
        found["world"] = next((i for i, r in enumerate(rows) if r["method"] == "world"), None)
        missing = [name for name, i in found.items() if i is None]
        if missing:
            raise ValueError(f"pooled_effect: a prompt set lacks {missing} for {label} {scale:g}")
        picked.append([(rows[i], reps[i]) for i in found.values()])
    paired = all(r is not None for one in picked for _, r in one)
    for (row, r_row), (none, r_none), (world, r_world) in picked:
        sources = [(parts, row, world, none)]  # estimates, then replicates
        if paired:
            n_boot = n_boot or len(r_none["fidelity"])
            if len(r_none["fidelity"]) != n_boot:
                raise ValueError(
                    "pooled_effect: the prompt sets have different numbers of bootstrap resamples"
                )
            sources.append((reps_of, r_row, r_world, r_none))
        for out, a, w, n in sources:
            out["delta"].append(a["fidelity"] - n["fidelity"])
            out["gain"].append(a["cond_vendi"] / n["cond_vendi"] - 1)
            out["lift"].append(a["free_attribute_entropy"] - n["free_attribute_entropy"])
            out["gap"].append(w["free_attribute_entropy"] - n["free_attribute_entropy"])
            out["coverage"].append(_difference(a, n, "free_attribute_coverage", relative=False))
            out["matching"].append(_difference(a, n, "cond_vendi_matching", relative=True))

    def mean_reps(key: str) -> np.ndarray | None:
        held = paired and all(v is not None for v in reps_of[key])
        return np.mean(reps_of[key], 0) if held else None

    with np.errstate(divide="ignore", invalid="ignore"):
        closed_reps = np.sum(reps_of["lift"], 0) / np.sum(reps_of["gap"], 0) if paired else None
    out: dict[str, Any] = {
        "delta": (float(np.mean(parts["delta"])), mean_reps("delta")),
        "gain": (float(np.mean(parts["gain"])), mean_reps("gain")),
        "closed": (float(np.sum(parts["lift"]) / np.sum(parts["gap"])), closed_reps),
        "per_set": [(100 * d, g) for d, g in zip(parts["delta"], parts["gain"], strict=True)],
    }
    for key in ("coverage", "matching"):  # sets run before a metric existed lack it: the pooled row too
        held = all(v is not None for v in parts[key])
        out[key] = (float(np.mean(parts[key])), mean_reps(key)) if held else None
    return out


def _interval(value: float, reps: np.ndarray | None) -> list[float] | None:
    """The 95% interval of a pooled figure, None without replicates."""
    return None if reps is None else interval(value, reps)


def _difference(row: dict[str, Any], none: dict[str, Any], key: str, relative: bool) -> Any:
    """row - none (``relative``: row / none - 1) of ``key``, on estimates or replicates; None where one lacks it."""
    if row.get(key) is None or none.get(key) is None:
        return None
    return row[key] / none[key] - 1 if relative else row[key] - none[key]


def pooled_effect(sets: list[tuple[Rows, Replicates]], label: str, scale: float) -> dict[str, Any]:
    """The row (label, scale) against ``none`` pooled over ``sets`` (each: a bench folder's rows and their
    bootstrap replicates, ``sparke.bench.combine.load``; every set must hold that row, ``none`` and the world).

    Returns sets (their number), fidelity_delta (points, guided - none), closed (share of the entropy gap
    closed), coverage_delta (free-attribute coverage, guided - none), gain (relative Cond-Vendi gain) and
    gain_matching (the same among matching images), each with its 95% interval (``*_ci``; coverage_delta and
    gain_matching None when a set lacks them), and per_set: the per-set (fidelity_delta in points, gain)
    estimates. The world's row (label "world", scale 0) gives the world's own figures.
    """
    p = _pooled(sets, label, scale)
    (delta, delta_reps), (gain, gain_reps), (closed, closed_reps) = p["delta"], p["gain"], p["closed"]
    delta_ci = _interval(delta, delta_reps)
    out = {
        "sets": len(sets),
        "fidelity_delta": 100 * delta,
        "fidelity_delta_ci": None if delta_ci is None else [100 * v for v in delta_ci],
        "closed": closed,
        "closed_ci": _interval(closed, closed_reps),
        "gain": gain,
        "gain_ci": _interval(gain, gain_reps),
        "per_set": p["per_set"],
    }
    for key, name in (("coverage", "coverage_delta"), ("matching", "gain_matching")):
        value = p[key]
        out[name] = None if value is None else value[0]
        out[f"{name}_ci"] = None if value is None else _interval(*value)
    return out


def pooled_comparison(
    sets: list[tuple[Rows, Replicates]], a: tuple[str, float], b: tuple[str, float]
) -> dict[str, Any]:
    """Row a minus row b, pooled over ``sets`` (both rows on every set, paired within each): the differences
    of their fidelity differences to none (points), of their Cond-Vendi gains and of their shares of the
    entropy gap closed (``closed``), with 95% intervals."""
    pa, pb = _pooled(sets, *a), _pooled(sets, *b)
    out: dict[str, Any] = {"sets": len(sets)}
    for key, name, unit in (
        ("delta", "fidelity_delta", 100.0),
        ("gain", "gain", 1.0),
        ("closed", "closed", 1.0),
    ):
        value = pa[key][0] - pb[key][0]
        out[name] = unit * value
        ci = None if pa[key][1] is None else _interval(value, pa[key][1] - pb[key][1])
        out[f"{name}_ci"] = None if ci is None else [unit * v for v in ci]
    return out


def pooled_rows(
    sets: list[tuple[Rows, Replicates]], default: tuple[str, float] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every guided row (not ``none`` or the world) that all ``sets`` hold, pooled (``pooled_effect``: label,
    scale and its fields), with ``versus_default`` (``pooled_comparison`` against ``default``, None: SPARKE's
    defaults, ``report.RECOMMENDED``; None for the default itself or when a set lacks it); and the "label
    scale" of the rows left out (not on every set)."""
    default = default or report.RECOMMENDED
    if not sets:
        raise ValueError("pooled_rows: no prompt sets")

    def keys(rows: Rows) -> list[tuple[str, float]]:
        return [(r["label"], float(r["scale"])) for r in rows if r["method"] not in ("none", "world")]

    held = [set(keys(rows)) for rows, _ in sets]
    everywhere = set.intersection(*held)
    order = list(dict.fromkeys(k for rows, _ in sets for k in keys(rows)))
    out = []
    for key in (k for k in order if k in everywhere):
        row: dict[str, Any] = {"label": key[0], "scale": key[1], **pooled_effect(sets, *key)}
        row["versus_default"] = (
            pooled_comparison(sets, key, default) if key != default and default in everywhere else None
        )
        out.append(row)
    return out, [f"{label} {scale:g}" for label, scale in order if (label, scale) not in everywhere]


def _with_ci(value: float, ci: list[float] | None, fmt: str, scale: float = 1.0) -> str:
    if ci is None or not all(v is not None and np.isfinite(v) for v in ci):
        return fmt.format(value * scale)
    low, high = ci
    return f"{fmt.format(value * scale)} [{fmt.format(low * scale)}, {fmt.format(high * scale)}]"


def pooled_markdown(
    rows: list[dict[str, Any]], seeds: list[int], left_out: list[str], world: dict[str, Any] | None = None
) -> list[str]:
    """``pooled_rows``' rows as a markdown table (lines), under the world's own row (``pooled_effect`` of the
    "world" row) when given: each column is read against it."""
    lines = [
        f"# Pooled over {len(seeds)} prompt sets (seeds {', '.join(map(str, seeds))})",
        "",
        "Each set weighs the same; 95% intervals from the stratified paired cluster bootstrap "
        "(`sparke.bench.pool`). Gap closed: share of the free-attribute entropy gap from `none` to the world; "
        "Δ coverage: free-attribute coverage minus `none`'s; gains: Cond-Vendi (all images, then matching "
        "images only) relative to `none`, read beside the world's; the last two columns: the row minus "
        "SPARKE's defaults, paired.",
        "",
        "| setting | scale | Δ fidelity (points) | entropy gap closed | Δ coverage | Cond-Vendi gain "
        "| Cond-Vendi gain (matching) | gain - default's | Δ fidelity - default's | Δ fidelity per set |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ([] if world is None else [{**world, "label": "world", "versus_default": None}]) + rows:
        v = r["versus_default"]
        versus = (
            ["-", "-"]
            if v is None
            else [
                _with_ci(v["gain"], v["gain_ci"], "{:+.1f}%", 100),
                _with_ci(v["fidelity_delta"], v["fidelity_delta_ci"], "{:+.1f}"),
            ]
        )
        per_set = " / ".join(f"{d:+.1f}" for d, _ in r["per_set"])
        cells = [
            r["label"],
            "" if r["label"] == "world" else f"{r['scale']:g}",
            _with_ci(r["fidelity_delta"], r["fidelity_delta_ci"], "{:+.1f}"),
            _with_ci(r["closed"], r["closed_ci"], "{:.0f}%", 100),
            _optional(r.get("coverage_delta"), r.get("coverage_delta_ci"), "{:+.3f}", 1),
            _with_ci(r["gain"], r["gain_ci"], "{:+.1f}%", 100),
            _optional(r.get("gain_matching"), r.get("gain_matching_ci"), "{:+.1f}%", 100),
            *versus,
            per_set,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if left_out:
        lines += ["", f"Not on every set, left out: {', '.join(left_out)}."]
    if any(r["fidelity_delta_ci"] is None for r in rows):
        lines += ["", "No intervals: a set has no bootstrap replicates (replicates.npz); estimates only."]
    return lines + [""]


def _optional(value: float | None, ci: list[float] | None, fmt: str, scale: float) -> str:
    return "-" if value is None else _with_ci(value, ci, fmt, scale)


# a pooled table needs sets of one design; only the prompt set (the seed) may differ
SAME_DESIGN = ("clusters", "prompts", "seeds", "steps", "cfg", "n_boot")


def pool_folders(out: str | Path, folders: list[str | Path]) -> list[dict[str, Any]]:
    """Pool the bench folders (one prompt set each, one design) into OUT/pooled.json and OUT/pooled.md;
    return the pooled rows."""
    from .combine import load

    if not folders:
        raise ValueError("pool_folders: no bench folders")
    sets, seeds, first = [], [], None
    for folder in map(Path, folders):
        if not (folder / "results.json").is_file():
            raise ValueError(f"{folder}: no results.json (not a sparke bench folder)")
        rows, meta, reps = load(folder)
        config = meta["config"]
        first = first or (folder, config)
        differ = [k for k in SAME_DESIGN if config.get(k) != first[1].get(k)]
        if differ:
            raise ValueError(f"{folder}: differs from {first[0]} in {differ}; pooled sets need one design")
        if config.get("seed") in seeds:
            raise ValueError(f"{folder}: prompt set seed {config.get('seed')} is already pooled")
        seeds.append(config.get("seed"))
        sets.append((rows, reps))
    rows, left_out = pooled_rows(sets)
    world = pooled_effect(sets, "world", 0.0)  # the reference every column is read against
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(
        out / "pooled.json",
        {
            "seeds": seeds,
            "folders": [str(f) for f in folders],
            "rows": rows,
            "left_out": left_out,
            "world": world,
        },
    )
    from sparke.runs.folder import atomic_write

    atomic_write(out / "pooled.md", "\n".join(pooled_markdown(rows, seeds, left_out, world)).encode())
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print(__doc__)
        return 2
    try:
        pool_folders(Path(args[0]), [Path(a) for a in args[1:]])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print((Path(args[0]) / "pooled.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
