"""The ``sparke`` command line: ``sparke generate``, ``evaluate``, ``report``, ``repair``, ``bench``, ``methods``.

Each command lives in its own module and imports torch, diffusers and the rest only when it runs, so
``sparke --help`` answers at once. ``main()`` is the console script (``sparke``), also reached through
``python -m sparke`` and ``python -m sparke.cli``.
"""

from __future__ import annotations

import contextlib
import inspect
import re
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

    original_table = rich_utils.Table

    class Table(original_table):  # type: ignore[misc, valid-type]
        """Option names never cut: on a narrow terminal ("--images-per-pro…" at 60 columns) the help text
        wraps instead; the option-name columns are kept whole, the metavar and help columns fold."""

        def add_row(self, *renderables: Any, **kwargs: Any) -> None:
            super().add_row(*renderables, **kwargs)
            for column in self.columns[:-2]:
                column.no_wrap = True
            self.columns[-1].overflow = "fold"  # a word longer than the help column breaks, never "…"

    rich_utils.Padding = padding  # type: ignore[assignment]
    rich_utils.Table = Table  # type: ignore[misc]
    try:
        yield
    finally:
        rich_utils.Padding = original  # type: ignore[assignment]
        rich_utils.Table = original_table  # type: ignore[misc]


def usage_error_line(error: Any) -> str:
    """A command-line syntax error of click (unknown option, not a number, missing value) as sparke's one line:
    ``--images-per-prompt/-n: 'abc' is not a valid integer; `sparke generate --help` lists the options``."""
    message = error.format_message()
    param = getattr(error, "param", None)
    if type(error).__name__ == "BadParameter" and getattr(param, "opts", None):  # typer's own click copy
        message = f"{'/'.join(param.opts)}: {error.message.replace('Value error, ', '')}"
    ctx = getattr(error, "ctx", None)
    hint = f"; `{ctx.command_path} --help` lists the options" if ctx is not None else ""
    return " ".join(message.split()).rstrip(".") + hint


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """typer draws click's usage errors in a box; sparke's errors are one ``error:`` line. The exit code stays
    click's 2 (the command line itself is malformed), 1 being a well-formed command whose values are refused."""
    from typer import rich_utils

    from .common import say

    original = rich_utils.rich_format_error

    def one_line(error: Any) -> None:
        if error.__class__.__name__ != "NoArgsIsHelpError":  # that one shows the help instead
            say(usage_error_line(error), "error")

    rich_utils.rich_format_error = one_line  # type: ignore[assignment]
    try:
        yield
    finally:
        rich_utils.rich_format_error = original  # type: ignore[assignment]


class _Group(TyperGroup):
    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _no_leading_blank_line():
            return super().format_help(ctx, formatter)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage_errors():
            return super().main(*args, **kwargs)


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


def _help(command: Any) -> str:
    """A command's docstring as typer's help: the lines of each paragraph joined (typer would keep the
    source's line breaks), paragraphs kept apart; the first paragraph is the one-line summary of `sparke --help`."""
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(command.__doc__ or ""))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _add(name: str, command: Any, **kwargs: Any) -> None:
    app.command(name, cls=_Command, help=_help(command), **kwargs)(command)


# bare `sparke generate` says which options it needs (an error line) rather than dumping the whole help
_add("generate", generate_command)
_add("evaluate", evaluate_command, no_args_is_help=True)
_add("report", report_command, no_args_is_help=True)
_add("repair", repair_command, no_args_is_help=True)
_add("methods", methods_command)
_add("bench", bench_command, no_args_is_help=True)


def main() -> None:
    """Entry point of the ``sparke`` console script."""
    app(prog_name="sparke")
