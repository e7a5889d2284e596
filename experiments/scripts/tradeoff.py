"""Issue 20's candidates against today's default and the paper's latent step: for every SPARKE row of one or
more ``sparke bench`` folders (one prompt set each), the Cond-Vendi gain over ``none``, the fidelity cost in
points and the share of the free-attribute entropy gap to the world closed, each with its paired 95% bootstrap
interval (``sparke.bench.report.goal_check`` at that row), and the issue's bar: fidelity cost < 2 points by
point estimate, Cond-Vendi >= +15%, >= 30% of the entropy gap closed. Prints a markdown table; draws the
trade-off plot (one panel per prompt set, Cond-Vendi gain against fidelity cost, a line through each setting's
scales).

    python experiments/scripts/tradeoff.py runs/choice-seed1 runs/choice-seed2 --choose
    python experiments/scripts/tradeoff.py runs/choice-seed1 runs/choice-seed2 runs/confirm-seed5 ... \
        --note 1=choice --note 5=confirmation --png experiments/plots/tradeoff-round2.png

``--choose`` ranks the settings by the second round's rule (experiments/default-choice.md, issue 20): the (prompt set,
criterion) pairs met, ties broken by the smallest Cond-Vendi gain. ``--pool`` adds each setting that every given
prompt set holds, pooled over them (``sparke.bench.pool``: the stratified paired bootstrap), and its paired
difference to the default.

Folders of one prompt set (the same ``--seed`` and sizes) are merged: their rows share the bootstrap resamples.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparke.bench.combine import load
from sparke.bench.pool import pooled_markdown, pooled_rows
from sparke.bench.report import goal_check

BAR_COST, BAR_GAIN, BAR_CLOSED = 2.0, 0.15, 0.30  # issue 20: points, relative gain, share of the gap
NAMES = {"sparke": "sparke (x0 centred: issue 13's default)", "latent": "latent (the paper's step)"}


def prompt_set(config: dict[str, Any]) -> str:
    """A run's prompt set and design: "5" for the seed alone, "5 (12x4x2)" with clusters x prompts x rounds."""
    sizes = [config.get(k) for k in ("clusters", "prompts", "seeds")]
    return f"{config['seed']}" + (f" ({'x'.join(map(str, sizes))})" if all(sizes) else "")


def paired_runs(folders: list[Path]) -> dict[str, tuple[list[dict[str, Any]], list[Any]]]:
    """prompt set -> (rows, bootstrap replicates) of all the folders run on it (same seed and sizes, so the
    same resamples: their rows stay paired), one row per (label, scale), the first folder's first."""
    runs: dict[str, tuple[list[dict[str, Any]], list[Any]]] = {}
    for folder in folders:
        rows, meta, reps = load(folder)
        have_rows, have_reps = runs.setdefault(prompt_set(meta["config"]), ([], []))
        seen = {(r["label"], float(r["scale"])) for r in have_rows}
        for row, rep in zip(rows, reps, strict=True):
            if (row["label"], float(row["scale"])) not in seen:
                have_rows.append(row)
                have_reps.append(rep)
    return runs


def candidate_rows(seed: str, rows: list[dict[str, Any]], reps: list[Any]) -> list[dict[str, Any]]:
    """One dict per SPARKE row of a prompt set: seed, label, scale, the three figures and their intervals."""
    out = []
    for row in rows:
        if row["method"] != "sparke":
            continue
        g = goal_check(rows, reps, fixed=(row["label"], float(row["scale"])))
        cost = -100 * g["fidelity_delta"]
        ci = g["fidelity_delta_ci"]
        closed = g["entropy_gap_closed"]
        out.append(
            dict(
                seed=seed,
                label=row["label"],
                scale=float(row["scale"]),
                gain=g["cond_vendi_gain"],
                gain_ci=g["cond_vendi_gain_ci"],
                cost=cost,
                cost_ci=None if ci is None else [-100 * ci[1], -100 * ci[0]],
                closed=closed,
                closed_ci=g["entropy_gap_closed_ci"],
                meets=cost < BAR_COST and g["cond_vendi_gain"] >= BAR_GAIN and (closed or 0) >= BAR_CLOSED,
            )
        )
    return sorted(out, key=lambda r: (r["label"] != "sparke", r["label"] != "latent", r["label"], r["scale"]))


def _with_ci(value: float | None, ci: list[float] | None, fmt: str, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    text = fmt.format(value * scale)
    return text if ci is None else f"{text} [{fmt.format(ci[0] * scale)}, {fmt.format(ci[1] * scale)}]"


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| seed | setting | scale | Cond-Vendi gain | Δ fidelity (points) | entropy gap closed | issue bar |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['label']} | {r['scale']:g} | {_with_ci(r['gain'], r['gain_ci'], '{:+.1f}%', 100)} "
            f"| {_with_ci(-r['cost'], None if r['cost_ci'] is None else [-r['cost_ci'][1], -r['cost_ci'][0]], '{:+.1f}')} | {_with_ci(r['closed'], r['closed_ci'], '{:.0f}%', 100)} "
            f"| {'met' if r['meets'] else 'no'} |"
        )
    return lines


