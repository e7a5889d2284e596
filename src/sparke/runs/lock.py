"""The run folder's lock: one process writes a run folder at a time.

``DIR/.sparke.lock`` holds the writer's pid, host and start time (JSON). The lock itself is an advisory
``flock`` on that file, which the system drops when the process dies however it dies, so a lock file left
by a killed run is stale and the next writer takes it over (with a note). On a file system without
``flock`` the pid decides: a lock of a dead process on this host is stale; one from another host is
respected until its file is removed by hand.

A second writer is refused at once with the holder's pid and host. Under a launcher (torchrun) rank 0
holds the lock for all ranks (``sparke.runs.distributed``).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from .config import RunError
from .folder import LOCK_FILE

__all__ = ["RunLock", "read_holder"]

try:
    import fcntl
except ImportError:  # Windows: pid files only
    fcntl = None  # type: ignore[assignment]

_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}


def _host() -> str:
    return socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True
    return True


def read_holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``{"pid", "host", "started", ...}`` written in a lock file, or None when absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that left no details"
    text = f"pid {holder.get('pid')} on {holder.get('host')}"
    if holder.get("started"):
        text += f", since {holder['started']}"
    return text


class RunLock:
    """``with RunLock(folder): ...``, or ``note = lock.acquire()`` ... ``lock.release()``.

    ``acquire`` raises ``RunError`` naming the holder when another process holds the folder; it returns a
    note when it took over a stale lock file (None otherwise).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, holder: dict[str, Any] | None) -> RunError:
        return RunError(
            f"{self.folder}: another sparke process is writing this run folder ({_describe(holder)}); "
            f"wait for it to finish or stop it (lock file {self.path})"
        )

    def acquire(self) -> str | None:
        if self._fd is not None:
            return None
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise RunError(
                    f"{self.path}: cannot create the lock file ({error.strerror or error})"
                ) from None
            locked = False
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except OSError as error:
                    if error.errno in _BUSY:
                        holder = read_holder(self.path)
                        os.close(fd)
                        raise self._refuse(holder) from None
                    # ENOLCK, EOPNOTSUPP, ...: no flock on this file system; the pid decides below
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed it between our open and our flock: try again
                os.close(fd)
                continue
            previous = read_holder(self.path)
            if not locked and previous and not self._stale(previous):
                os.close(fd)
                raise self._refuse(previous)
            note = None
            if previous and previous.get("pid") is not None:
                note = f"took over the stale lock of {_describe(previous)}, which is no longer running"
            info = {
                "pid": os.getpid(),
                "host": _host(),
                "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv[:1] + sys.argv[1:6]),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            self._fd = fd
            return note
        raise RunError(f"{self.path}: the lock file keeps changing; is another process starting here?")

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        if holder.get("host") != _host() or not isinstance(pid, int):
            return False  # cannot tell: respected
        return pid != os.getpid() and not _alive(pid)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)  # while still holding the flock: a waiting writer re-checks the inode
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
