"""Round eleven: every candidate at each step count, pooled over prompt sets, judged by the ground truth.

    python experiments/scripts/steps.py experiments/runs/r11-choice-* --choose --png experiments/plots/frontier-r11-choice.png
    python experiments/scripts/steps.py experiments/runs/r11-confirm-* --png experiments/plots/frontier-r11-confirm.png

Folders: ``settings.py measure`` output (one prompt set and step count each; the step count is read from
meta.json). For each step count, every guided row held by all its prompt sets is pooled (``sparke.bench.pool``:
each set weighs the same, paired 95% intervals) and printed with its paired difference to today's default
(``sparke`` at 0.05; ``--default LABEL@SCALE``: another). ``--choose`` applies round eleven's choice rule (experiments/results/
cpu-2core-2026-12-06-steps.md); ``--png`` draws the frontier: gap closed against the fidelity difference, one
panel per step count.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparke.bench.combine import load
from sparke.bench.pool import pooled_effect, pooled_rows

DEFAULT = ("sparke", 0.05)
BOUND = {4: -3.0, 8: -3.0, 10: -2.0}  # fidelity points: the eligibility bound of the rule, per step count


def pooled_by_steps(
    folders: list[Path], default: tuple[str, float] = DEFAULT
) -> dict[int, list[dict[str, Any]]]:
    """steps -> pooled rows (``pooled_rows``) over the prompt sets run at that step count, each with its paired
    difference to ``default`` (label, scale)."""
    sets: dict[int, list[Any]] = {}
    for folder in folders:
        rows, meta, reps = load(folder)
        sets.setdefault(int(meta["config"]["steps"]), []).append((rows, reps))
    out = {}
    for n in sorted(sets):
        world = {
            "label": "world",
            "scale": 0.0,
            "versus_default": None,
            **pooled_effect(sets[n], "world", 0.0),
        }
        out[n] = [world, *pooled_rows(sets[n], default=default)[0]]
    return out


def _ci(value: float | None, ci: list[float] | None, fmt: str, unit: float = 1.0) -> str:
    if value is None:
        return "-"
    text = fmt.format(unit * value)
    return text if ci is None else f"{text} [{fmt.format(unit * ci[0])}, {fmt.format(unit * ci[1])}]"


def table(by_steps: dict[int, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| steps | setting | scale | sets | Δ fidelity (points) | gap closed | Δ coverage | Cond-Vendi gain "
        "| gain (matching) | Δ fidelity - default's | gap - default's |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, rows in by_steps.items():
        for r in rows:
            v = r["versus_default"] or {}
            lines.append(
                f"| {n} | {r['label']} | {r['scale']:g} | {r['sets']} "
                f"| {_ci(r['fidelity_delta'], r['fidelity_delta_ci'], '{:+.1f}')} "
                f"| {_ci(r['closed'], r['closed_ci'], '{:.0f}%', 100)} "
                f"| {_ci(r['coverage_delta'], r['coverage_delta_ci'], '{:+.3f}')} "
                f"| {_ci(r['gain'], r['gain_ci'], '{:+.1f}%', 100)} "
                f"| {_ci(r['gain_matching'], r['gain_matching_ci'], '{:+.1f}%', 100)} "
                f"| {_ci(v.get('fidelity_delta'), v.get('fidelity_delta_ci'), '{:+.1f}')} "
                f"| {_ci(v.get('closed'), v.get('closed_ci'), '{:+.0f}', 100)} |"
            )
    return lines


def choose(by_steps: dict[int, list[dict[str, Any]]]) -> list[str]:
    """Round eleven's rule: eligible at N when the pooled fidelity difference >= BOUND[N]; chosen: eligible at
    the most step counts, then the largest mean share of the gap closed over the step counts."""
    settings: dict[tuple[str, float], dict[int, dict[str, Any]]] = {}
    for n, rows in by_steps.items():
        for r in rows:
            settings.setdefault((r["label"], r["scale"]), {})[n] = r
    ranked = []
    for key, at in settings.items():
        if key[0] == "world" or set(at) != set(by_steps):
            continue  # not run at every step count
        eligible = [n for n in at if at[n]["fidelity_delta"] >= BOUND.get(n, -2.0)]
        mean_closed = sum(at[n]["closed"] for n in at) / len(at)
        ranked.append((len(eligible), mean_closed, key, eligible))
    ranked.sort(key=lambda t: (-t[0], -t[1]))
    lines = [
        "| rank | setting | scale | eligible at (steps) | mean gap closed |",
        "|---|---|---|---|---|",
    ]
    for i, (_, mean_closed, (label, scale), eligible) in enumerate(ranked, 1):
        lines.append(
            f"| {i} | {label} | {scale:g} | {', '.join(map(str, sorted(eligible))) or '-'} | {100 * mean_closed:.0f}% |"
        )
    return lines


def plot(by_steps: dict[int, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(
        dict.fromkeys(f"{r['label']} {r['scale']:g}" for rows in by_steps.values() for r in rows[1:])
    )
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(labels)}
    fig, axes = plt.subplots(1, len(by_steps), figsize=(4.6 * len(by_steps), 4.4), squeeze=False, sharey=True)
    for ax, (n, rows) in zip(axes.flat, by_steps.items(), strict=True):
        ax.axvspan(BOUND.get(n, -2.0), 50, color="0.93", zorder=0)
        for r in rows[1:]:  # the world (first) is off the plot: +40 to +60 points
            name = f"{r['label']} {r['scale']:g}"
            x, y = r["fidelity_delta"], 100 * r["closed"]
            xe = (
                None
                if r["fidelity_delta_ci"] is None
                else [[x - r["fidelity_delta_ci"][0]], [r["fidelity_delta_ci"][1] - x]]
            )
            ye = (
                None
                if r["closed_ci"] is None
                else [[y - 100 * r["closed_ci"][0]], [100 * r["closed_ci"][1] - y]]
            )
            ax.errorbar(
                x, y, xerr=xe, yerr=ye, fmt="o", color=colours[name], alpha=0.9, lw=1, ms=6, label=name
            )
        lo = min(-6.0, *(r["fidelity_delta"] - 2 for r in rows[1:]))
        ax.set_xlim(lo, max(3.0, *(r["fidelity_delta"] + 2 for r in rows[1:])))
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_title(f"{n} steps")
        ax.set_xlabel(f"Δ fidelity vs none (points; shaded: >= {BOUND.get(n, -2.0):g})")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("free-attribute entropy gap closed (%)")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=min(len(names), 7))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="settings.py measure folders")
    parser.add_argument("--choose", action="store_true", help="apply round eleven's choice rule")
    parser.add_argument("--png", type=Path, help="write the frontier plot here")
    parser.add_argument(
        "--default", default="sparke@0.05", help="LABEL@SCALE the last two columns compare against"
    )
    parser.add_argument("--title", default="gap closed against fidelity, pooled", help="the plot's title")
    args = parser.parse_args(argv)
    label, scale = args.default.rsplit("@", 1)
    by_steps = pooled_by_steps(args.folders, (label, float(scale)))
    print("\n".join(table(by_steps)))
    if args.choose:
        print("\n" + "\n".join(choose(by_steps)))
    if args.png is not None:
        plot(by_steps, args.png, args.title)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
