"""The ``sparke`` command line: ``sparke generate``, ``evaluate``, ``report`` and ``methods``.

Each command lives in its own module and imports torch, diffusers and the rest only when it runs, so
``sparke --help`` answers at once. ``main()`` is the console script (``sparke``), also reached through
``python -m sparke`` and ``python -m sparke.cli``.
"""

from __future__ import annotations

import typer

from .evaluate import evaluate_command
from .generate import generate_command
from .methods import methods_command
from .report import report_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="sparke",
    help=(
        "Prompt-aware diversity guidance (SPARKE, arXiv 2506.10173) for diffusers pipelines.\n\n"
        "Generate images with and without guidance, measure their diversity, compare the runs in one HTML page:\n\n"
        "  sparke generate --prompts prompts.txt --method none   --out runs/none\n\n"
        "  sparke generate --prompts prompts.txt --method sparke --out runs/sparke\n\n"
        "  sparke evaluate runs/none runs/sparke\n\n"
        "  sparke report runs/none runs/sparke --out report.html"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("generate", no_args_is_help=True)(generate_command)
app.command("evaluate", no_args_is_help=True)(evaluate_command)
app.command("report", no_args_is_help=True)(report_command)
app.command("methods")(methods_command)
app.command("bench", no_args_is_help=True)(__import__("sparke.cli.bench", fromlist=["x"]).bench_command)


def main() -> None:
    """Entry point of the ``sparke`` console script."""
    app(prog_name="sparke")
