"""One self-contained HTML page comparing run folders: metrics, a scale plot and the images per prompt.

Everything is inside the file: images as base64 PNG grids (one per prompt and run), the CSS and a few lines
of JavaScript (a prompt filter) inline, plots as inline SVG. A Content-Security-Policy meta tag forbids any
other source, so the page makes no request when opened.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from sparke.runs import RunError, atomic_write
from sparke.runs.evaluation import METRICS, RunImages, load_run, read_metrics

__all__ = ["build_report", "line_plot"]

PALETTE = ("#2f6fde", "#e4572e", "#17a398", "#8e5ad6", "#f2a541", "#5b6473", "#d6478b")
PLOT_METRICS = ("cond_vendi", "vendi", "in_batch_similarity", "match_rate", "match_shape_colour")


def _asset(name: str) -> str:
    return resources.files("sparke.report").joinpath(name).read_text(encoding="utf-8")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# -- image grids ------------------------------------------------------------------------------------------------
def grid_png(files: Sequence[Path], thumb: int) -> tuple[str, int, int, int]:
    """Images tiled in a near-square grid -> (base64 PNG, width, height, cell size in pixels).

    Images larger than ``thumb`` are shrunk to ``thumb`` pixels on their long side; smaller ones keep their
    pixels (shown enlarged, pixelated, by the page).
    """
    from PIL import Image

    images = []
    for file in files:
        with Image.open(file) as im:
            images.append(im.convert("RGB"))
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    if max(cell_w, cell_h) > thumb:
        ratio = thumb / max(cell_w, cell_h)
        cell_w, cell_h = max(1, round(cell_w * ratio)), max(1, round(cell_h * ratio))
        images = [im.resize((cell_w, cell_h), Image.Resampling.LANCZOS) for im in images]
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    gap = 1 if cell_w <= 64 else 4
    canvas = Image.new("RGB", (cols * cell_w + (cols - 1) * gap, rows * cell_h + (rows - 1) * gap), "white")
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        canvas.paste(im, (c * (cell_w + gap), r * (cell_h + gap)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return (
        base64.b64encode(buffer.getvalue()).decode("ascii"),
        canvas.width,
        canvas.height,
        min(cell_w, cell_h),
    )


# -- plots ------------------------------------------------------------------------------------------------------
def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - 1e-12 and len(ticks) < 12:  # until the last tick covers the highest value
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def _legend_rows(labels: Sequence[str], start: float, width: float) -> list[list[tuple[float, str]]]:
    """Legend entries laid out left to right, wrapped into rows that fit ``width``: [[(x, label), ...], ...]."""
    rows: list[list[tuple[float, str]]] = [[]]
    x = start
    for label in labels:
        entry = 28 + 6.5 * len(label)  # swatch + gap + text (~6.5 px a character at 11 px)
        if rows[-1] and x + entry > width:
            rows.append([])
            x = start
        rows[-1].append((x, label))
        x += entry
    return rows


def _frame(
    xt: Sequence[float],
    yt: Sequence[float],
    sx: Any,
    sy: Any,
    box: tuple[float, float, float, float, float],
    x_domain: tuple[float, float],
    labels: tuple[str, str],
) -> list[str]:
    """The SVG of a plot's grid, ticks (those inside ``x_domain``), frame and axis labels (x, y); ``box``: (left,
    top, width, height, svg height)."""
    left, top, pw, ph, height = box
    (x_lo, x_hi), (x_label, y_label) = x_domain, labels
    lines: list[str] = []
    for y in yt:
        lines.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e6e9ef"/>'
        )
        lines.append(
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" fill="#5d6677">{_tick_label(y)}</text>'
        )
    for x in xt:
        if not x_lo - 1e-12 <= x <= x_hi + 1e-12:
            continue
        lines.append(
            f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#5d6677"/>'
        )
        lines.append(
            f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#5d6677">{_tick_label(x)}</text>'
        )
    lines.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#c9ced8"/>')
    lines.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" fill="#1d2330">{_e(x_label)}</text>'
    )
    lines.append(
        f'<text transform="translate(13 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'fill="#1d2330">{_e(y_label)}</text>'
    )
    return lines


def line_plot(
    series: Sequence[dict[str, Any]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 380,
    height: int = 250,
    y_from_zero: bool = False,
    y_range: tuple[float, float] | None = None,
) -> str:
    """An inline SVG line plot. ``series``: dicts with ``label``, ``points`` [(x, y)], optional ``dashed`` and
    ``ci`` {x: (low, high)} (drawn as error bars). ``y_from_zero``: the y axis starts at 0 (for scores >= 0),
    so a small difference is drawn small instead of being zoomed into a cliff. ``y_range``: a fixed y axis
    (a rate's 0..1). The legend wraps into as many rows as it needs; the x axis has a margin so that no point
    sits on the frame."""
    pts = [p for s in series for p in s["points"] if p[1] is not None]
    if not pts:
        return ""
    drawn = [s for s in series if any(y is not None for _, y in s["points"])]
    legend = _legend_rows([str(s["label"]) for s in drawn], 52, width - 8)
    left, right, top, bottom = 52, 14, 26 + 14 * len(legend), 44
    height += 14 * (len(legend) - 1)
    xs = [p[0] for p in pts]
    pad = 0.05 * ((max(xs) - min(xs)) or 1.0)
    xt = _nice_ticks(min(xs), max(xs))
    bounds = [p[1] for p in pts] + [v for s in series for ci in (s.get("ci") or {}).values() for v in ci]
    y_lo, y_hi = min(bounds), max(bounds)
    if y_from_zero and y_lo >= 0:
        y_lo = 0.0
    if y_range is not None:
        yt = [y_range[0] + k * (y_range[1] - y_range[0]) / 4 for k in range(5)]
    else:
        yt = _nice_ticks(y_lo, y_hi)
    x0, x1, y0, y1 = min(xt[0], min(xs) - pad), max(xt[-1], max(xs) + pad), yt[0], yt[-1]
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / ((y1 - y0) or 1) * ph

    out = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_e(title)}" font-family="system-ui, sans-serif" font-size="11">',
        f'<text x="{left}" y="18" font-size="13" font-weight="600" fill="#1d2330">{_e(title)}</text>',
    ]
    out += _frame(xt, yt, sx, sy, (left, top, pw, ph, height), (x0, x1), (x_label, y_label))
    place = {label: (x, 29 + 14 * r) for r, row in enumerate(legend) for x, label in row}
    for k, s in enumerate(series):
        colour = s.get("colour") or PALETTE[k % len(PALETTE)]
        points = sorted((x, y) for x, y in s["points"] if y is not None)
        if not points:
            continue
        dash = ' stroke-dasharray="5 4"' if s.get("dashed") else ""
        if len(points) > 1:
            path = " ".join(
                f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points)
            )
            out.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for x, (low, high) in (s.get("ci") or {}).items():  # 95% intervals as error bars
            out.append(
                f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{sy(low):.1f}" y2="{sy(high):.1f}" '
                f'stroke="{colour}" stroke-width="1.2" opacity="0.6"/>'
            )
        for x, y in [] if s.get("dashed") else points:  # a dashed reference line has no data points
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{colour}"><title>{_e(s["label"])}: '
                f"scale {x:g}, {y:.3g}</title></circle>"
            )
        lx, ly = place[str(s["label"])]
        out.append(
            f'<line x1="{lx}" x2="{lx + 16}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>'
            f'<text x="{lx + 20}" y="{ly + 4}" fill="#1d2330">{_e(s["label"])}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


RATE_METRICS = ("match_rate", "match_shape_colour")  # fractions of images: their axes run from 0 to 1


def relative_scale(method: str, scale: Any) -> float:
    """A run's scale as a multiple of its method's default scale (1 = the default, 0 = unguided). Methods
    measure scale in their own units (a step size for sparke, rke and vendi, bandwidth units for pg, a noise
    std for cads), so only this ratio puts them on one axis; a method unknown to this version keeps its own."""
    from sparke.methods import METHODS

    value = float(scale or 0.0)
    spec = METHODS.get(method)
    if spec is None or not spec.has_scale or not spec.default_scale:
        return value
    return value / spec.default_scale


def scale_plots(runs: Sequence[dict[str, Any]]) -> str:
    """Small multiples of each metric against the guidance scale relative to each method's default, one line
    per method ('' unless some method ran at two scales or more: one point per method is what the table shows).
    """
    evaluated = [r for r in runs if r["metrics"] is not None]
    by_method: dict[str, set[float]] = {}
    for r in evaluated:
        by_method.setdefault(r["method"], set()).add(relative_scale(r["method"], r["scale"]))
    if not any(len(v) > 1 for m, v in by_method.items() if m != "none"):
        return ""
    xs = sorted({x for v in by_method.values() for x in v})
    methods = list(by_method)
    figures = []
    for metric in PLOT_METRICS:
        if all(r["metrics"]["overall"].get(metric) is None for r in evaluated):
            continue
        label, higher = METRICS[metric]
        series = []
        for k, method in enumerate(methods):
            own = [r for r in evaluated if r["method"] == method]
            pts = [(relative_scale(method, r["scale"]), r["metrics"]["overall"].get(metric)) for r in own]
            cis = {
                relative_scale(method, r["scale"]): tuple(r["metrics"]["overall"]["ci"][metric])
                for r in own
                if metric in (r["metrics"]["overall"].get("ci") or {})
            }
            series.append({"label": method, "points": pts, "colour": PALETTE[k % len(PALETTE)], "ci": cis})
        # the unguided level as a dashed reference across the whole axis
        base = [
            r for r in evaluated if r["method"] == "none" and r["metrics"]["overall"].get(metric) is not None
        ]
        if base:
            level = base[0]["metrics"]["overall"][metric]
            series.append(
                {"label": "none (level)", "points": [(xs[0], level), (xs[-1], level)], "dashed": True,
                 "colour": "#9aa3b2"}
            )  # fmt: skip
        rate = metric in RATE_METRICS
        figures.append(
            line_plot(
                series,
                title=f"{label} (fidelity)"
                if rate
                else f"{label} ({'higher' if higher else 'lower'} = more diverse)",
                x_label="scale ÷ the method's default (1 = default)",
                y_label=label,
                y_from_zero=True,
                y_range=(0.0, 1.0) if rate else None,
            )
        )
    if not figures:
        return ""
    return (
        '<section id="plots"><h2>Diversity against guidance scale</h2>'
        "<p class='note'>Each method's scale is in its own unit (a step size for sparke, rke and vendi, "
        "bandwidth units for pg, a noise std for cads), so the x axis is the scale divided by the method's "
        "default: 1 is the default, 0 unguided. Y axes start at 0, so a small difference looks small; rates run "
        "from 0 to 1; bars: 95% intervals over the prompt clusters.</p>"
        '<div class="plots">' + "\n".join(figures) + "</div></section>"
    )


# -- tables -----------------------------------------------------------------------------------------------------
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
            f"<td class='l'>{_e(r['method'])}</td>",
            f"<td>{_scale(r['scale'])}</td>",
            f"<td class='l'>{_e(_short_model(r['model']))}</td>",
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
        "<div class='scroll'><table><thead><tr>"
        + "".join(head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


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


# -- the page ---------------------------------------------------------------------------------------------------
def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in paths]


def _run_info(run: RunImages, label: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """What the page shows of one run: its label, settings (run.json, else its first record's) and metrics."""
    first = run.records[0]
    return {
        "label": label,
        "run": run,
        "config": run.config or {k: first.get(k) for k in ("model", "method", "scale", "settings")},
        "method": run.config.get("method", first.get("method")),
        "scale": run.config.get("scale", first.get("scale")),
        "model": run.config.get("model", first.get("model")),
        "n_images": len(run.records),
        "metrics": metrics or read_metrics(run.path),
    }


def _prompt_groups(
    loaded: Sequence[RunImages],
) -> tuple[dict[str, str], list[dict[str, list[dict[str, Any]]]]]:
    """(each prompt's cluster, from the first run that has the prompt, in order of first appearance;
    per run, its records by prompt)."""
    prompt_cluster: dict[str, str] = {}
    by_run_prompt: list[dict[str, list[dict[str, Any]]]] = []
    for run in loaded:
        groups: dict[str, list[dict[str, Any]]] = {}
        for record in run.records:
            groups.setdefault(record["prompt"], []).append(record)
            prompt_cluster.setdefault(record["prompt"], record.get("cluster") or record["prompt"])
        by_run_prompt.append(groups)
    return prompt_cluster, by_run_prompt


def _grid_figure(info: dict[str, Any], records: Sequence[dict[str, Any]], thumb: int) -> str:
    """One run's grid of a prompt's images (or a 'none' box), captioned with the run's label."""
    if not records:
        return f"<figure><div class='missing'>none</div><figcaption>{_e(info['label'])}</figcaption></figure>"
    data, w, h, cell = grid_png([info["run"].path / r["file"] for r in records], thumb)
    # small images (the embedded model's 32x32) are shown enlarged to >= 64 px cells, pixelated
    factor = max(1, math.ceil(64 / cell)) if cell < 64 else 1
    cls = "" if cell < 64 else " class='smooth'"
    alt = f"{len(records)} images of {info['label']}"
    return (
        f"<figure><img{cls} src='data:image/png;base64,{data}' width='{w * factor}' "
        f"height='{h * factor}' alt='{_e(alt)}'><figcaption>{_e(info['label'])}</figcaption></figure>"
    )


def _cluster_section(
    name: str,
    members: Sequence[str],
    infos: Sequence[dict[str, Any]],
    by_run_prompt: Sequence[dict[str, list[dict[str, Any]]]],
    max_images: int,
    thumb: int,
) -> str:
    """A cluster's block: its metrics line, its free attributes, and per prompt one grid per run."""
    parts = [f"<div class='cluster'><h3>{_e(name)}</h3>"]
    line = _cluster_metrics_line(infos, name, members)
    if line:
        parts.append(f"<p class='cluster-metrics'>{line}</p>")
    parts.append(free_attributes_block(infos, members, by_run_prompt))
    for prompt in members:
        text = "" if members == [name] else f"<p class='ptext'>{_e(prompt)}</p>"  # cluster = this prompt
        parts.append(f"<div class='prompt' data-prompt='{_e(prompt.lower())}'>{text}")
        parts.append("<div class='grids'>")
        for info, groups in zip(infos, by_run_prompt, strict=True):
            parts.append(_grid_figure(info, groups.get(prompt, [])[:max_images], thumb))
        parts.append("</div></div>")
    parts.append("</div>")
    return "".join(parts)


def build_report(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    title: str | None = None,
    max_images: int = 16,
    max_prompts: int = 200,
    thumb: int = 128,
    metrics: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write the HTML report of ``runs`` to ``out``; returns its path.

    ``metrics``: results of ``evaluate_run`` by run path (default: each folder's metrics.json, if any).
    Grids show at most ``max_images`` images per prompt and run; at most ``max_prompts`` prompts.
    """
    from sparke import __version__

    if not runs:
        raise RunError("no run folders given")
    loaded: list[RunImages] = [load_run(r) for r in runs]
    labels = _labels([r.path for r in loaded])
    infos = [
        _run_info(run, label, (metrics or {}).get(str(given)))
        for run, label, given in zip(loaded, labels, runs, strict=True)
    ]
    prompt_cluster, by_run_prompt = _prompt_groups(loaded)
    prompts = list(prompt_cluster)
    truncated = ""
    if len(prompts) > max_prompts:
        truncated = f"<p class='note'>Showing the first {max_prompts} of {len(prompts)} prompts.</p>"
        prompts = prompts[:max_prompts]
    clusters: dict[str, list[str]] = {}
    for p in prompts:
        clusters.setdefault(prompt_cluster[p], []).append(p)
    cluster_html = [
        _cluster_section(name, members, infos, by_run_prompt, max_images, thumb)
        for name, members in clusters.items()
    ]
    n_prompts = len(prompt_cluster)
    subtitle = (
        f"{len(loaded)} run{'s' if len(loaded) != 1 else ''} &middot; {n_prompts} prompt{'s' if n_prompts != 1 else ''} "
        f"in {len({prompt_cluster[p] for p in prompt_cluster})} cluster(s) &middot; "
        f"made {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
    )
    page = Template(_asset("template.html")).substitute(
        version=_e(__version__),
        title=_e(title or "SPARKE report: " + ", ".join(labels)),
        subtitle=subtitle,
        css=_asset("style.css"),
        js=_asset("report.js"),
        metrics_table=metrics_table(infos),
        metrics_note=metrics_note(infos),
        settings=settings_block(infos),
        plots=scale_plots(infos),
        truncated=truncated,
        clusters="\n".join(cluster_html),
    )
    target = Path(out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, page.encode("utf-8"))
    except OSError as error:
        raise RunError(f"{target}: cannot write the report ({error.strerror or error})") from None
    return target


FREE_ATTRIBUTES = (("position", "positions", 9), ("size", "sizes", 3), ("background", "backgrounds", 4))


def free_attributes_block(
    infos: Sequence[dict[str, Any]], members: Sequence[str], by_run_prompt: Sequence[dict[str, list]]
) -> str:
    """Per run, the positions, sizes and backgrounds (the attributes the prompts leave free) that occur among
    the cluster's images that match their prompt, read by the embedded world's checker ('' for other models)."""
    try:
        from sparke.embedded.checker import check, matches
        from sparke.runs.evaluation import is_embedded_run, required_from_prompt
    except ImportError:  # the checker needs scipy
        return ""
    import numpy as np
    from PIL import Image

    rows = []
    for info, groups in zip(infos, by_run_prompt, strict=True):
        if not is_embedded_run(info["run"]):
            continue
        records = [rec for p in members for rec in groups.get(p, [])]
        if not records:
            continue
        required = records[0].get("required") or required_from_prompt(records[0]["prompt"]) or {}
        free = [a for a in FREE_ATTRIBUTES if required.get(a[0]) is None]
        counts: dict[str, dict[str, int]] = {a[0]: {} for a in free}
        good = 0
        for rec in records:
            req = rec.get("required") or required_from_prompt(rec["prompt"])
            if req is None:
                continue
            try:
                with Image.open(info["run"].path / rec["file"]) as im:
                    detected = check(np.asarray(im.convert("RGB")))
            except OSError:
                continue
            if not matches(detected, req):
                continue
            good += 1
            for name, *_ in free:
                value = detected["objects"][0]["position"] if name == "position" else detected.get(name)
                if value is not None:
                    counts[name][value] = counts[name].get(value, 0) + 1
        cells = []
        for name, _plural, possible in free:
            if name == "size" and int(required.get("count", 1)) == 2:
                possible = 2  # two large shapes do not fit
            seen = sorted(counts[name].items(), key=lambda kv: (-kv[1], kv[0]))
            chips = " ".join(f"<span class='chip'>{_e(v)}&times;{n}</span>" for v, n in seen)
            cells.append(f"<td><b>{min(len(seen), possible)}/{possible}</b> {chips}</td>")
        rows.append(
            f"<tr><td class='l'>{_e(info['label'])}</td><td>{good}/{len(records)}</td>"
            + "".join(cells)
            + "</tr>"
        )
    if not rows:
        return ""
    head = "".join(f"<th class='l'>{plural}</th>" for _, plural, _ in free)
    return (
        "<details class='free-attrs' open><summary>Free attributes among the images that match their prompt "
        "(the checker's reading; more distinct values = more diverse)</summary><div class='scroll'><table><thead>"
        f"<tr><th class='l'>run</th><th>matching</th>{head}</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div></details>"
    )


def _cluster_metrics_line(infos: Sequence[dict[str, Any]], cluster: str, members: Sequence[str]) -> str:
    """'run: Cond-Vendi 3.1, match 0.94 · ...' for one cluster, from each run's per-cluster metrics."""
    bits = []
    for info in infos:
        m = info["metrics"]
        if not m:
            continue
        row = next((c for c in m.get("clusters", []) if c.get("cluster") == cluster), None)
        if row is None:
            continue
        text = f"{_e(info['label'])}: <b>Cond-Vendi {_fmt(row.get('cond_vendi'))}</b>"
        if row.get("match_rate") is not None:
            text += f", match {_fmt(row.get('match_rate'), 'match_rate')}"
        if row.get("match_shape_colour") is not None:
            text += f" (shape+colour {_fmt(row.get('match_shape_colour'), 'match_rate')})"
        bits.append(text)
    return " &middot; ".join(bits)
