"""``make demo``: the embedded model with and without SPARKE, evaluated, in one HTML report.

    python -m sparke.cli.demo --out runs/demo

Six clusters of paraphrased prompts (4 prompts each, from ``sparke.embedded.prompt_clusters``), 4 images per
prompt, 10 DPM-Solver++ steps with classifier-free guidance 4 (the benchmark's sampler), two runs:

- ``none``: the model alone;
- ``sparke``: SPARKE at its defaults (scale 0.03, the clean estimate x0 with each channel's mean removed, moved
  by the warped motion step, at the steps ``every="span"`` places by noise level: 5 of the 10): the images of
  one cluster push each other apart in layout while the prompt fixes shape, colour and count (README.md's
  results table gives what it does on held-out prompt sets).

Then ``sparke evaluate`` (embedded encoder, MiniLM prompts, 95% intervals over the clusters) and ``sparke
report``. It calls the same functions as the commands, so the equivalent commands are

    sparke generate --prompts runs/demo/prompts.jsonl -n 4 --steps 10 --batch-size 8 --method none \\
        --out runs/demo/none
    sparke generate --prompts runs/demo/prompts.jsonl -n 4 --steps 10 --batch-size 8 --method sparke \\
        --out runs/demo/sparke
    sparke evaluate runs/demo/none runs/demo/sparke
    sparke report runs/demo/none runs/demo/sparke --out runs/demo/report.html

96 images per run is far too few to tell a 10% difference from noise: the report says so, shows the
intervals, and lists per cluster which positions, sizes and backgrounds occur. ``sparke bench`` is the
place for conclusions. Rerunning resumes (finished runs are skipped); a run folder left by an older version
with other settings is moved aside (``NAME.before-TIME``) and made again. About 3 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# (folder, method, scale, settings): SPARKE at its defaults, as `SPARKE()` and `sparke bench` run it
RUNS: list[tuple[str, str, float | None, dict]] = [
    ("none", "none", 0.0, {}),
    ("sparke", "sparke", None, {}),
]


def write_prompts(path: Path, clusters: int, per_cluster: int, seed: int) -> list:
    """The demo's prompt set as a .jsonl prompt file (prompt, cluster, required attributes)."""
    from sparke.embedded.world import prompt_clusters
    from sparke.runs import PromptEntry, atomic_write

    entries = [
        PromptEntry(p, c.name, dict(c.required))
        for c in prompt_clusters(clusters, per_cluster, seed=seed)
        for p in c.prompts
    ]
    lines = [json.dumps({"prompt": e.prompt, "cluster": e.cluster, "required": e.required}) for e in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    return entries


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="SPARKE demo on the embedded model (see the module docstring)."
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder (default runs/demo)")
    parser.add_argument("--clusters", type=int, default=6, help="prompt clusters (default 6)")
    parser.add_argument("--prompts", type=int, default=4, help="paraphrases per cluster (default 4)")
    parser.add_argument("--images", type=int, default=4, help="images per prompt (default 4)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--prompt-seed", type=int, default=3, help="seed of the prompt clusters (default 3)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    return parser


def _make_runs(args: argparse.Namespace) -> tuple[list[Path], list[dict[str, Any]], Path]:
    """Generate (or resume) the demo's runs, evaluate them, write the report: (folders, results, report)."""
    from sparke.cli.common import err
    from sparke.cli.generate import run_with_progress
    from sparke.methods import METHODS, resolve_settings
    from sparke.report import build_report
    from sparke.runs import RunConfig
    from sparke.runs.evaluation import evaluate_run, load_features
    from sparke.runs.generation import load_model, resolve_device

    entries = write_prompts(args.out / "prompts.jsonl", args.clusters, args.prompts, args.prompt_seed)
    device = resolve_device(args.device)
    with err.status("loading the embedded model ..."):
        pipe = load_model("embedded", device, "float32")
    folders = []
    for name, method, scale, settings in RUNS:
        config = RunConfig(
            prompts=entries,
            model="embedded",
            method=method,
            scale=METHODS[method].default_scale if scale is None else scale,
            settings=resolve_settings(METHODS[method], settings),
            images_per_prompt=args.images,
            steps=args.steps,
            seed=args.seed,
            batch_size=8,
            dtype="float32",
        )
        folder = args.out / name
        _move_aside_if_other(folder, config)
        run_with_progress(config, folder, pipe=pipe, label=f"{name:<12}")
        folders.append(folder)
    del pipe
    with err.status("evaluating ..."):
        extractor = load_features("embedded", device)
        results = [evaluate_run(folder, extractor) for folder in folders]
    report = build_report(folders, args.out / "report.html", title="SPARKE demo: the embedded shapes model")
    return folders, results, report


def _results_table(folders: list[Path], results: list[dict[str, Any]]) -> Any:
    """The rich table of the runs' overall figures, each run's Cond-Vendi against the first run's."""
    from rich import box
    from rich.table import Table

    table = Table(title="Demo: diversity and fidelity", title_justify="left", box=box.SIMPLE_HEAD)
    for column in (
        "run",
        "Cond-Vendi",
        "vs none",
        "Vendi",
        "in-batch\nsim",
        "prompt\nmatch",
        "shape+\ncolour",
    ):
        table.add_column(
            column, justify="left" if column == "run" else "right", no_wrap=column == "Cond-Vendi"
        )
    base = results[0]["overall"]["cond_vendi"]
    for folder, result in zip(folders, results, strict=True):
        o = result["overall"]
        ci = o.get("ci", {}).get("cond_vendi")
        change = f"{100 * (o['cond_vendi'] / base - 1):+.0f}%" if folder.name != "none" else ""
        table.add_row(
            folder.name,
            f"{o['cond_vendi']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""),
            change,
            f"{o['vendi']:.2f}",
            f"{o['in_batch_similarity']:.3f}",
            "-" if o.get("match_rate") is None else f"{o['match_rate']:.3f}",
            "-" if o.get("match_shape_colour") is None else f"{o['match_shape_colour']:.3f}",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    import typer

    from sparke.cli.common import out, say, user_errors

    start = time.perf_counter()
    try:
        with user_errors("rerun `make demo` to resume"):
            folders, results, report = _make_runs(args)
    except typer.Exit as stop:  # user_errors' exit: its one line is printed
        return int(stop.exit_code)
    out.print(_results_table(folders, results))
    n_images = results[0]["overall"]["n_images"]
    say(
        f"[Cond-Vendi with its 95% interval over the prompt clusters.] With {n_images} images per run the "
        "differences are rough (a few images move a rate by points); `sparke bench` (docs/benchmark.md) "
        "measures them with enough images and paired intervals.",
        console=out,
    )
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    say(f"wall time: {int(minutes)} min {seconds:.0f} s", console=out)
    say(f"report: {report}", console=out)
    return 0


def _move_aside_if_other(folder: Path, config: Any) -> None:
    """A demo folder made with other settings (an older version's) is renamed, not refused: the demo remakes it."""
    from sparke.cli.common import say
    from sparke.runs import RunFolder, config_differences, unresolved_keys

    stored = RunFolder(folder).read_config()  # a damaged run.json: its RunError says so, as a run would
    if stored is not None and config_differences(stored, config.to_json(), unresolved_keys(config)):
        aside = folder.with_name(f"{folder.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(aside)
        say(f"{folder} was made with other settings: moved to {aside.name}, making it again")


def _ensure_passive_openmp() -> None:
    """Re-run this module with OMP_WAIT_POLICY=PASSIVE unless it is set: on a busy 2-core machine OpenMP's
    spinning threads make torch up to 10x slower, and the setting only takes effect before torch loads."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    os.execve(sys.executable, [sys.executable, "-m", "sparke.cli.demo", *sys.argv[1:]], env)


if __name__ == "__main__":
    _ensure_passive_openmp()
    sys.exit(main())
