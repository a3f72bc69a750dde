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
from typing import TYPE_CHECKING, Annotated, Literal, Protocol, runtime_checkable

from pydantic import Field, SecretStr, StringConstraints, ValidationError, model_validator

from otus.core.model import SpecModel
from otus.plugins.reporter.kafka_config import KafkaConfig

if TYPE_CHECKING:
    from otus.control.commands import Commands
    from otus.task.manager import TaskManager

__all__ = ["ControlPlane", "KafkaSettings", "KubernetesSettings", "PlaneContext"]

_Str = Annotated[str, Field(max_length=1024)]
_Topic = Annotated[
    str, StringConstraints(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
]
_SECURITY = {
    "security_protocol",
    "sasl_mechanism",
    "username",
    "password",
    "password_file",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
}


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
    state_file: str = ""  # the daemon's state file: planes keep their own state next to it


class KafkaSettings(SpecModel):
    """The Kafka command plane (``kafka:`` in the global config); off while ``brokers`` is empty.

    Security settings mean what they mean for the ``kafka`` reporter (same names, same checks).
    The formats on the topics are in :mod:`otus.control.fleet`.
    """

    brokers: list[_Str] = Field(default_factory=list, max_length=64)
    command_topic: _Topic = "otus-commands"
    reply_topic: _Topic = "otus-replies"
    status_topic: _Topic = "otus-status"
    heartbeat_interval_s: float = Field(default=10.0, ge=0.5, le=3600)
    group_id: str = Field(
        default="", max_length=255, description="Consumer group; empty: otus-agent-<agent id>."
    )
    client_id: str = Field(
        default="", max_length=255, description="Kafka client id; empty: otus-agent-<agent id>."
    )
    applied_file: str = Field(
        default="",
        max_length=4096,
        description="Record of applied command ids; empty: <daemon.state_file>.kafka-applied.",
    )
    applied_max: int = Field(
        default=10_000, ge=16, le=1_000_000, description="Command ids remembered (newest kept)."
    )
    max_command_bytes: int = Field(
        default=1 << 20, ge=1024, le=16 << 20, description="Larger commands are refused."
    )
    create_topics: bool = Field(
        default=True,
        description="Create missing topics (1 partition each; the status topic compacted).",
    )
    replication_factor: int = Field(
        default=0, ge=0, le=16, description="Of created topics; 0: min(3, brokers in the cluster)."
    )
    request_timeout_ms: int = Field(default=30_000, ge=1_000, le=600_000)
    reconnect_backoff_max_s: float = Field(default=30.0, ge=0.1, le=600)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: str | None = Field(default=None, min_length=1, max_length=255)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=1024)
    password_file: str | None = Field(default=None, min_length=1, max_length=4096)
    ssl_cafile: str | None = Field(default=None, min_length=1, max_length=4096)
    ssl_certfile: str | None = Field(default=None, min_length=1, max_length=4096)
    ssl_keyfile: str | None = Field(default=None, min_length=1, max_length=4096)
    ssl_check_hostname: bool = True

    @property
    def enabled(self) -> bool:
        """Whether the daemon starts the plane."""
        return bool(self.brokers)

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaSettings:
        """The reporter's checks (SASL needs a user, ssl_* files need TLS, ...)."""
        self.security()
        return self

    def security(self) -> KafkaConfig:
        """The security settings as a reporter config, for ``ssl_context``/``read_password``."""
        try:
            return KafkaConfig(
                brokers=list(self.brokers) or ["unset:9092"],
                topic=self.command_topic,
                **self.model_dump(include=_SECURITY),
            )
        except ValidationError as e:
            msgs = (str((x.get("ctx") or {}).get("error", x["msg"])) for x in e.errors())
            raise ValueError("; ".join(msgs)) from None


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
