"""What a control plane is, what it gets from the daemon, and the settings of the optional ones.

A control plane takes commands from somewhere (the Unix socket, a Kafka topic, CaptureTask
resources) and acts through the daemon's one :class:`~otus.task.manager.TaskManager`. The daemon
starts each plane inside its task group and cancels it on shutdown (before it stops the
tasks: "stop taking commands" comes first)::

    class ControlPlane(Protocol):
        async def run(self) -> None: ...   # serve until cancelled; clean up on cancellation

A plane that raises is logged and restarted with a backoff (1 s doubling to 60 s); it never takes
the daemon down. Planes are built by the daemon:

- the Unix-socket server, always: ``UdsServer(path, commands, ...)``;
- the Kafka command plane when ``kafka.brokers`` is set: ``otus.control.kafka_plane`` must
  provide ``KafkaPlane(settings: KafkaSettings, ctx: PlaneContext)`` (imported lazily: when the
  module or its dependency is missing the daemon logs an error and runs without it);
- the Kubernetes agent with ``otus daemon --kubernetes`` (or ``kubernetes.enabled``):
  ``otus.control.kubernetes.agent.KubernetesAgent(manager, node_name=..., namespace=...,
  kubeconfig=...)``, also imported lazily.

Commands from every plane go through :class:`otus.control.commands.Commands` (``await
ctx.commands.call(method, params)``), so a Kafka ``task.create`` and a socket ``task.create``
behave alike; :func:`otus.control.jsonrpc.error_for` maps the errors to codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Protocol, runtime_checkable

from pydantic import Field

from otus.core.model import SpecModel

if TYPE_CHECKING:
    from otus.control.commands import Commands
    from otus.task.manager import TaskManager

__all__ = ["ControlPlane", "KafkaSettings", "KubernetesSettings", "PlaneContext"]

_Str = Annotated[str, Field(max_length=1024)]


@runtime_checkable
class ControlPlane(Protocol):
    """Serves commands until cancelled."""

    async def run(self) -> None:
        """Serve until cancelled; release what it holds on cancellation."""
        ...


@dataclass(slots=True)
class PlaneContext:
    """What the daemon hands a control plane."""

    manager: TaskManager
    commands: Commands
    agent_id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    started_at: float = 0.0


class KafkaSettings(SpecModel):
    """The Kafka command plane (``kafka:`` in the global config); off while ``brokers`` is empty.

    The Kafka plane's author extends this model with what the plane needs (security, ...).
    """

    brokers: list[_Str] = Field(default_factory=list, max_length=64)
    command_topic: str = Field(default="otus-commands", min_length=1, max_length=249)
    reply_topic: str = Field(default="otus-replies", min_length=1, max_length=249)
    status_topic: str = Field(default="otus-status", min_length=1, max_length=249)
    heartbeat_interval_s: float = Field(default=10.0, ge=0.5, le=3600)

    @property
    def enabled(self) -> bool:
        """Whether the daemon starts the plane."""
        return bool(self.brokers)


class KubernetesSettings(SpecModel):
    """Agent Kubernetes mode (``kubernetes:``): ``enabled``, or ``otus daemon --kubernetes``."""

    enabled: bool = False
    node_name: str = Field(
        default="", max_length=253, description="This node; empty: $NODE_NAME (downward API)."
    )
    namespace: str = Field(
        default="", max_length=63, description="Watch one namespace; empty: all."
    )
    kubeconfig: str = Field(
        default="", max_length=4096, description="Path of a kubeconfig; empty: in-cluster."
    )
