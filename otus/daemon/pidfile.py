"""Exclusive lock files: the PID file, and a lock beside the control socket.

The lock is an ``flock`` held for the daemon's life, so liveness needs no guessing: a file left
by a crashed (even SIGKILLed) daemon is unlocked and simply taken over, while a live daemon's
lock makes the second one fail at once with the holder's PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from otus.core.errors import OtusError

__all__ = ["DaemonRunningError", "LockFile"]


class DaemonRunningError(OtusError):
    """Another daemon holds the PID file or the socket."""


class LockFile:
    """An flock'ed file holding our PID."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock and write our PID; raise DaemonRunningError when another process holds it."""
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OtusError(f"cannot open {self.what} {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DaemonRunningError(
                f"another otus daemon is running (pid {other}, {self.what} {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the file (while still holding the lock), then unlock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == self.path.stat().st_ino:
                self.path.unlink()
        os.close(self._fd)
        self._fd = None
