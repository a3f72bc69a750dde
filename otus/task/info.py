"""What the task manager holds for a task (``TaskEntry``) and reports of it (``TaskInfo``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from otus.core.errors import TaskError
from otus.core.stats import Stats, format_summary

if TYPE_CHECKING:
    from otus.pipeline.spec import TaskSpec
    from otus.task.runner import TaskRunner

__all__ = [
    "TERMINAL",
    "ShuttingDownError",
    "TaskEntry",
    "TaskInfo",
    "TaskState",
    "clip_reason",
]

_REASON_MAX = 4096


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


class TaskEntry:
    """What the manager holds for one task."""

    __slots__ = (
        "created_at",
        "desired",
        "kill_at",
        "lock",
        "managed_stop",
        "pending",
        "pending_reason",
        "reason",
        "runner",
        "saved_stats",
        "spec",
        "started_at",
        "state",
        "stopped_at",
    )

    def __init__(self, spec: TaskSpec, created_at: float) -> None:
        self.spec = spec
        self.state = TaskState.CREATED
        self.reason: str | None = None
        self.created_at = created_at
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.runner: TaskRunner | None = None
        self.desired = True  # should run after a restart
        self.pending = False  # being created: not in the state file until its start succeeds
        self.managed_stop = False  # delete/update/shutdown is stopping it and settles it
        self.pending_reason: str | None = None  # failure noted while the workers stop
        self.kill_at: float | None = None  # monotonic deadline of a failure-triggered stop
        self.saved_stats: Stats = {}  # last counters of a finished task read from the state file
        self.lock = asyncio.Lock()

    def info(self) -> TaskInfo:
        """A snapshot: live counters from the runner, else the last ones saved."""
        r = self.runner
        processes = r.processes() if r is not None else []
        return TaskInfo(
            id=self.spec.id,
            state=self.state,
            reason=self.reason if self.state in TERMINAL else self.pending_reason,
            created_at=self.created_at,
            started_at=self.started_at,
            stopped_at=self.stopped_at,
            spec=self.spec.model_dump(mode="json"),
            stats=r.stats() if r is not None else dict(self.saved_stats),
            workers=r.per_worker() if r is not None else [],
            processes=processes,
            rss_bytes=sum(int(p.get("rss_bytes") or 0) for p in processes),
        )


def clip_reason(reason: str) -> str:
    """A failure reason cut to a size a status and the state file can carry."""
    return reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 3] + "..."
