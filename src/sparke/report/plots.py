"""The report's plots: inline SVG line plots, and the small multiples of each metric against guidance scale."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sparke.runs.evaluation import METRICS

from .markup import PALETTE
from .markup import esc as _e

__all__ = ["PLOT_METRICS", "RATE_METRICS", "line_plot", "relative_scale", "scale_plots"]

PLOT_METRICS = ("cond_vendi", "vendi", "in_batch_similarity", "match_rate", "match_shape_colour")


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


def _series_marks(
    s: dict[str, Any], colour: str, sx: Any, sy: Any, place: dict[str, tuple[float, float]]
) -> list[str]:
    """The SVG elements of one series of ``line_plot``: its line, error bars, points and legend entry."""
    points = sorted((x, y) for x, y in s["points"] if y is not None)
    if not points:
        return []
    out = []
    dash = ' stroke-dasharray="5 4"' if s.get("dashed") else ""
    if len(points) > 1:
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
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
    return out


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
        out += _series_marks(s, s.get("colour") or PALETTE[k % len(PALETTE)], sx, sy, place)
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
