"""One self-contained HTML page comparing run folders (or image folders): metrics, a scale plot and the images
per prompt.

Everything is inside the file: images as base64 grids (one per prompt and run: PNG for small pixel-art
images, JPEG thumbnails for larger ones), the CSS and a few lines
of JavaScript (a prompt filter) inline, plots as inline SVG. A Content-Security-Policy meta tag forbids any
other source, so the page makes no request when opened.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any

from sparke.runs import RunError, atomic_write
from sparke.runs.evaluation import open_images, read_metrics
from sparke.runs.imagefolder import ImageRecords

from .grids import MAX_THUMBNAILS, grid_figure, thumbs_per_prompt
from .markup import asset
from .markup import esc as _e
from .plots import line_plot, scale_plots
from .sections import cluster_sections
from .tables import _fmt, metrics_cards, metrics_note, metrics_table, settings_block

__all__ = ["build_report", "line_plot"]


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in paths]


def _run_info(run: ImageRecords, label: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """What the page shows of one run or image folder: its label, settings (run.json, else its first
    record's; none for a plain folder) and metrics, with each cluster's metrics by name."""
    first = run.records[0]
    metrics = metrics or read_metrics(run.path)
    return {
        "label": label,
        "run": run,
        "config": run.config or {k: first.get(k) for k in ("model", "method", "scale", "settings")},
        "method": run.config.get("method", first.get("method")),
        "scale": run.config.get("scale", first.get("scale")),
        "model": run.config.get("model", first.get("model")),
        "n_images": len(run.records),
        "metrics": metrics,
        "cluster_rows": {c.get("cluster"): c for c in (metrics or {}).get("clusters") or []},
    }


def _prompt_groups(
    loaded: Sequence[ImageRecords],
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


def _cluster_section(
    name: str,
    members: Sequence[str],
    infos: Sequence[dict[str, Any]],
    by_run_prompt: Sequence[dict[str, list[dict[str, Any]]]],
    per_prompt: int,
    thumb: int,
) -> str:
    """A cluster's block: its metrics line, the registered extra sections (``report.sections``), and per
    prompt one grid per run of at most ``per_prompt`` images."""
    parts = [f"<div class='cluster'><h3>{_e(name)}</h3>"]
    line = _cluster_metrics_line(infos, name)
    if line:
        parts.append(f"<p class='cluster-metrics'>{line}</p>")
    parts.extend(section(infos, members, by_run_prompt) for section in cluster_sections())
    for prompt in members:
        text = "" if members == [name] else f"<p class='ptext'>{_e(prompt)}</p>"  # cluster = this prompt
        parts.append(f"<div class='prompt' data-prompt='{_e(prompt.lower())}'>{text}")
        parts.append("<div class='grids'>")
        for info, groups in zip(infos, by_run_prompt, strict=True):
            records = groups.get(prompt, [])
            parts.append(grid_figure(info, records[:per_prompt], thumb, len(records)))
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
    max_thumbnails: int = MAX_THUMBNAILS,
) -> Path:
    """Write the HTML report of ``runs`` (run folders or image folders ``sparke evaluate`` accepts) to ``out``;
    returns its path.

    ``metrics``: results of ``evaluate_run`` by run path (default: each folder's metrics.json, if any).
    Grids show at most ``max_images`` images per prompt and run, fewer when the page would hold more than
    ``max_thumbnails`` images in all (a sample per prompt keeps a page of 50,000 images light); at most
    ``max_prompts`` prompts.
    """
    from sparke import __version__

    if not runs:
        raise RunError("no run folders given")
    loaded: list[ImageRecords] = [open_images(r) for r in runs]
    labels = _labels([r.path for r in loaded])
    infos = [
        _run_info(run, label, (metrics or {}).get(str(given)))
        for run, label, given in zip(loaded, labels, runs, strict=True)
    ]
    prompt_cluster, by_run_prompt = _prompt_groups(loaded)
    prompts, per_prompt, notes = _shown(
        list(prompt_cluster), len(loaded), max_prompts, max_images, max_thumbnails
    )
    clusters: dict[str, list[str]] = {}
    for p in prompts:
        clusters.setdefault(prompt_cluster[p], []).append(p)
    cluster_html = [
        _cluster_section(name, members, infos, by_run_prompt, per_prompt, thumb)
        for name, members in clusters.items()
    ]
    page = Template(asset("template.html")).substitute(
        version=_e(__version__),
        title=_e(title or "SPARKE report: " + ", ".join(labels)),
        subtitle=_subtitle(len(loaded), prompt_cluster),
        css=asset("style.css"),
        js=asset("report.js"),
        metrics_table=metrics_table(infos) + metrics_cards(infos),
        metrics_note=metrics_note(infos),
        settings=settings_block(infos),
        plots=scale_plots(infos),
        truncated="".join(f"<p class='note'>{_e(n)}</p>" for n in notes),
        clusters="\n".join(cluster_html),
    )
    target = Path(out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, page.encode("utf-8"))
    except OSError as error:
        raise RunError(f"{target}: cannot write the report ({error.strerror or error})") from None
    return target


def _shown(
    prompts: list[str], n_runs: int, max_prompts: int, max_images: int, max_thumbnails: int
) -> tuple[list[str], int, list[str]]:
    """(the prompts shown, images per prompt and run, the notes that say what is left out)."""
    notes = []
    if len(prompts) > max_prompts:
        notes.append(f"Showing the first {max_prompts:,} of {len(prompts):,} prompts.")
        prompts = prompts[:max_prompts]
    per_prompt = thumbs_per_prompt(max_images, len(prompts) * n_runs, max_thumbnails)
    if per_prompt < max_images:
        notes.append(
            f"Showing a sample of at most {per_prompt} image{'s' if per_prompt != 1 else ''} per prompt and run "
            f"(the first ones; at most {max_thumbnails:,} images on the page)."
        )
    return prompts, per_prompt, notes


def _subtitle(n_runs: int, prompt_cluster: dict[str, str]) -> str:
    n_prompts = len(prompt_cluster)
    return (
        f"{n_runs} run{'s' if n_runs != 1 else ''} &middot; {n_prompts:,} prompt{'s' if n_prompts != 1 else ''} "
        f"in {len(set(prompt_cluster.values())):,} cluster(s) &middot; "
        f"made {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
    )


def _cluster_metrics_line(infos: Sequence[dict[str, Any]], cluster: str) -> str:
    """'run: Cond-Vendi 3.1, match 0.94 · ...' for one cluster, from each run's per-cluster metrics."""
    bits = []
    for info in infos:
        row = info["cluster_rows"].get(cluster)
        if row is None:
            continue
        text = f"{_e(info['label'])}: <b>Cond-Vendi {_fmt(row.get('cond_vendi'))}</b>"
        if row.get("match_rate") is not None:
            text += f", match {_fmt(row.get('match_rate'), 'match_rate')}"
        if row.get("match_shape_colour") is not None:
            text += f" (shape+colour {_fmt(row.get('match_shape_colour'), 'match_rate')})"
        bits.append(text)
    return " &middot; ".join(bits)
