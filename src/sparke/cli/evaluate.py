"""``sparke evaluate``: diversity metrics of run folders or plain image folders, as a table and a metrics JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sparke.core.defaults import SIGMA_IMAGE, SIGMA_PROMPT

from .common import err, image_progress, say, user_errors, user_warnings
from .common import out as console


def evaluate_command(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders made by `sparke generate`, or image folders with metadata.jsonl or metadata.csv "
            "(columns file_name and prompt).",
            show_default=False,
        ),
    ],
    features: Annotated[
        str,
        typer.Option(
            help="Image features: 'embedded' (the shapes encoder), or a CLIP / DINOv2 model folder or hub id "
            "(transformers).",
        ),
    ] = "embedded",
    kernel: Annotated[str, typer.Option(help="gaussian or cosine, on L2-normalised features.")] = "gaussian",
    sigma_image: Annotated[float, typer.Option(help="Gaussian bandwidth on image features.")] = SIGMA_IMAGE,
    sigma_prompt: Annotated[
        float, typer.Option(help="Gaussian bandwidth on prompt features (MiniLM).")
    ] = SIGMA_PROMPT,
    per_cluster: Annotated[
        bool,
        typer.Option("--per-cluster/--overall-only", help="Also print one table per run by prompt cluster."),
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per feature-extractor call.")] = 64,
    prompt_column: Annotated[
        str, typer.Option(help="The prompt column of an image folder's metadata.")
    ] = "prompt",
    out: Annotated[
        Path | None,
        typer.Option(help="Write the metrics JSON here instead of FOLDER/metrics.json (one folder only)."),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Reference images (a folder) or their saved features (a features-*.safetensors file written "
            "by this command with the same --features): adds precision, recall, density, coverage (k=5) "
            "and the Fréchet distance.",
        ),
    ] = None,
    clip: Annotated[
        str | None,
        typer.Option(help="A CLIP model folder or hub id (transformers CLIPModel): adds CLIPScore."),
    ] = None,
) -> None:
    """Diversity of runs or image folders: Vendi, RKE, Cond-Vendi, Cond-RKE, in-batch similarity (overall and per cluster); with --reference, precision, recall, density, coverage and Fréchet distance; with --clip, CLIPScore.

    Image features from --features, prompt features from all-MiniLM-L6-v2, both L2-normalised; Gaussian kernels exp(-|a-b|^2 / 2 sigma^2). Runs of the embedded model also get the checker's prompt-match rate. Writes FOLDER/metrics.json (or --out) for each folder, and the image features beside it (features-*.safetensors), read back on the next call.
    """
    from sparke.runs.evaluation import evaluate_run, load_features
    from sparke.runs.generation import resolve_device

    from .report import check_distinct

    with user_errors("the features done so far are kept; run the same command to resume"), user_warnings():
        check_distinct(runs)
        folders, ref = _check_inputs(runs, prompt_column, out, reference, features)  # before any model
        with err.status(f"loading features {features} ..."):
            extractor = load_features(features, resolve_device(device), batch_size)
        scorer = None
        if clip is not None:
            from sparke.runs.alignment import load_clip_scorer

            with err.status(f"loading CLIP {clip} ..."):
                scorer = load_clip_scorer(clip, resolve_device(device), batch_size)
        results = []
        for run, folder in zip(runs, folders, strict=True):
            with image_progress(str(run)) as progress:
                results.append(
                    evaluate_run(
                        folder,
                        extractor,
                        kernel=kernel,
                        sigma_image=sigma_image,
                        sigma_prompt=sigma_prompt,
                        out=out,
                        reference=ref,
                        clip=scorer,
                        progress=progress,
                    )
                )
    console.print(metrics_table(results, title="Diversity"))
    k = results[0]["kernels"]
    bandwidths = (
        f", sigma image {k['sigma_image']}, sigma prompt {k['sigma_prompt']}"
        if k["kernel"] == "gaussian"
        else ""
    )
    say(
        f"features: {results[0]['features']['image']} ({results[0]['features']['image_dim']}-d) and MiniLM prompts; "
        f"{k['kernel']} kernel{bandwidths}",
        console=console,
    )
    for run, result in zip(runs, results, strict=True):
        for note in result.get("notes", []):
            say(f"{run}: {note}", "warning")
    if per_cluster:
        for result in results:
            console.print(cluster_table(result))
    for run in runs:
        say(f"wrote {out or run / 'metrics.json'}", console=console)


def _check_inputs(
    runs: list[Path], prompt_column: str, out: Path | None, reference: Path | None, features: str
) -> tuple[list[Any], Any]:
    """Read every folder and decode every plain folder's images, check --out and --reference: a bad input
    is refused before any model is loaded or any file written."""
    from sparke.runs import RunError
    from sparke.runs.evaluation import load_run
    from sparke.runs.folder import MANIFEST_FILE
    from sparke.runs.imagefolder import read_image_folder

    if out is not None and len(runs) > 1:
        raise RunError(f"--out {out}: give one folder with --out, not {len(runs)}")
    if out is not None and not out.parent.is_dir():
        raise RunError(f"--out {out}: no such folder {out.parent}")
    folders = []
    for run in runs:
        if (run / MANIFEST_FILE).is_file():
            folder = load_run(run)
        else:
            folder = read_image_folder(run, prompt_column)
            folder.verify()
        folders.append(folder)
    ref = None
    if reference is not None:
        from sparke.runs.reference import check_prdc_sizes, open_reference

        ref = open_reference(reference, features)
        for run, folder in zip(runs, folders, strict=True):
            check_prdc_sizes(len(folder.records), ref, run)
    return folders, ref


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metrics_table(results: list[dict[str, Any]], title: str = "") -> Any:
    """A rich table with one column per run and one row per metric (fits 80 columns for a few runs)."""
    from rich import box
    from rich.table import Table

    from sparke.runs.evaluation import METRICS

    table = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("", no_wrap=True)
    for r in results:
        table.add_column(str(r["run"]), justify="right", overflow="fold")
    methods = []
    for r in results:
        if r.get("method") is None:  # a plain image folder
            methods.append("-")
            continue
        methods.append(str(r["method"]) + (f" {r['scale']:g}" if r.get("scale") else ""))
    table.add_row("method", *methods)
    table.add_row("images", *[str(r["n_images"]) for r in results])
    for metric, (label, higher) in METRICS.items():
        values = [r["overall"].get(metric) for r in results]
        if all(v is None for v in values):
            continue
        digits = 3 if metric in ("in_batch_similarity", "match_rate", "match_shape_colour") else 2
        table.add_row(f"{label} {'↑' if higher else '↓'}", *[_fmt(v, digits) for v in values])
    return table


def cluster_table(result: dict[str, Any]) -> Any:
    """A rich table of one run's metrics by prompt cluster."""
    from rich import box
    from rich.table import Table

    from sparke.runs.evaluation import METRICS

    table = Table(
        title=f"{result['run']} by cluster", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("cluster", overflow="fold", min_width=12)
    table.add_column("n", justify="right")
    shown = [m for m in METRICS if any(c.get(m) is not None for c in result["clusters"])]
    for metric in shown:
        # two-line headers keep the table within 80 columns
        header = METRICS[metric][0].replace("Cond-", "Cond-\n").replace(" ", "\n").replace("+", "+\n")
        table.add_column(header, justify="right")
    for c in result["clusters"]:
        table.add_row(
            str(c["cluster"]),
            str(c["n_images"]),
            *[
                _fmt(c.get(m), 3 if m in ("in_batch_similarity", "match_rate", "match_shape_colour") else 2)
                for m in shown
            ],
        )
    return table
