"""Benchmark outputs: the best-scale table, the goal check, results.md and the trade-off plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sparke.guidance.options import DEFAULTS

__all__ = ["FIDELITY_SLACK", "best_rows", "goal_check", "write_markdown", "plot_tradeoff"]

FIDELITY_SLACK = 0.02  # "fidelity within 2 points of none"
GOAL_GAIN = 0.15  # SPARKE's target: Cond-Vendi at least 15% above none
RECOMMENDED = ("sparke", DEFAULTS["scale"])  # the row the goal check reads: SPARKE() itself
GOAL_CLOSURE = 0.40  # ... and 40% of the free-attribute entropy gap from none to the world closed
# ground truth first (what the user asked for), then the feature-space scores, read beside the world's row
COLUMNS = (
    ("method", "method", "{}"),
    ("scale", "scale", "{:g}"),
    ("fidelity", "fidelity", "{:.3f}"),
    ("gap_closed", "gap closed", "{:.0%}"),
    ("free_attribute_entropy", "free-attr. entropy", "{:.3f}"),
    ("free_attribute_coverage", "free-attr. coverage", "{:.3f}"),
    ("cond_vendi_matching", "Cond-Vendi (matching)", "{:.2f}"),
    ("cond_vendi", "Cond-Vendi", "{:.2f}"),
    ("vendi", "Vendi", "{:.2f}"),
    ("cond_rke", "Cond-RKE", "{:.2f}"),
    ("rke", "RKE", "{:.2f}"),
    ("cond_vendi_cosine", "Cond-Vendi (cos)", "{:.3f}"),
    ("in_batch_similarity", "in-batch sim.", "{:.3f}"),
    ("world_recall", "recall (world)", "{:.3f}"),
    ("world_coverage", "coverage (world)", "{:.3f}"),
    ("sec_per_image", "s/image", "{:.3f}"),
    ("peak_mem_mb", "peak MB", "{:.0f}"),
)


def _none_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in rows if r["method"] == "none")


def _world_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in rows if r["method"] == "world"), None)


def gap_closed(row: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    """The share of the free-attribute entropy gap from ``none`` to the world that ``row`` closes (0: none,
    1: the world); None without a world row, a ``none`` row or a gap."""
    none, world = next((r for r in rows if r["method"] == "none"), None), _world_row(rows)
    keys = "free_attribute_entropy"
    if none is None or world is None or any(r.get(keys) is None for r in (row, none, world)):
        return None
    gap = world[keys] - none[keys]
    return None if abs(gap) <= 1e-9 else (row[keys] - none[keys]) / gap


def _rank(r: dict[str, Any]) -> tuple[float, float]:
    """Ground truth first: the free-attribute entropy, then Cond-Vendi."""
    entropy = r.get("free_attribute_entropy")
    return (-np.inf if entropy is None else entropy, r["cond_vendi"])


def best_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """label -> its row with the highest free-attribute entropy (the most of the gap to the world closed;
    Cond-Vendi breaks ties, and ranks rows without the entropy) among those with fidelity >= none - 2 points,
    or None when no row of that label keeps fidelity."""
    floor = _none_row(rows)["fidelity"] - FIDELITY_SLACK - 1e-9
    best: dict[str, dict[str, Any] | None] = {}
    for r in rows:
        if r["method"] == "world":
            continue
        label = r["label"]
        best.setdefault(label, None)
        if r["fidelity"] >= floor and (best[label] is None or _rank(r) > _rank(best[label])):
            best[label] = r
    return best


def _ratio_interval(value: float, reps: np.ndarray) -> list[float]:
    from sparke.metrics.bootstrap import interval

    return interval(value, reps)


def goal_check(
    rows: list[dict[str, Any]],
    replicates: list[dict[str, Any] | None] | None = None,
    fixed: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """The project's goal on these rows: SPARKE's best matched-fidelity row against none, the world and the
    baselines. With the rows' bootstrap ``replicates`` (aligned with ``rows``) the check uses intervals:

    - Cond-Vendi gain over none >= 15% and its interval above 0;
    - free-attribute entropy: at least 40% of the gap from none to the world closed;
    - fidelity: the paired difference to none has its interval's lower end >= -2 points;
    - each baseline (its best matched-fidelity row): the paired Cond-Vendi difference's interval above 0.

    ``fixed`` (label, scale): check that SPARKE row (a default chosen beforehand, as on held-out prompt sets)
    instead of the best matched-fidelity one."""
    none = _none_row(rows)
    best = best_rows(rows)
    reps = {id(r): p for r, p in zip(rows, replicates or [None] * len(rows), strict=True) if p is not None}
    picked = _checked_row(rows, best, fixed)
    if isinstance(picked, str):
        return {"met": False, "reason": picked}
    label, s = picked
    rs, rn = reps.get(id(s)), reps.get(id(none))
    paired = rs is not None and rn is not None
    gain = s["cond_vendi"] / none["cond_vendi"] - 1
    gain_ci = _ratio_interval(gain, rs["cond_vendi"] / rn["cond_vendi"] - 1) if paired else None
    fidelity_delta = s["fidelity"] - none["fidelity"]
    fidelity_ci = (s.get("delta_vs_none") or {}).get("fidelity", {}).get("ci")
    closure, closure_ci = _gap_closed(s, none, _world_row(rows), reps)
    baselines = {
        k: v for k, v in best.items() if v is not None and k != "none" and not k.startswith("sparke")
    }
    beats, beats_ci = _beats(s, baselines, reps if paired else {})  # paired: against none too
    criteria = {
        "cond_vendi_gain": bool(gain >= GOAL_GAIN and (gain_ci is None or gain_ci[0] > 0)),
        "fidelity": bool(
            fidelity_delta >= -FIDELITY_SLACK - 1e-9
            and (fidelity_ci is None or fidelity_ci[0] >= -FIDELITY_SLACK - 1e-9)
        ),
        "beats_baselines": bool(all(beats.values())),
    }
    if closure is not None:
        criteria["entropy_gap_closed"] = bool(closure >= GOAL_CLOSURE)
    return {
        "met": all(criteria.values()),
        "criteria": criteria,
        "sparke_label": label,
        "sparke_scale": s["scale"],
        "cond_vendi_gain": gain,
        "cond_vendi_gain_ci": gain_ci,
        "fidelity_drop": none["fidelity"] - s["fidelity"],
        "fidelity_delta": fidelity_delta,
        "fidelity_delta_ci": fidelity_ci,
        "entropy_gap_closed": closure,
        "entropy_gap_closed_ci": closure_ci,
        "baselines_best_cond_vendi": {k: v["cond_vendi"] for k, v in baselines.items()},
        "beats": beats,
        "beats_ci": beats_ci,
        **_beside_the_world(s, none, _world_row(rows), reps),
    }


def _beside_the_world(
    s: dict[str, Any], none: dict[str, Any], world: dict[str, Any] | None, reps: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """What the goal check reports beyond its criteria: the free-attribute coverage difference to none (with
    its paired interval), and the gains in Cond-Vendi and in Cond-Vendi among matching images next to the
    world's own gains over none (a gain means more of what the prompt leaves free only as far as the world's
    renders show one too)."""
    coverage = (s.get("delta_vs_none") or {}).get("free_attribute_coverage") or {}
    nan = float("nan")
    out: dict[str, Any] = {
        "coverage_delta": s.get("free_attribute_coverage", nan) - none.get("free_attribute_coverage", nan),
        "coverage_delta_ci": coverage.get("ci"),
        "world_cond_vendi_gain": None if world is None else world["cond_vendi"] / none["cond_vendi"] - 1,
    }
    key = "cond_vendi_matching"
    if any(r.get(key) is None for r in (s, none)):
        return {**out, "cond_vendi_matching_gain": None}
    gain = s[key] / none[key] - 1
    rs, rn = reps.get(id(s)), reps.get(id(none))
    paired = rs is not None and rn is not None and key in rs and key in rn
    world_gain = None if world is None or world.get(key) is None else world[key] / none[key] - 1
    return {
        **out,
        "cond_vendi_matching_gain": gain,
        "cond_vendi_matching_gain_ci": _ratio_interval(gain, rs[key] / rn[key] - 1) if paired else None,
        "world_cond_vendi_matching_gain": world_gain,
    }


def _checked_row(
    rows: list[dict[str, Any]], best: dict[str, Any], fixed: tuple[str, float] | None
) -> tuple[str, dict[str, Any]] | str:
    """(label, row) of the SPARKE row the goal check reads, or why there is none."""
    if fixed is not None:
        chosen = [r for r in rows if r["label"] == fixed[0] and abs(float(r["scale"]) - fixed[1]) < 1e-12]
        if not chosen:
            return f"no {fixed[0]} row at scale {fixed[1]:g}"
        return fixed[0], chosen[0]
    sparke_rows = {k: v for k, v in best.items() if k.startswith("sparke") and v is not None}
    if not sparke_rows:
        return "no SPARKE setting kept fidelity within 2 points of none"
    return max(sparke_rows.items(), key=lambda kv: _rank(kv[1]))


def _gap_closed(
    s: dict[str, Any], none: dict[str, Any], world: dict[str, Any] | None, reps: dict[int, dict[str, Any]]
) -> tuple[float | None, Any]:
    """(the fraction of the free-attribute entropy gap from none to the world that row ``s`` closes, its
    interval when all three rows have replicates); (None, None) without a world row or a gap."""
    if world is None or not all("free_attribute_entropy" in r for r in (world, none, s)):
        return None, None
    gap = world["free_attribute_entropy"] - none["free_attribute_entropy"]
    if abs(gap) <= 1e-9:
        return None, None
    closure = (s["free_attribute_entropy"] - none["free_attribute_entropy"]) / gap
    rs, rn, rw = reps.get(id(s)), reps.get(id(none)), reps.get(id(world))
    if rs is None or rn is None or rw is None:
        return closure, None
    e_s, e_n, e_w = (r["free_attribute_entropy"] for r in (rs, rn, rw))
    with np.errstate(divide="ignore", invalid="ignore"):
        return closure, _ratio_interval(closure, (e_s - e_n) / (e_w - e_n))


def _beats(
    s: dict[str, Any], baselines: dict[str, dict[str, Any]], reps: dict[int, dict[str, Any]]
) -> tuple[dict[str, bool], dict[str, Any]]:
    """Whether row ``s`` beats each baseline row on Cond-Vendi (paired interval above 0 when both have
    replicates, else the plain comparison), and those intervals."""
    beats, beats_ci = {}, {}
    rs = reps.get(id(s))
    for k, v in baselines.items():
        rb = reps.get(id(v))
        if rs is not None and rb is not None:
            diff = s["cond_vendi"] - v["cond_vendi"]
            beats_ci[k] = _ratio_interval(diff, rs["cond_vendi"] - rb["cond_vendi"])
            beats[k] = bool(beats_ci[k][0] > 0)
        else:
            beats[k] = bool(s["cond_vendi"] > v["cond_vendi"])
    return beats, beats_ci


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "method":
        return str(row.get("label", value))
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def _table(rows: list[dict[str, Any]], everything: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of ``rows``; ``everything``: the run's rows, for each row's gap closed (none to world)."""
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        r = {**r, "gap_closed": gap_closed(r, everything)}
        lines.append("| " + " | ".join(_fmt(r, k, f) for k, _, f in COLUMNS) + " |")
    return lines


