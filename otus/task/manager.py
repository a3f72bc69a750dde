"""The task manager: every control plane (socket, Kafka, Kubernetes) goes through this one.

API contract (implementation in progress — keep these names and shapes):

- ``TaskState``: ``created → starting → running → stopping → stopped | failed``.
- ``TaskInfo``: ``id``, ``state``, ``reason`` (failure reason or ``None``), ``created_at``,
  ``started_at``, ``stopped_at`` (Unix seconds or ``None``), ``spec`` (the task as a JSON dict),
  ``stats`` (aggregated counters), ``workers`` (per-worker counters); ``to_dict()`` is JSON-ready.
- ``TaskManager(agent_id=..., max_tasks=..., state_file=Path | None)``:
  ``await create(spec) -> TaskInfo`` (raises TaskExistsError, TaskLimitError, TaskStartError;
  a task that fails to start leaves nothing behind), ``await delete(task_id) -> TaskInfo``
  (stops, flushes reporters, forgets; TaskNotFoundError), ``await update(spec) -> TaskInfo``
  (replace a task's spec: stop + start), ``list() -> list[TaskInfo]``,
  ``status(task_id) -> TaskInfo``, ``get(task_id) -> TaskSpec``, ``await restore()`` (start the
  tasks saved in the state file), ``await shutdown()`` (stop every task, keep the state file so a
  restart restores them), ``subscribe(callback)`` (called with a TaskInfo on each state change).
"""

from __future__ import annotations
