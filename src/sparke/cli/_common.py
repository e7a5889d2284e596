"""Shared pieces of the commands: the consoles and the one-line handling of bad input."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import typer
from rich.console import Console

# results on stdout, messages and progress on stderr (so `sparke evaluate ... > table.txt` stays clean)
out = Console()
err = Console(stderr=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so that the same tidy exit applies."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red line on stderr and return the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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
        err.print(
            f"[yellow]interrupted[/]{'; ' + interrupted_hint if interrupted_hint else ''}", highlight=False
        )
        raise typer.Exit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
