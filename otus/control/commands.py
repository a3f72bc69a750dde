"""The commands every control plane serves, one implementation: params in, JSON-ready result out.

================  =========================  ================================================
 method            params                     result
================  =========================  ================================================
task.create       the task spec (object)     the task (``TaskInfo.to_dict()``)
task.update       the task spec (object)     the task, restarted with the new spec
task.delete       ``{"id": ID}`` or ``[ID]``  the task's final state and counters
task.list         none                       ``{"tasks": [task, ...]}``
task.status       ``{"id": ID}`` or ``[ID]``  the task
daemon.status     none                       pid, version, agent, uptime, readiness, tasks...
daemon.reload     none                       ``{"applied": [...], "restart_required": [...]}``
daemon.stop       none                       ``{"stopping": true, "pid": N}``
================  =========================  ================================================

``config.reload`` (the Kafka plane's name) is an alias of ``daemon.reload``. Errors are the
exceptions of :mod:`otus.core.errors` (plus :mod:`otus.control.jsonrpc`'s), mapped to codes by
:func:`otus.control.jsonrpc.error_for`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from otus.control.jsonrpc import (
    InvalidParamsError,
    MethodNotFoundError,
    ShuttingDown,
    error_for,
)
from otus.pipeline.spec import TaskSpec, parse_task
from otus.task.manager import TaskManager

__all__ = ["METHODS", "Commands", "DaemonHooks"]

log = structlog.stdlib.get_logger("otus.control")

METHODS = (
    "task.create",
    "task.update",
    "task.delete",
    "task.list",
    "task.status",
    "daemon.status",
    "daemon.reload",
    "daemon.stop",
)
_ALIASES = {"config.reload": "daemon.reload"}
_READ_ONLY = frozenset({"task.list", "task.status", "daemon.status"})


class DaemonHooks(Protocol):
    """The daemon-level commands, provided by the daemon."""

    def status(self) -> dict[str, Any]:
        """``daemon.status``."""
        ...

    async def reload(self) -> dict[str, Any]:
        """``daemon.reload``: re-read the config file and apply what can change live."""
        ...

    def request_stop(self) -> dict[str, Any]:
        """``daemon.stop``: begin the shutdown (after the reply is sent)."""
        ...


def _task_param(params: Any) -> TaskSpec:
    if isinstance(params, list) and len(params) == 1:
        params = params[0]
    if not isinstance(params, dict):
        raise InvalidParamsError("params must be the task spec (an object)")
    if "task" in params and "id" not in params and isinstance(params["task"], dict):
        params = params["task"]  # the plan's command envelope
    return parse_task(params, "task")


def _id_param(params: Any) -> str:
    if isinstance(params, list) and len(params) == 1:
        task_id = params[0]
    elif isinstance(params, dict) and set(params) == {"id"}:
        task_id = params["id"]
    else:
        raise InvalidParamsError('params must be {"id": "<task id>"}')
    if not isinstance(task_id, str) or not task_id or len(task_id) > 253:
        raise InvalidParamsError("the task id must be a non-empty string")
    return task_id


def _no_params(params: Any) -> None:
    if params not in (None, {}, []):
        raise InvalidParamsError("this method takes no params")


class Commands:
    """Dispatches a method call to the task manager or the daemon."""

    def __init__(self, manager: TaskManager, daemon: DaemonHooks | None = None) -> None:
        self.manager = manager
        self.daemon = daemon
        self.accepting = True
        # (plane, method, outcome) -> count; outcome "ok" or the error code
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self._table: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "task.create": self._create,
            "task.update": self._update,
            "task.delete": self._delete,
            "task.list": self._list,
            "task.status": self._status,
            "daemon.status": self._daemon_status,
            "daemon.reload": self._reload,
            "daemon.stop": self._stop,
        }

    def for_plane(self, plane: str) -> Callable[[str, Any], Awaitable[Any]]:
        """A ``call(method, params)`` that counts requests under ``plane``."""

        async def call(method: str, params: Any) -> Any:
            return await self.call(method, params, plane=plane)

        return call

    async def call(self, method: str, params: Any = None, *, plane: str = "uds") -> Any:
        """Run one command; raise an Otus error on failure."""
        name = _ALIASES.get(method, method)
        fn = self._table.get(name)
        label = name if fn is not None else "unknown"
        try:
            if fn is None:
                raise MethodNotFoundError(f"method not found: {method[:100]!r}")
            if not self.accepting and name not in _READ_ONLY:
                raise ShuttingDown("the daemon is shutting down")
            result = await fn(params)
        except Exception as e:
            code = error_for(e)[0]
            self.counts[(plane, label, str(code))] += 1
            log.debug("control request", plane=plane, method=label, error=code)
            raise
        self.counts[(plane, label, "ok")] += 1
        log.debug("control request", plane=plane, method=label)
        return result

    async def _create(self, params: Any) -> Any:
        spec = _task_param(params)
        return (await self.manager.create(spec)).to_dict()

    async def _update(self, params: Any) -> Any:
        spec = _task_param(params)
        return (await self.manager.update(spec)).to_dict()

    async def _delete(self, params: Any) -> Any:
        return (await self.manager.delete(_id_param(params))).to_dict()

    async def _list(self, params: Any) -> Any:
        _no_params(params)
        return {"tasks": [t.to_dict() for t in self.manager.list()]}

    async def _status(self, params: Any) -> Any:
        return self.manager.status(_id_param(params)).to_dict()

    def _hooks(self) -> DaemonHooks:
        if self.daemon is None:
            raise MethodNotFoundError("no daemon behind this plane")
        return self.daemon

    async def _daemon_status(self, params: Any) -> Any:
        _no_params(params)
        return self._hooks().status()

    async def _reload(self, params: Any) -> Any:
        _no_params(params)
        return await self._hooks().reload()

    async def _stop(self, params: Any) -> Any:
        _no_params(params)
        return self._hooks().request_stop()
