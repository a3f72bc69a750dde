"""The task manager as the Kubernetes agent sees it: the calls it makes, a task's node phase."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from otus.pipeline.spec import TaskSpec

__all__ = ["PHASES", "TaskManagerLike", "phase_of", "reason_of", "state_of"]

# Task state (otus.task) -> the phase a node reports.
PHASES = {
    "created": "Starting",
    "starting": "Starting",
    "running": "Running",
    "stopping": "Stopping",
    "stopped": "Stopped",
    "failed": "Failed",
}


class TaskManagerLike(Protocol):
    """The part of ``otus.task.manager.TaskManager`` the agent uses."""

    async def create(self, spec: TaskSpec) -> Any:
        """Start a task."""
        ...

    async def update(self, spec: TaskSpec) -> Any:
        """Replace a task's spec (stop + start)."""
        ...

    async def delete(self, task_id: str) -> Any:
        """Stop a task, flush its reporters, forget it."""
        ...

    def status(self, task_id: str) -> Any:
        """A TaskInfo: ``state``, ``reason``, ``stats``."""
        ...

    def list(self) -> Any:
        """Every task's TaskInfo."""
        ...

    def subscribe(self, callback: Callable[[Any], None]) -> Any:
        """Call ``callback(TaskInfo)`` on each state change."""
        ...


def state_of(info: Any) -> str:
    """A TaskInfo's state, lower case (``running``, ``failed``...)."""
    state = getattr(info, "state", "")
    return str(getattr(state, "value", state)).lower()


def phase_of(info: Any) -> str:
    """The node phase of a task (``Running`` for a state this mapping does not know)."""
    return PHASES.get(state_of(info), "Running")


def reason_of(info: Any) -> str:
    """Why a task is in its state, or ``""``."""
    return str(getattr(info, "reason", None) or "")