def write_markdown(
    out: Path, rows: list[dict[str, Any]], meta: dict[str, Any], mixture: list[dict[str, Any]] | None
) -> None:
    """DIR/results.md: the best-scale table, the goal check, every row, and the 2-D experiment."""
    best = best_rows(rows)
    goal = meta["goal"]
    cfg = meta["config"]
    lines = [
        "# sparke bench results",
        "",
        f"Command: `{meta['command']}`  ",
        f"Prompt set: {cfg['clusters']} clusters x {cfg['prompts']} prompts x {cfg['seeds']} seeds "
        f"= {cfg['clusters'] * cfg['prompts'] * cfg['seeds']} images per setting; DPM-Solver++ "
        f"{cfg['steps']} steps, CFG {cfg['cfg']:g}; device {cfg['device']}; total wall time "
        f"{meta['wall_seconds'] / 60:.1f} min.",
        "",
        "## Best scale per method (the most of the free-attribute gap closed, fidelity within 2 points of "
        "`none`)",
        "",
    ]
    table_rows = [r for r in rows if r["method"] == "world"]
    table_rows += [r for r in best.values() if r is not None]
    lines += _table(table_rows, rows)
    missing = [k for k, v in best.items() if v is None]
    if missing:
        lines += ["", f"No scale kept fidelity within 2 points of `none` for: {', '.join(missing)}."]
    lines += [
        "",
        "`world`: renders of the world's own distribution for the same prompts (a perfect model): read each "
        "column against it. *Gap closed*: the share of the free-attribute entropy gap from `none` to the "
        "world. *Cond-Vendi (matching)*: Cond-Vendi of only the images that show every stated attribute.",
        "",
    ]
    lines += [
        "## Goal: fidelity at most 2 points lower than `none`, 40% of the free-attribute entropy gap to the "
        "world closed, Cond-Vendi +15% over `none`, above every baseline (with 95% intervals)",
        "",
    ]
    lines += goal_lines(goal)
    fixed = meta.get("goal_at_default")
    if fixed and "reason" not in fixed and fixed.get("sparke_scale") != goal.get("sparke_scale"):
        lines += ["", f"At the recommended scale chosen beforehand ({fixed['sparke_scale']:g}):", ""]
        lines += goal_lines(fixed)
    world = next((r for r in rows if r["method"] == "world"), None)
    none = _none_row(rows)
    if world is not None and round(none["cond_vendi"], 2) > round(world["cond_vendi"], 2):
        lines += [
            "",
            f"Note: `none` has a higher Cond-Vendi ({none['cond_vendi']:.2f}) than the world's own renders "
            f"({world['cond_vendi']:.2f}) at lower fidelity: in this feature space artefacts count as diversity. "
            "Read Cond-Vendi together with fidelity and the ground-truth free-attribute columns.",
        ]
    if any("ci" in r for r in rows):
        lines += _interval_lines(rows, meta)
    lines += ["", "## All settings", ""]
    lines += _table(rows, rows)
    lines += ["", "![trade-off](tradeoff.png)", ""]
    if mixture:
        lines += _mixture_lines(mixture)
    (out / "results.md").write_text("\n".join(lines))


