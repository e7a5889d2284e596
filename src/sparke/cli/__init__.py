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

__all__ = ["COMMANDS", "app", "main"]

# name -> (module, function, typer options, the summary `sparke --help` lists). Each command's module is
# imported only when that command runs or shows its own help, so `sparke --help` imports no torch;
# tests/test_cli_startup.py checks that each summary is its function's docstring's first paragraph.
COMMANDS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    # bare `sparke generate` says which options it needs (an error line) rather than dumping the whole help
    "generate": (
        "generate",
        "generate_command",
        {},
        "Generate images for a prompt set into a run folder; rerun the same command to resume it.",
    ),
    "evaluate": (
        "evaluate",
        "evaluate_command",
        {"no_args_is_help": True},
        "Diversity of runs or image folders: Vendi, RKE, Cond-Vendi, Cond-RKE, in-batch similarity (overall "
        "and per cluster); with --reference, precision, recall, density, coverage and Fréchet distance; with "
        "--clip, CLIPScore.",
    ),
    "report": (
        "report",
        "report_command",
        {"no_args_is_help": True},
        "Write one self-contained HTML page comparing runs or image folders: image grids per prompt, "
        "metrics, scale plot.",
    ),
    "repair": (
        "repair",
        "repair_command",
        {"no_args_is_help": True},
        "Rebuild DIR/manifest.jsonl from the images and DIR/run.json, dropping damaged lines and images.",
    ),
    "shield": (
        "shield",
        "shield_command",
        {"no_args_is_help": True},
        "Make a SPELL shield from images: their x0 rows in the model's own space, for `sparke generate "
        "--method spell --shield FILE`.",
    ),
    "methods": (
        "methods",
        "methods_command",
        {},
        "List the generation methods: what each does, its paper, its default scale and settings.",
    ),
    "bench": (
        "bench",
        "bench_command",
        {"no_args_is_help": True},
        "Benchmark SPARKE against the baselines on the embedded model, with ground truth.",
    ),
}


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
            if renderables:  # the help cell: typer's Columns of Text pieces, each with its own overflow
                for piece in getattr(renderables[-1], "renderables", [renderables[-1]]):
                    if hasattr(piece, "overflow"):
                        piece.overflow = "fold"

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
    """The ``sparke`` group: commands built on first use from ``COMMANDS``; its own help lists their summaries
    without importing them."""

    _listing = False
    _built: dict[str, Any] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in COMMANDS:
            return None
        if self._listing:
            return TyperCommand(name=name, help=COMMANDS[name][3])
        if name not in self._built:
            self._built[name] = _build(name)
        return self._built[name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            with _no_leading_blank_line():
                return super().format_help(ctx, formatter)
        finally:
            self._listing = False

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


def _build(name: str) -> Any:
    """The click command of ``name``: its module imported, its function wrapped by typer."""
    from importlib import import_module

    module, function, options, _ = COMMANDS[name]
    command = getattr(import_module(f"sparke.cli.{module}"), function)
    single = typer.Typer(rich_markup_mode="rich", add_completion=False, pretty_exceptions_show_locals=False)
    single.command(name, cls=_Command, help=_help(command), **options)(command)
    built = typer.main.get_command(single)
    built.context_settings = {"help_option_names": ["-h", "--help"], **(built.context_settings or {})}
    return built


def main() -> None:
    """Entry point of the ``sparke`` console script."""
    app(prog_name="sparke")
