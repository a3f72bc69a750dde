"""What the task manager reports about a task: its state and a snapshot (``TaskInfo``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from otus.core.errors import TaskError
from otus.core.stats import Stats, format_summary

__all__ = ["TERMINAL", "ShuttingDownError", "TaskInfo", "TaskState"]


class TaskState(StrEnum):
    """Lifecycle of a task."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


TERMINAL = frozenset({TaskState.STOPPED, TaskState.FAILED})


class ShuttingDownError(TaskError):
    """The manager is shutting down and takes no new task."""


@dataclass(slots=True)
class TaskInfo:
    """A snapshot of one task."""

    id: str
    state: TaskState
    reason: str | None
    created_at: float
    started_at: float | None
    stopped_at: float | None
    spec: dict[str, Any]
    stats: Stats
    workers: list[Stats]
    processes: list[dict[str, Any]] = field(default_factory=list)
    rss_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``task.status`` returns)."""
        return {
            "id": self.id,
            "state": self.state.value,
            "reason": self.reason,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "spec": self.spec,
            "stats": dict(self.stats),
            "summary": format_summary(self.stats),
            "workers": [dict(w) for w in self.workers],
            "processes": self.processes,
            "rss_bytes": self.rss_bytes,
        }
