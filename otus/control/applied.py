"""The Kafka plane's record of the command ids this agent took: bounded, durable, append-only.

One JSON object per line, appended and fsync'ed before the step it records:

- ``{"id": ..., "status": "pending", "command": ..., "at": <unix s>}`` before a command is applied;
- ``{"id": ..., "status": "done", "ok": true|false, "code": N|null, "message": ...}`` after;
- ``{"id": ..., "status": "released"}``: the command was refused because the daemon is stopping,
  so it was not applied and the next start may take it (its offset was not committed).

Loading replays the lines (a torn last line from a crash is skipped). Only the newest ``max_ids``
ids are kept; when the file holds twice that many lines it is rewritten with the kept entries
(temporary file, fsync, rename, fsync of the directory), so it stays bounded.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

__all__ = ["AppliedLog"]

_MAX_FILE_BYTES = 256 << 20  # larger is not ours
_MESSAGE_MAX = 300


class AppliedLog:
    """Command id -> what became of it (``status``, ``ok``, ``code``, ``message``)."""

    def __init__(self, path: Path | None, max_ids: int) -> None:
        self.path = path
        self.max_ids = max_ids
        self.entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.bad_lines = 0
        self._lines = 0

    def load(self) -> None:
        """Read the file (a missing one is empty); compact it if it grew long."""
        if self.path is None:
            return
        try:
            with self.path.open("rb") as f:
                raw = f.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        if len(raw) > _MAX_FILE_BYTES:
            raise OSError(f"{self.path}: over {_MAX_FILE_BYTES} bytes, not a command record")
        for line in raw.splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                self.bad_lines += 1  # a torn last line after a crash, or damage
                continue
            self._lines += 1
            self._apply(entry)
        if self._lines > 2 * max(len(self.entries), 1) + 16:
            self._rewrite()

    def get(self, cid: str) -> dict[str, Any] | None:
        """What is recorded for a command id."""
        return self.entries.get(cid)

    def begin(self, cid: str, command: str) -> None:
        """Record that ``cid`` is being applied (durably, before applying it)."""
        self._append({"id": cid, "status": "pending", "command": command, "at": time.time()})

    def finish(self, cid: str, *, ok: bool, code: int | None = None, message: str = "") -> None:
        """Record the outcome."""
        entry: dict[str, Any] = {"id": cid, "status": "done", "ok": ok, "code": code}
        if message:
            entry["message"] = message[:_MESSAGE_MAX]
        self._append(entry)

    def release(self, cid: str) -> None:
        """Forget ``cid``: it was not applied, and may be taken again."""
        self._append({"id": cid, "status": "released"})

    # -- internals -------------------------------------------------------------------------

    def _apply(self, entry: dict[str, Any]) -> None:
        cid = entry["id"]
        old = self.entries.pop(cid, None)
        if entry["status"] != "released":
            self.entries[cid] = {**(old or {}), **entry}
        self._trim()

    def _trim(self) -> None:
        while len(self.entries) > self.max_ids:
            self.entries.popitem(last=False)

    def _append(self, entry: dict[str, Any]) -> None:
        if self.path is not None:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                _write_all(fd, orjson.dumps(entry) + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._lines += 1
        self._apply(entry)
        if self.path is not None and self._lines > 2 * self.max_ids + 16:
            self._rewrite()

    def _rewrite(self) -> None:
        assert self.path is not None
        data = b"".join(orjson.dumps(e) + b"\n" for e in self.entries.values())
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._lines = len(self.entries)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
