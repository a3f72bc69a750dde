"""Otus's error tree.

Every error Otus raises on purpose derives from :class:`OtusError`::

    OtusError
    ├── ConfigError              a config file, task spec or CLI argument is invalid
    │   └── SpecError            a task spec failed validation (carries pydantic's messages)
    ├── PluginError              a plugin could not be built or started
    │   ├── PluginNotFoundError  no plugin of that kind has that name
    │   └── CaptureError         a capture source cannot open (no file, no CAP_NET_RAW, bad BPF)
    │       └── CaptureInputError    the user's input is wrong: unknown interface, invalid filter
    ├── PipelineError            a running pipeline failed
    ├── TaskError                the task manager refused or failed an operation
    │   ├── TaskNotFoundError
    │   ├── TaskExistsError
    │   ├── TaskLimitError
    │   └── TaskStartError
    ├── ControlError             a control-plane request failed
    │   ├── DaemonNotRunningError   nobody listens on the control socket
    │   └── RpcError             the daemon answered with a JSON-RPC error (code, message, data)
    └── ReporterError            a reporter cannot be set up (for example Kafka's TLS or password
                                 files unreadable, or a compression codec missing); an unreachable
                                 broker is not one: the Kafka reporter connects in the background
                                 and buffers, counting ``report.kafka.connect_failed``

Malformed packets are not errors: the decoder and parsers count them by reason and move on,
so nothing raises out of the data path.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CaptureError",
    "CaptureInputError",
    "ConfigError",
    "ControlError",
    "DaemonNotRunningError",
    "OtusError",
    "PipelineError",
    "PluginError",
    "PluginNotFoundError",
    "ReporterError",
    "RpcError",
    "SpecError",
    "TaskError",
    "TaskExistsError",
    "TaskLimitError",
    "TaskNotFoundError",
    "TaskStartError",
]


class OtusError(Exception):
    """Base of every error Otus raises on purpose."""


class ConfigError(OtusError):
    """A config file, task spec or command-line argument is invalid."""


class SpecError(ConfigError):
    """A task spec failed validation; ``errors`` holds one readable line per problem."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    def __str__(self) -> str:
        if not self.errors:
            return super().__str__()
        return super().__str__() + "\n" + "\n".join(f"  - {e}" for e in self.errors)


class PluginError(OtusError):
    """A plugin could not be built or started."""


class PluginNotFoundError(PluginError):
    """No plugin of that kind has that name."""


class CaptureError(PluginError):
    """A capture source cannot be opened."""


class CaptureInputError(CaptureError):
    """The capture's input names something wrong: an unknown interface, an invalid BPF filter.

    Found before any socket exists; ``otus run`` reports it as a usage error (exit 2).
    """


class PipelineError(OtusError):
    """A running pipeline failed."""


class TaskError(OtusError):
    """The task manager refused or failed an operation."""


class TaskNotFoundError(TaskError):
    """No task has that id."""


class TaskExistsError(TaskError):
    """A task with that id already exists."""


class TaskLimitError(TaskError):
    """The configured maximum number of tasks is reached."""


class TaskStartError(TaskError):
    """A task failed to start; nothing of it is left behind."""


class ControlError(OtusError):
    """A control-plane request failed."""


class DaemonNotRunningError(ControlError):
    """Nobody listens on the control socket."""


class RpcError(ControlError):
    """The daemon answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class ReporterError(OtusError):
    """A reporter cannot be set up (bad TLS or password files, a missing codec)."""
