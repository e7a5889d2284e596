"""``sparke report``: one self-contained HTML page comparing run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import err, human_size, out, say, user_errors, user_warnings


def report_command(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders made by `sparke generate`, or image folders that `sparke evaluate` accepts "
            "(metadata.jsonl or metadata.csv with file_name and prompt).",
            show_default=False,
        ),
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
            help="Evaluate runs that have no metrics.json yet, or whose metrics.json is older than their images "
            "(default features and kernels for new ones; for stale ones the recorded features, kernels, reference "
            "and CLIP model).",
        ),
    ] = True,
    features: Annotated[
        str, typer.Option(help="Features for --evaluate (see `sparke evaluate`).")
    ] = "embedded",
    max_images: Annotated[
        int,
        typer.Option(
            min=1,
            help="Images shown per prompt and run (fewer when the page would show more than 1,000 images: a "
            "sample per prompt keeps the page light).",
        ),
    ] = 16,
    max_prompts: Annotated[int, typer.Option(min=1, help="Prompts shown.")] = 200,
    thumb: Annotated[int, typer.Option(min=16, help="Longest side of an image in the grids, pixels.")] = 128,
    device: Annotated[str, typer.Option(help="Device for --evaluate.")] = "auto",
) -> None:
    """Write one self-contained HTML page comparing runs or image folders: image grids per prompt, metrics, scale plot.

    Per prompt, the image grids of each run side by side; the metrics table; a plot of diversity against guidance scale when the runs have several scales. The page is self-contained (images inlined as PNG or JPEG thumbnails, CSS and a small prompt filter inline, plots as SVG) and makes no network request.
    """
    from sparke.report import build_report
    from sparke.runs import RunError
    from sparke.runs.evaluation import evaluate_run, load_features, open_images
    from sparke.runs.generation import resolve_device

    with user_errors(), user_warnings():
        _check_out_file(out_file)
        check_distinct(runs)
        loaded = {run: open_images(run) for run in runs}  # each run or image folder read (and checked) once
        todo = _to_evaluate(runs, loaded, features, evaluate, device)
        if evaluate and todo:
            extractors: dict[str, object] = {}
            for run, (spec, opts) in todo.items():
                if spec not in extractors:
                    with err.status(f"loading features {spec} ..."):
                        extractors[spec] = load_features(spec, resolve_device(device))
                with err.status(f"evaluating {run} ..."):
                    result = evaluate_run(loaded[run], extractors[spec], **opts)
                for note in result.get("notes", []):
                    say(f"{run}: {note}", "warning")
        with err.status(f"writing {out_file} ..."):
            try:
                path = build_report(
                    runs, out_file, title=title, max_images=max_images, max_prompts=max_prompts, thumb=thumb
                )
            except OSError as error:
                raise RunError(f"{out_file}: cannot write ({error.strerror or error})") from None
    say(f"{path} ({human_size(path.stat().st_size)})", "report", console=out)


def _to_evaluate(runs: list[Path], loaded: dict, features: str, evaluate: bool, device: str) -> dict:
    """run -> (features, evaluate_run options) to evaluate it with: a run without metrics the defaults, a stale
    one its own (kernels, and the reference set and CLIP model it was evaluated with); with ``evaluate`` off a
    stale run keeps its old numbers, with a warning."""
    from sparke.runs.evaluation import DEFAULT_SIGMA_IMAGE, DEFAULT_SIGMA_PROMPT, metrics_stale, read_metrics
    from sparke.runs.generation import resolve_device

    todo: dict[Path, tuple[str, dict]] = {}
    opened: dict = {}  # reference sets and CLIP models of stale runs, shared by the runs that used them
    for run in runs:
        metrics = read_metrics(run)
        if metrics is None:
            todo[run] = (features, {})
            continue
        reason = metrics_stale(run, metrics)
        if reason is None:
            continue
        if not evaluate:
            say(
                f"{run / 'metrics.json'} is stale ({reason}); the report shows its old numbers: "
                f"run `sparke evaluate {run}` first",
                "warning",
            )
            continue
        k = metrics.get("kernels") or {}
        opts = {
            "kernel": k.get("kernel") or "gaussian",
            "sigma_image": k.get("sigma_image") or DEFAULT_SIGMA_IMAGE,
            "sigma_prompt": k.get("sigma_prompt") or DEFAULT_SIGMA_PROMPT,
        }
        spec = (metrics.get("features") or {}).get("image") or features
        say(f"{run / 'metrics.json'} is stale ({reason}): evaluating again", "note")
        extras = _recorded_extras(
            run, len(loaded[run].records), metrics, spec, resolve_device(device), opened
        )
        todo[run] = (spec, opts | extras)
    return todo


def _recorded_extras(
    run: Path, n_images: int, metrics: dict, encoder: str, device: str, opened: dict
) -> dict[str, object]:
    """The reference set and CLIP model a stale metrics.json was made with, reopened (once per report: ``opened``
    keeps them) so that evaluating the run again keeps its PRDC, Fréchet and CLIPScore; one that is gone or
    unusable is dropped with a warning naming what is lost."""
    from sparke.runs import RunError
    from sparke.runs.alignment import load_clip_scorer
    from sparke.runs.reference import check_prdc_sizes, open_reference

    extras: dict[str, object] = {}
    source = (metrics.get("reference") or {}).get("source")
    if source:
        try:
            if (source, encoder) not in opened:
                opened[source, encoder] = open_reference(source, encoder)
            check_prdc_sizes(n_images, opened[source, encoder], run)
            extras["reference"] = opened[source, encoder]
        except RunError as error:
            say(
                f"{run}: its reference cannot be used again ({error}); no PRDC or Fréchet this time",
                "warning",
            )
    model = (metrics.get("alignment") or {}).get("model")
    if model:
        try:
            if model not in opened:
                with err.status(f"loading CLIP {model} ..."):
                    opened[model] = load_clip_scorer(model, device)
            extras["clip"] = opened[model]
        except RunError as error:
            say(f"{run}: its CLIP model cannot be loaded again ({error}); no CLIPScore this time", "warning")
    return extras


def check_distinct(runs: list[Path]) -> None:
    """``RunError`` when one run folder is given twice (also as another spelling of the same path)."""
    from sparke.runs import RunError

    seen: dict[Path, Path] = {}
    for run in runs:
        key = run.resolve()
        if key in seen:
            also = "" if str(seen[key]) == str(run) else f" (also as {seen[key]})"
            raise RunError(f"{run}: given twice{also}; give each run once")
        seen[key] = run


def _check_out_file(out_file: Path) -> None:
    """``RunError`` when the page cannot be written where asked (its folder is not made: a typo would leave
    folders behind, as ``cp`` or ``git`` never do)."""
    from sparke.runs import RunError

    if out_file.is_dir():
        raise RunError(
            f"--out {out_file}: is a folder; give the HTML file to write, e.g. {out_file / 'report.html'}"
        )
    parent = out_file.parent
    if not parent.exists():
        raise RunError(f"--out {out_file}: no such folder {parent}; make it first (mkdir -p {parent})")
    if not parent.is_dir():
        raise RunError(f"--out {out_file}: {parent} is a file, not a folder")
