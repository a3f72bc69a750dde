"""The state file: the tasks a daemon holds, saved atomically so a restart restores them.

Format (JSON, mode 0600)::

    {"version": 1, "saved_at": <unix s>,
     "tasks": [{"spec": {...}, "desired": "running" | "stopped", "state": "running",
                "reason": null, "created_at": <unix s>, "stopped_at": null, "stats": {...}}]}

``desired`` decides what a restart does: ``running`` tasks are started again; ``stopped`` ones
(a task that ended by itself — end of a capture file, a limit reached — or failed) are listed
with their last state, reason and counters, and not restarted.

Writes go to a temporary file in the same directory, are fsync'ed, then renamed over the old
file (and the directory fsync'ed), so a crash leaves either the old or the new file, never half.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from otus.core.errors import ConfigError
from otus.pipeline.spec import document_error

__all__ = ["STATE_VERSION", "SavedTask", "StateFile"]

STATE_VERSION = 1
_MAX_BYTES = 64 << 20  # a state file this large is not ours


@dataclass(slots=True)
class SavedTask:
    """One task as saved."""

    spec: dict[str, Any]
    desired: str = "running"
    state: str = "running"
    reason: str | None = None
    created_at: float = 0.0
    stopped_at: float | None = None
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> SavedTask:
        """Rebuild from the file; raise ValueError on a malformed entry."""
        if not isinstance(d, dict) or not isinstance(d.get("spec"), dict):
            raise ValueError("entry without a task spec")
        stats = d.get("stats") or {}
        return cls(
            spec=d["spec"],
            desired="stopped" if d.get("desired") == "stopped" else "running",
            state=str(d.get("state") or "running"),
            reason=None if d.get("reason") is None else str(d["reason"]),
            created_at=float(d.get("created_at") or 0.0),
            stopped_at=None if d.get("stopped_at") is None else float(d["stopped_at"]),
            stats={str(k): int(v) for k, v in stats.items()} if isinstance(stats, dict) else {},
        )


class StateFile:
    """Load and atomically save the task list."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> tuple[list[SavedTask], list[str]]:
        """The saved tasks and one line per entry that could not be read.

        A missing file is an empty list. A file that is not valid JSON raises ConfigError
        after being moved aside (``<name>.corrupt-<unix s>``), so the next save does not
        overwrite what an operator may want to recover.
        """
        try:
            with self.path.open("rb") as f:
                raw = f.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return [], []
        except OSError as e:
            raise ConfigError(f"cannot read state file {self.path}: {e.strerror}") from None
        try:
            if len(raw) > _MAX_BYTES:
                raise ValueError("file too large")
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
                raise ValueError("no task list")
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            raise ConfigError(
                f"state file {self.path} is corrupt ({document_error(e)}); moved to {aside}, "
                "starting empty"
            ) from None
        tasks: list[SavedTask] = []
        problems: list[str] = []
        for i, entry in enumerate(data["tasks"]):
            try:
                tasks.append(SavedTask.from_dict(entry))
            except (ValueError, TypeError, AttributeError) as e:
                problems.append(f"state file entry {i}: {e}")
        return tasks, problems

    def save(self, tasks: Iterable[SavedTask]) -> None:
        """Write the whole list atomically (temp file, fsync, rename, fsync the directory)."""
        doc = {
            "version": STATE_VERSION,
            "saved_at": time.time(),
            "tasks": [asdict(t) for t in tasks],
        }
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        parent = self.path.parent
        parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        tmp = parent / f".{self.path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
