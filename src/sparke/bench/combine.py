"""Combine benchmark runs of one prompt set (the same seed and sizes) into one table and goal check.

    python -m sparke.bench.combine OUT DIR1 DIR2 ...

Runs with the same ``seed``, ``clusters``, ``prompts``, ``seeds``, ``steps``, ``cfg`` and ``n_boot`` share the
initial noise and the bootstrap resamples, so their rows stay paired: a second run that adds baselines (it
repeats ``none`` and the world, which come out identical) can be merged with the first. Writes
OUT/results.json, OUT/results.md, OUT/meta.json and OUT/tradeoff.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import report

SAME = ("seed", "clusters", "prompts", "seeds", "steps", "cfg", "n_boot")


def load(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, np.ndarray] | None]]:
    rows = json.loads((folder / "results.json").read_text())
    meta = json.loads((folder / "meta.json").read_text())
    reps: list[dict[str, np.ndarray] | None] = [None] * len(rows)
    file = folder / "replicates.npz"
    if file.is_file():
        with np.load(file) as data:
            for key in data.files:
                index, metric = key.split("/", 1)
                if reps[int(index)] is None:
                    reps[int(index)] = {}
                reps[int(index)][metric] = data[key]
    return rows, meta, reps


def combine(out: Path, folders: list[Path]) -> dict[str, Any]:
    """Merge the runs in ``folders`` (first one's meta), keep one row per (label, scale); return the goal."""
    rows: list[dict[str, Any]] = []
    reps: list[dict[str, np.ndarray] | None] = []
    metas = []
    seen: set[tuple[str, float]] = set()
    for folder in folders:
        r, m, p = load(folder)
        metas.append(m)
        for row, rep in zip(r, p, strict=True):
            key = (row["label"], float(row["scale"]))
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
            reps.append(rep)
    first = metas[0]["config"]
    for m in metas[1:]:
        diff = [k for k in SAME if m["config"].get(k) != first.get(k)]
        if diff:
            raise ValueError(f"runs differ in {diff}: their rows are not paired")
    # none first among the generated rows, as run_bench writes them
    order = sorted(range(len(rows)), key=lambda i: {"world": 0, "none": 1}.get(rows[i]["method"], 2))
    rows, reps = [rows[i] for i in order], [reps[i] for i in order]
    meta = {
        "command": " + ".join(m["command"] for m in metas),
        "config": first,
        "wall_seconds": sum(m["wall_seconds"] for m in metas),
        "complete": all(
            m.get("complete", True) for m in metas
        ),  # False: a run stopped before its last setting
        "intervals": metas[0].get("intervals"),
        "goal": report.goal_check(rows, reps),
        "goal_at_default": report.goal_check(rows, reps, fixed=report.RECOMMENDED),
        "combined_from": [str(f) for f in folders],
    }
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "results.json", rows)
    report.write_json(out / "meta.json", meta)
    report.write_markdown(out, rows, meta, None)
    report.plot_tradeoff(out, rows)
    return meta["goal_at_default"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print(__doc__)
        return 2
    goal = combine(Path(args[0]), [Path(a) for a in args[1:]])
    print(json.dumps(goal, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
