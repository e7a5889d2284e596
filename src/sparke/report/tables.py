"""The report's metrics table, its captions and notes, and the run settings."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparke.runs.evaluation import METRICS

from .markup import esc as _e

__all__ = ["COLUMN_HELP", "metrics_cards", "metrics_note", "metrics_table", "settings_block"]


def _fmt(value: Any, metric: str = "") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return (
            f"{value:.3f}"
            if metric in ("in_batch_similarity", "match_rate", "match_shape_colour")
            else f"{value:.2f}"
        )
    return _e(value)


def metrics_table(runs: Sequence[dict[str, Any]]) -> str:
    shown = [
        m for m in METRICS if any(r["metrics"] and r["metrics"]["overall"].get(m) is not None for r in runs)
    ]
    best: dict[str, float] = {}
    for m in shown:
        values = [
            r["metrics"]["overall"][m]
            for r in runs
            if r["metrics"] and r["metrics"]["overall"].get(m) is not None
        ]
        if len(values) > 1:
            best[m] = max(values) if METRICS[m][1] else min(values)
    head = [
        "<th class='l'>run</th><th class='l'>method</th><th>scale</th><th class='l'>model</th><th>images</th>"
    ]
    head += [f"<th>{_e(METRICS[m][0])} {'&uarr;' if METRICS[m][1] else '&darr;'}</th>" for m in shown]
    rows = []
    for r in runs:
        cells = [
            f"<td class='l'>{_e(r['label'])}</td>",
            f"<td class='l'>{'&ndash;' if r['method'] is None else _e(r['method'])}</td>",
            f"<td>{_scale(r['scale'])}</td>",
            f"<td class='l'>{'&ndash;' if r['model'] is None else _e(_short_model(r['model']))}</td>",
            f"<td>{r['n_images']}</td>",
        ]
        for m in shown:
            value = r["metrics"]["overall"].get(m) if r["metrics"] else None
            cls = " class='best'" if value is not None and m in best and value == best[m] else ""
            ci = (r["metrics"]["overall"].get("ci") or {}).get(m) if r["metrics"] else None
            extra = f"<br><small class='ci'>[{_fmt(ci[0], m)}, {_fmt(ci[1], m)}]</small>" if ci else ""
            cells.append(f"<td{cls}>{_fmt(value, m)}{extra}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<div class='scroll metrics-wide'><table><thead><tr>"
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def metrics_cards(runs: Sequence[dict[str, Any]]) -> str:
    """The metrics table again as one card per run (a list of metric: value), shown instead of the table
    on narrow screens (style.css), where the table's columns would sit off-screen."""
    shown = [
        m for m in METRICS if any(r["metrics"] and r["metrics"]["overall"].get(m) is not None for r in runs)
    ]
    cards = []
    for r in runs:
        overall = r["metrics"]["overall"] if r["metrics"] else {}
        items = [f"<dt>images</dt><dd>{r['n_images']:,}</dd>"]
        if r["method"] is not None:
            items.append(f"<dt>method</dt><dd>{_e(r['method'])} {_scale(r['scale'])}</dd>")
        for m in shown:
            ci = (overall.get("ci") or {}).get(m)
            extra = f" <small class='ci'>[{_fmt(ci[0], m)}, {_fmt(ci[1], m)}]</small>" if ci else ""
            arrow = "&uarr;" if METRICS[m][1] else "&darr;"
            items.append(f"<dt>{_e(METRICS[m][0])} {arrow}</dt><dd>{_fmt(overall.get(m), m)}{extra}</dd>")
        cards.append(f"<div class='card'><h3>{_e(r['label'])}</h3><dl>{''.join(items)}</dl></div>")
    return "<div class='metric-cards'>" + "".join(cards) + "</div>"


def _scale(value: Any) -> str:
    """A scale as given (0.003, not a rounded 0.00)."""
    return "&ndash;" if value is None else f"{float(value):g}"


def _short_model(model: Any) -> str:
    text = str(model)
    return Path(text).name if os.sep in text and Path(text).is_absolute() else text


# what each column of the metrics table means (the caption under it)
COLUMN_HELP = {
    "scale": "the guidance strength, in the method's own unit (0 = unguided)",
    "cond_vendi": "the effective number of distinct images among the images of similar prompts, the prompt's "
    "own variety removed (higher = more diverse)",
    "cond_rke": "the same count through the order-2 Renyi kernel entropy, which weighs the largest modes most",
    "vendi": "the effective number of distinct images in the whole run, prompts ignored",
    "rke": "Vendi's order-2 (Renyi) counterpart",
    "in_batch_similarity": "the mean cosine similarity between the images of one prompt (lower = more diverse)",
    "match_rate": "the fraction of images in which the checker reads every attribute the prompt states (shape, "
    "colour, count, and background, size or position when stated; embedded model only)",
    "match_shape_colour": "the fraction in which it reads the prompt's shape, colour and count",
}


