"""Otus: capture SIP signalling on every node and stream it, parsed, to Kafka."""

from otus.core.errors import (
    ConfigError,
    DaemonNotRunningError,
    OtusError,
    PipelineError,
    PluginError,
    TaskError,
    TaskExistsError,
    TaskNotFoundError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DaemonNotRunningError",
    "OtusError",
    "PipelineError",
    "PluginError",
    "TaskError",
    "TaskExistsError",
    "TaskNotFoundError",
    "__version__",
]