def _interval_lines(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """results.md's section on the intervals: the table and how they were made."""
    cfg = meta["config"]
    lines = ["", "## 95% intervals and paired differences to `none`", ""]
    lines += ci_table(rows)
    iv = meta.get("intervals") or {}
    lines += [
        "",
        f"Bootstrap over the {cfg['clusters']} prompt clusters (each with its {cfg['seeds']} seed rounds), "
        f"{iv.get('n_boot', cfg.get('n_boot'))} resamples, the same for every setting (all settings share the "
        "noise, so the differences are paired); percentile intervals centred on the estimate. "
        "A difference whose interval contains 0 is not distinguishable from `none` on this prompt set.",
    ]
    if cfg["clusters"] < 8:
        lines += [
            "",
            f"**Too small to conclude**: {cfg['clusters']} clusters give unreliable intervals; use 12 or more.",
        ]
    return lines


def _mixture_lines(mixture: list[dict[str, Any]]) -> list[str]:
    """results.md's section on the 2-D Gaussian mixture experiment."""
    lines = [
        "## 2-D Gaussian mixture",
        "",
        "A conditional diffusion model on 8 modes on a circle; each of 2 prompts selects every other "
        "one (4 modes, unequal weights). Mode coverage: fraction of the prompt's modes hit by at least one sample "
        "(within 3 std); off-support: fraction of samples not within 3 std of any mode of their prompt.",
        "",
        "| method | scale | mode coverage | mode entropy | off-support | s/sample |",
        "|---|---|---|---|---|---|",
    ]
    for r in mixture:
        lines.append(
            f"| {r['method']} | {r['scale']:g} | {r['mode_coverage']:.3f} | {r['mode_entropy']:.3f} | "
            f"{r['off_support']:.3f} | {r['sec_per_sample']:.4f} |"
        )
    return lines + ["", "![mixture](mixture.png)", ""]


def _ci(value: Any, fmt: str, scale: float = 1.0) -> str:
    if not value or value[0] is None or not np.isfinite(value[0]):
        return ""
    return " [" + ", ".join(fmt.format(v * scale) for v in value) + "]"


CI_COLUMNS = (
    ("fidelity", "fidelity", "{:.3f}", "{:+.1f}", 100.0),
    ("free_attribute_entropy", "free-attr. entropy", "{:.3f}", "{:+.3f}", 1.0),
    ("free_attribute_coverage", "free-attr. coverage", "{:.3f}", "{:+.3f}", 1.0),
    ("cond_vendi_matching", "Cond-Vendi (matching)", "{:.2f}", "{:+.2f}", 1.0),
    ("cond_vendi", "Cond-Vendi", "{:.2f}", "{:+.2f}", 1.0),
    ("vendi", "Vendi", "{:.1f}", "{:+.1f}", 1.0),
    ("world_recall", "recall (world)", "{:.3f}", "{:+.3f}", 1.0),
    ("world_coverage", "coverage (world)", "{:.3f}", "{:+.3f}", 1.0),
)


def ci_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: each metric with its interval, and its paired difference to none (fidelity in points)."""
    head = ["method", "scale"]
    for _, h, _, _, scale in CI_COLUMNS:
        head += [h, f"{'Δ fidelity (points)' if scale != 1.0 else 'Δ ' + h}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.get("label", r["method"])), f"{r['scale']:g}"]
        for key, _, fmt, dfmt, scale in CI_COLUMNS:
            cells.append(_fmt(r, key, fmt) + _ci((r.get("ci") or {}).get(key), fmt))
            d = (r.get("delta_vs_none") or {}).get(key)
            if d is None or r["method"] == "none":
                cells.append("")
            else:
                cells.append(dfmt.format(d["value"] * scale) + _ci(d["ci"], dfmt, scale))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def goal_lines(goal: dict[str, Any]) -> list[str]:
    """The goal check in words, with the intervals when the run has them."""
    if "reason" in goal:
        return [f"**Not met**: {goal['reason']}."]
    verdict = "**Met**" if goal["met"] else "**Not met**"
    crit = goal.get("criteria", {})

    def mark(key: str) -> str:
        return "" if key not in crit else (" (ok)" if crit[key] else " (**no**)")

    fid = f"{goal['fidelity_delta'] * 100:+.1f}" + _ci(goal.get("fidelity_delta_ci"), "{:+.1f}", 100.0)
    lines = [
        f"{verdict}: {goal['sparke_label']} at scale {goal['sparke_scale']:g}.",
        "",
        f"- fidelity vs none: {fid} points (goal: interval's lower end >= -2){mark('fidelity')}",
    ]
    if goal.get("entropy_gap_closed") is not None:
        closed = f"{goal['entropy_gap_closed'] * 100:.0f}%" + _ci(
            goal.get("entropy_gap_closed_ci"), "{:.0f}%", 100.0
        )
        lines.append(
            f"- free-attribute entropy gap from none to the world closed: {closed} (goal >= 40%)"
            f"{mark('entropy_gap_closed')}"
        )
    if goal.get("coverage_delta") is not None and np.isfinite(goal["coverage_delta"]):
        coverage = f"{goal['coverage_delta']:+.3f}" + _ci(goal.get("coverage_delta_ci"), "{:+.3f}")
        lines.append(f"- free-attribute coverage vs none: {coverage}")
    lines += _cond_vendi_lines(goal, mark("cond_vendi_gain"))
    beats = []
    for k, v in goal["beats"].items():
        ci = _ci(goal.get("beats_ci", {}).get(k), "{:+.2f}")
        beats.append(f"{k} {'yes' if v else 'NO'}{' (Cond-Vendi difference' + ci + ')' if ci else ''}")
    text = "; ".join(beats) or "no baseline kept fidelity within 2 points"
    lines.append(
        f"- beats each baseline at matched fidelity (interval above 0): {text}{mark('beats_baselines')}"
    )
    return lines


def _cond_vendi_lines(goal: dict[str, Any], mark: str) -> list[str]:
    """The goal check's Cond-Vendi gains, each beside the world's gain over none."""

    def world(key: str) -> str:
        value = goal.get(key)
        return "" if value is None else f"; the world's: {value * 100:+.1f}%"

    gain = f"{goal['cond_vendi_gain'] * 100:+.1f}%" + _ci(goal.get("cond_vendi_gain_ci"), "{:+.1f}%", 100.0)
    lines = [
        f"- Cond-Vendi vs none: {gain}{world('world_cond_vendi_gain')} (goal >= +15%, interval above 0){mark}"
    ]
    if goal.get("cond_vendi_matching_gain") is not None:
        matching = f"{goal['cond_vendi_matching_gain'] * 100:+.1f}%" + _ci(
            goal.get("cond_vendi_matching_gain_ci"), "{:+.1f}%", 100.0
        )
        lines.append(
            f"- Cond-Vendi among matching images vs none: {matching}{world('world_cond_vendi_matching_gain')}"
        )
    return lines


PLOT_X = "free_attribute_entropy"  # the trade-off plot's x axis


def plot_tradeoff(out: Path, rows: list[dict[str, Any]]) -> None:
    """DIR/tradeoff.png: fidelity against the free-attribute entropy (the ground truth: the world's renders are
    the star to reach), one line per method through its scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    none = _none_row(rows)
    ax.axhspan(none["fidelity"] - FIDELITY_SLACK, 1.0, color="0.92", zorder=0, label="fidelity within 2 pts")
    labels = sorted({r["label"] for r in rows if r["method"] not in ("world", "none")})
    for label in labels:
        pts = sorted((r["scale"], r[PLOT_X], r["fidelity"]) for r in rows if r["label"] == label)
        xs = [none[PLOT_X]] + [p[1] for p in pts]
        ys = [none["fidelity"]] + [p[2] for p in pts]
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        _error_bars(ax, [r for r in rows if r["label"] == label], line.get_color())
        for s, x, y in pts:
            ax.annotate(
                f"{s:g}",
                (x, y),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=7,
                color=line.get_color(),
            )
    ax.plot([none[PLOT_X]], [none["fidelity"]], "ks", label="none")
    _error_bars(ax, [none], "k")
    for r in rows:
        if r["method"] == "world":
            ax.plot([r[PLOT_X]], [r["fidelity"]], "k*", markersize=10, label="world (renders)")
    ax.set_xlabel("free-attribute entropy (checker; 1: every free value equally often)")
    ax.set_ylabel("fidelity (checker)")
    ax.set_ylim(max(0.0, min(r["fidelity"] for r in rows) - 0.05), 1.01)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "tradeoff.png")
    plt.close(fig)


