"""The ``sparke`` command line: ``sparke generate``, ``evaluate``, ``report``, ``repair``, ``bench``, ``methods``.

Each command lives in its own module and imports torch, diffusers and the rest only when it runs, so
``sparke --help`` answers at once. ``main()`` is the console script (``sparke``), also reached through
``python -m sparke`` and ``python -m sparke.cli``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from .bench import bench_command
from .evaluate import evaluate_command
from .generate import generate_command
from .methods import methods_command
from .repair import repair_command
from .report import report_command

__all__ = ["app", "main"]


@contextlib.contextmanager
def _no_leading_blank_line() -> Iterator[None]:
    """typer's rich help pads its usage line with a blank line above; the first thing shown is the usage."""
    from typer import rich_utils

    original = rich_utils.Padding
    state = {"first": True}

    def padding(renderable: Any, pad: Any = (0, 0, 0, 0), **kwargs: Any) -> Any:
        if state["first"] and pad == 1:
            state["first"] = False
            pad = (0, 1, 1, 1)
        return original(renderable, pad, **kwargs)

    rich_utils.Padding = padding  # type: ignore[assignment]
    try:
        yield
    finally:
        rich_utils.Padding = original  # type: ignore[assignment]


class _Group(TyperGroup):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _no_leading_blank_line():
            return super().format_help(ctx, formatter)


class _Command(TyperCommand):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _no_leading_blank_line():
            return super().format_help(ctx, formatter)


app = typer.Typer(
    cls=_Group,
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


def _version(value: bool) -> None:
    if value:
        from sparke import __version__

        typer.echo(f"sparke {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version of sparke and exit."
        ),
    ] = False,
) -> None:
    """Prompt-aware diversity guidance (SPARKE) for diffusers pipelines."""


# bare `sparke generate` says which options it needs (an error line) rather than dumping the whole help
app.command("generate", cls=_Command)(generate_command)
app.command("evaluate", no_args_is_help=True, cls=_Command)(evaluate_command)
app.command("report", no_args_is_help=True, cls=_Command)(report_command)
app.command("repair", no_args_is_help=True, cls=_Command)(repair_command)
app.command("methods", cls=_Command)(methods_command)
app.command("bench", no_args_is_help=True, cls=_Command)(bench_command)


def main() -> None:
    """Entry point of the ``sparke`` console script."""
    app(prog_name="sparke")
