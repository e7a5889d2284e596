"""``sparke report``: one self-contained HTML page comparing run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import err, out, user_errors


def report_command(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders made by `sparke generate`.", show_default=False)
    ],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    title: Annotated[
        str | None, typer.Option(help="Page title.  \\[default: the run names]", show_default=False)
    ] = None,
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate/--no-evaluate",
            help="Evaluate runs that have no metrics.json yet (default features and kernels).",
        ),
    ] = True,
    features: Annotated[
        str, typer.Option(help="Features for --evaluate (see `sparke evaluate`).")
    ] = "embedded",
    max_images: Annotated[int, typer.Option(min=1, help="Images shown per prompt and run.")] = 16,
    max_prompts: Annotated[int, typer.Option(min=1, help="Prompts shown.")] = 200,
    thumb: Annotated[int, typer.Option(min=16, help="Longest side of an image in the grids, pixels.")] = 128,
    device: Annotated[str, typer.Option(help="Device for --evaluate.")] = "auto",
) -> None:
    """Write one self-contained HTML page comparing runs: image grids per prompt, metrics, scale plot.

    Per prompt, the image grids of each run side by side; the metrics table; a plot of diversity against guidance scale when the runs have several scales. The page is self-contained (images inlined as PNG, CSS and a small prompt filter inline, plots as SVG) and makes no network request.
    """
    from sparke.evaluation import evaluate_run, load_features, load_run, read_metrics
    from sparke.generation import resolve_device
    from sparke.report import build_report

    with user_errors():
        for run in runs:
            load_run(run)
        missing = [run for run in runs if read_metrics(run) is None]
        if missing and evaluate:
            with err.status(f"loading features {features} ..."):
                extractor = load_features(features, resolve_device(device))
            for run in missing:
                with err.status(f"evaluating {run} ..."):
                    evaluate_run(run, extractor)
        with err.status(f"writing {out_file} ..."):
            path = build_report(
                runs, out_file, title=title, max_images=max_images, max_prompts=max_prompts, thumb=thumb
            )
    size = path.stat().st_size
    out.print(f"[green]report[/]: {path} ({size / 1e6:.1f} MB)", highlight=False)