def _error_bars(ax: Any, rows: list[dict[str, Any]], colour: str) -> None:
    """95% intervals of the free-attribute entropy (x) and fidelity (y) as thin error bars, where the rows have them."""
    for r in rows:
        ci = r.get("ci") or {}
        if PLOT_X not in ci or "fidelity" not in ci:
            continue
        x, y = r[PLOT_X], r["fidelity"]
        xe = [[max(0.0, x - ci[PLOT_X][0])], [max(0.0, ci[PLOT_X][1] - x)]]
        ye = [[max(0.0, y - ci["fidelity"][0])], [max(0.0, ci["fidelity"][1] - y)]]
        ax.errorbar([x], [y], xerr=xe, yerr=ye, fmt="none", ecolor=colour, elinewidth=0.8, alpha=0.5)


def write_json(path: Path, value: Any) -> None:
    """``value`` as JSON at ``path``, replaced atomically: a run killed while writing keeps the last file."""
    from sparke.runs.folder import atomic_write

    atomic_write(path, json.dumps(value, indent=1, default=float).encode())


def plot_samples(out: Path, samples: dict[str, Any], clusters: list, cluster: int = 0) -> None:
    """DIR/samples.png: every image of one cluster for each setting (rows), to look at what the numbers mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(samples)
    strips = []
    for name in names:
        gen = samples[name]
        imgs = gen.images[gen.cluster == cluster][:32]
        pad = np.full((len(imgs), 34, 34, 3), 255, np.uint8)
        pad[:, 1:33, 1:33] = imgs
        strips.append(np.concatenate(list(pad), axis=1))
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    fig, ax = plt.subplots(figsize=(width / 60, len(strips) * 34 / 60 + 0.6), dpi=120)
    ax.imshow(np.concatenate(strips, axis=0))
    ax.set_yticks([34 * i + 17 for i in range(len(names))])
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xticks([])
    ax.set_title(f"cluster '{clusters[cluster].name}': all its images per setting", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "samples.png")
    plt.close(fig)