def criteria_met(r: dict[str, Any]) -> int:
    """How many of the issue's three criteria a row meets (point estimates)."""
    return (r["cost"] < BAR_COST) + (r["gain"] >= BAR_GAIN) + ((r["closed"] or 0) >= BAR_CLOSED)


def choice(rows: list[dict[str, Any]]) -> list[str]:
    """The second round's rule, fixed before its results: per (setting, scale), the (prompt set, criterion)
    pairs met over the given sets; most first, ties broken by the smallest Cond-Vendi gain over the sets."""
    settings: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        settings.setdefault((r["label"], r["scale"]), []).append(r)
    ranked = sorted(
        settings.items(),
        key=lambda kv: (-sum(map(criteria_met, kv[1])), -min(r["gain"] for r in kv[1])),
    )
    lines = [
        "| setting | scale | criteria met (of 3 per set) | smallest Cond-Vendi gain |",
        "|---|---|---|---|",
    ]
    for (label, scale), mine in ranked:
        met = sum(map(criteria_met, mine))
        lines.append(
            f"| {label} | {scale:g} | {met} of {3 * len(mine)} | {100 * min(r['gain'] for r in mine):+.1f}% |"
        )
    return lines


def pooled(runs: dict[str, tuple[list[dict[str, Any]], list[Any]]]) -> list[str]:
    """Each setting held by every prompt set in ``runs``, pooled over them, and its paired difference to the
    default (``sparke.bench.pool.pooled_rows``, as ``sparke bench --seed A --seed B`` writes it)."""
    rows, left_out = pooled_rows(list(runs.values()))
    return pooled_markdown(rows, list(runs), left_out)


def plot(rows: list[dict[str, Any]], path: Path, notes: dict[str, str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(dict.fromkeys(r["seed"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    cols = min(len(seeds), 2)
    n_rows = -(-len(seeds) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(5.5 * cols, 4.3 * n_rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(seeds) :]:
        ax.set_visible(False)
    for ax, seed in zip(axes.flat, seeds, strict=False):
        here = [r for r in rows if r["seed"] == seed]
        left = min(-5.0, *(r["cost"] - 3 for r in here))
        ax.axvspan(left, BAR_COST, color="0.93", zorder=0)
        ax.set_xlim(left, max(BAR_COST + 3, *(r["cost"] + 6 for r in here)))
        ax.axhline(100 * BAR_GAIN, color="0.6", lw=0.8, ls="--", zorder=0)
        for label in labels:
            mine = sorted(
                (r for r in rows if r["seed"] == seed and r["label"] == label), key=lambda r: r["scale"]
            )
            if not mine:
                continue
            xs, ys = [r["cost"] for r in mine], [100 * r["gain"] for r in mine]
            ax.plot(xs, ys, "-o", color=colours[label], label=NAMES.get(label, label), ms=5)
            for r, x, y in zip(mine, xs, ys, strict=True):
                if r["cost_ci"] is not None and r["gain_ci"] is not None:
                    ax.errorbar(
                        x,
                        y,
                        xerr=[[x - r["cost_ci"][0]], [r["cost_ci"][1] - x]],
                        yerr=[[y - 100 * r["gain_ci"][0]], [100 * r["gain_ci"][1] - y]],
                        color=colours[label],
                        alpha=0.35,
                        lw=1,
                    )
                ax.annotate(f"{r['scale']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        note = (notes or {}).get(seed.split()[0])
        ax.set_title(f"prompt set seed {seed}" + (f": {note}" if note else ""))
        ax.set_ylabel("Cond-Vendi gain vs none (%; dashed: +15%)")
        ax.set_xlabel("fidelity cost vs none (points; shaded: < 2)")
        ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}  # every setting once, whichever panel has it
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), fontsize=8, loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sparke bench output folders")
    parser.add_argument("--png", type=Path, help="write the trade-off plot here")
    parser.add_argument(
        "--note", action="append", default=[], metavar="SEED=TEXT", help="add TEXT to that seed's panel title"
    )
    parser.add_argument("--choose", action="store_true", help="also rank the settings by the choice rule")
    parser.add_argument("--pool", action="store_true", help="also pool each setting over all the prompt sets")
    parser.add_argument(
        "--only", action="append", default=[], metavar="LABEL", help="keep only these settings (repeatable)"
    )
    args = parser.parse_args(argv)
    runs = paired_runs(args.folders)
    rows = [r for seed in runs for r in candidate_rows(seed, *runs[seed])]
    if args.only:
        rows = [r for r in rows if r["label"] in args.only]
    print("\n".join(markdown(rows)))
    if args.choose:
        print("\n" + "\n".join(choice(rows)))
    if args.pool:
        print("\n" + "\n".join(pooled(runs)))
    if args.png is not None:
        plot(rows, args.png, dict(note.split("=", 1) for note in args.note))
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