def column_caption(runs: Sequence[dict[str, Any]]) -> str:
    """'<b>Columns.</b> scale: ...; Cond-Vendi: ...' for the columns the table shows."""
    shown = [
        m for m in METRICS if any(r["metrics"] and r["metrics"]["overall"].get(m) is not None for r in runs)
    ]
    parts = [f"scale: {COLUMN_HELP['scale']}"] + [
        f"{METRICS[m][0]}: {COLUMN_HELP[m]}" for m in shown if m in COLUMN_HELP
    ]
    return " <b>Columns.</b> " + "; ".join(_e(p) for p in parts) + "."


def metrics_note(runs: Sequence[dict[str, Any]]) -> str:
    evaluated = [r["metrics"] for r in runs if r["metrics"] is not None]
    if not evaluated:
        return "Not evaluated: run <code>sparke evaluate</code> on the run folders for the metrics."
    first = evaluated[0]
    k = first["kernels"]
    bandwidths = (
        f" with bandwidth {k['sigma_image']} on images and {k['sigma_prompt']} on prompts"
        if k["kernel"] == "gaussian"
        else ""
    )
    text = (
        f"Image features: {_e(first['features']['image'])} ({first['features']['image_dim']}-d); prompt features: "
        f"{_e(first['features']['prompt'])}; all L2-normalised. {_e(k['kernel']).capitalize()} kernel{bandwidths}. "
        + column_caption(runs)
        + " Best value per column in green."
    )
    if any(m["features"] != first["features"] or m["kernels"] != first["kernels"] for m in evaluated[1:]):
        text += " <b>Warning: the runs were evaluated with different features or kernels.</b>"
    missing = [r["label"] for r in runs if r["metrics"] is None]
    if missing:
        text += f" Not evaluated: {_e(', '.join(missing))}."
    if any("ci" in m["overall"] for m in evaluated):
        text += (
            " Under each value: its 95% bootstrap interval over the prompt clusters (how much the value would "
            "move with other prompts of the same kind)."
        )
    text += small_run_note(runs)
    return text


SMALL_CLUSTERS = 8  # fewer prompt clusters than this: intervals are rough and differences mean little
SMALL_IMAGES = 200


def small_run_note(runs: Sequence[dict[str, Any]]) -> str:
    """A plain warning when the runs are too small for their differences to mean anything ('' otherwise)."""
    evaluated = [r for r in runs if r["metrics"] is not None]
    if len(evaluated) < 2:
        return ""
    n_images = min(r["metrics"]["n_images"] for r in evaluated)
    n_clusters = min(len(r["metrics"].get("clusters") or []) for r in evaluated)
    overlap = False
    values = [
        (
            r["metrics"]["overall"].get("cond_vendi"),
            (r["metrics"]["overall"].get("ci") or {}).get("cond_vendi"),
        )
        for r in evaluated
    ]
    known = [(v, ci) for v, ci in values if v is not None and ci]
    if len(known) > 1:
        spread = max(v for v, _ in known) - min(v for v, _ in known)
        overlap = spread < max(ci[1] - ci[0] for _, ci in known) / 2
    if n_images >= SMALL_IMAGES and n_clusters >= SMALL_CLUSTERS and not overlap:
        return ""
    why = f"{n_images} images in {n_clusters} prompt cluster{'s' if n_clusters != 1 else ''} per run"
    tail = " and the Cond-Vendi differences are smaller than the intervals" if overlap else ""
    return (
        f" <span class='warning'><b>Too small to conclude:</b> {why}{tail}. Differences between these runs may "
        "be noise: read the pictures, not the decimals. For a conclusion use more prompts and images "
        "(<code>sparke bench</code> uses 384 images in 12 clusters per setting, with paired intervals).</span>"
    )


def settings_block(runs: Sequence[dict[str, Any]]) -> str:
    parts = []
    for r in runs:
        cfg = r["config"]
        shown = {
            k: cfg.get(k)
            for k in (
                "model",
                "method",
                "scale",
                "settings",
                "steps",
                "cfg",
                "seed",
                "batch_size",
                "images_per_prompt",
            )
        }
        parts.append(f"<h3>{_e(r['label'])}</h3><pre>{_e(json.dumps(shown, indent=1))}</pre>")
    return "<details><summary>Run settings</summary>" + "".join(parts) + "</details>"
