"""``sparke repair``: rebuild a damaged run folder's manifest, then finish the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import out, plural, print_notes, say, user_errors, user_warnings


def repair_command(
    run: Annotated[
        Path, typer.Argument(help="The run folder made by `sparke generate`.", show_default=False)
    ],
    generate: Annotated[
        bool,
        typer.Option(
            "--generate/--no-generate",
            help="Then make the dropped images again (and the rest of an unfinished run), as rerunning the "
            "run's `sparke generate` command would.",
        ),
    ] = True,
    device: Annotated[str, typer.Option(help="Device for --generate: auto, cpu, cuda, ...")] = "auto",
) -> None:
    """Rebuild DIR/manifest.jsonl from the images and DIR/run.json, dropping damaged lines and images.

    Keeps every valid line whose image is whole (its recorded size and sha256), rebuilds the line of every
    whole image that lost its line, drops the rest; then makes the dropped images again, bit-exactly, from the
    saved bank (unless --no-generate).
    """
    from sparke.runs.repair import repair

    from .generate import print_summary, run_with_progress

    with user_errors("rerun `sparke repair` to finish"), user_warnings():
        summary = repair(run)
        print_notes(summary.notes)
        parts = [f"{plural(summary.kept, 'image')} kept"]
        if summary.rebuilt:
            parts.append(f"{plural(summary.rebuilt, 'line')} rebuilt from their images")
        if summary.dropped_lines:
            parts.append(f"{plural(summary.dropped_lines, 'damaged line')} dropped")
        if summary.dropped_images:
            parts.append(f"{plural(len(summary.dropped_images), 'damaged or missing image')} dropped")
        verb = "repaired" if summary.changed else "nothing to repair in"
        say(f"{verb} {run}: {', '.join(parts)}", console=out)
        if not summary.todo:
            return
        if not generate:
            say(
                f"{plural(summary.todo, 'image')} to make: rerun the run's `sparke generate` command, or "
                f"`sparke repair {run}`",
                console=out,
            )
            return
        result = run_with_progress(summary.config, run, device=device)
    print_summary(result)
