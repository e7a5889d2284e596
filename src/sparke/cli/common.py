"""Shared pieces of the commands: the consoles and the one-line handling of bad input."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

# results on stdout, messages and progress on stderr (so `sparke evaluate ... > table.txt` stays clean)
out = Console()
err = Console(stderr=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that the same tidy exit applies."""


# the label of each kind of message, and its colour
KINDS = {"error": "bold red", "warning": "yellow", "note": "yellow", "done": "green", "report": "green"}


def say(text: str, kind: str = "", *, console: Console | None = None) -> None:
    """Print one message: ``kind: text`` (kind coloured), or ``text`` alone. Every message of the commands
    goes through here: never soft-wrapped by rich (the terminal wraps a long line, and a test or a pipe reads
    it whole), no markup or highlighting read from the text. Messages go to stderr unless ``console=out``."""
    label = f"[{KINDS[kind]}]{kind}[/]: " if kind else ""
    (console or err).print(label + escape(text), highlight=False, soft_wrap=True)


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 image``, ``2 images``, ``1 batch``, ``3 batches``."""
    if count == 1:
        return f"{count} {noun}"
    return (
        f"{count:,} {plural_form or (noun + 'es' if noun.endswith(('s', 'ch', 'sh', 'x')) else noun + 's')}"
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red ``error:`` line on stderr and return the exit to raise."""
    message = " ".join(
        str(message).replace("Value error, ", "").split("\n")[0].split()
    )  # one line, no pydantic prefix
    say(message, "error")
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors(interrupted_hint: str = "") -> Iterator[None]:
    """Turn bad input (``RunError``) and interrupts into one line and a non-zero exit, with no traceback."""
    from sparke.runs import RunError

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise Interrupted()

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (e.g. inside a test runner's worker): keep the default
        previous = None
    try:
        yield
    except RunError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        say(f"interrupted{'; ' + interrupted_hint if interrupted_hint else ''}")
        raise typer.Exit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def user_warnings() -> Iterator[None]:
    """Show the library's warnings (weak guidance, a bank on another device, ...) as one yellow line each,
    once per message, instead of Python's two-line ``file:line: UserWarning`` form."""
    seen: set[str] = set()
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        text = str(message).strip()
        if text in seen:
            return
        seen.add(text)
        say(cli_wording(text), "warning")

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.simplefilter("always", RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous


# settings a library message may name (in backticks) that are options of the commands
OPTION_SETTINGS = frozenset(
    {"every", "window", "scale", "steps", "space", "centre", "sigma_image", "sigma_prompt", "kernel", "step"}
)


def cli_wording(text: str) -> str:
    """A library message in the command line's words: a setting named as `every` becomes --every."""

    def option(match: re.Match) -> str:
        name = match.group(1)
        return "--" + name.replace("_", "-") if name in OPTION_SETTINGS else match.group(0)

    return re.sub(r"`([a-z][a-z_]*)`", option, text)


def print_notes(notes: Iterable[str], where: str = "") -> None:
    """What a command repaired or noticed, one yellow line each on stderr."""
    for note in notes:
        say(note, "note")


def setting_value(raw: str) -> Any:
    """A ``KEY=VALUE`` option's value: JSON where it parses (1.5, true, [0, 0.5]), else the text itself."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def human_size(size: int) -> str:
    """``532 bytes``, ``14.2 kB``, ``3.1 MB``, ``1.20 GB`` (powers of 1000, like ``ls --si``)."""
    if size < 1000:
        return f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            value = size / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{size} bytes"


@contextlib.contextmanager
def image_progress(label: str) -> Iterator[Any]:
    """A progress bar on stderr for streamed images: ``callback(what, done, total)`` draws one bar per
    ``what`` ("images", "reference"), with images per second; hidden when stderr is not a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f} images/s")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate())
    tasks: dict[str, Any] = {}
    with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True) as bar:

        def callback(what: str, done: int, total: int) -> None:
            if what not in tasks:  # a resumed count starts the bar there, without counting as speed
                tasks[what] = bar.add_task(f"{label} {what}", total=total, completed=done)
            else:
                bar.update(tasks[what], completed=done)

        yield callback
