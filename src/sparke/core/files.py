"""Files as any Unix tool writes them: temporary files in the target's folder get the mode that ``open`` would
have given (0666 less the umask), not ``tempfile.mkstemp``'s 0600."""

from __future__ import annotations

import os

__all__ = ["honour_umask", "process_umask"]


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
