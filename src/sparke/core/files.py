"""Files as any Unix tool writes them: whole or not at all (``atomic_write``), with the mode that ``open`` would
have given (0666 less the umask), not ``tempfile.mkstemp``'s 0600."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "honour_umask", "process_umask"]


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[str], None]) -> None:
    """Write ``path`` whole or not at all: into a temporary file in its folder, given the umask's mode,
    fsynced, then renamed over ``path`` (a crash leaves the old file or the new one, and at most a stray
    ``.NAME.*.tmp``). ``data``: the bytes, or a function that writes the file at the path it is given (for
    writers that take a file name, as safetensors' does)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # a missing or read-only folder: name the user's path, not the temporary one
        raise _about(error, path) from None
    os.close(fd)
    try:
        if callable(data):
            data(tmp)
        else:
            Path(tmp).write_bytes(data)
        honour_umask(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise _about(error, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _about(error: OSError, path: Path) -> OSError:
    """The same error, about ``path``: ``[Errno 2] No such file or directory: 'out/bank.safetensors'``."""
    if error.errno is None:
        return error
    return type(error)(error.errno, error.strerror, str(path))


def process_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read (set and restore)
    os.umask(mask)
    return mask


def honour_umask(target: int | str | os.PathLike, mode: int = 0o666) -> None:
    """Give a file made by ``tempfile.mkstemp`` (always 0600) the mode ``open`` would have given it:
    ``mode`` less the umask, as any Unix tool does. ``target``: a file descriptor or a path."""
    wanted = mode & ~process_umask()
    try:
        if isinstance(target, int):
            os.fchmod(target, wanted)
        else:
            os.chmod(target, wanted)
    except (OSError, AttributeError, NotImplementedError):
        pass  # a file system without modes (or Windows): nothing to honour
