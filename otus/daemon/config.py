"""The global config of ``otus daemon``: YAML, validated by pydantic, overridable from the env.

Where it comes from, later wins:

1. defaults (below; every section is optional);
2. the YAML file: ``--config PATH``, else ``$OTUS_CONFIG``, else ``/etc/otus/otus.yaml`` when it
   exists;
3. environment variables ``OTUS_<SECTION>__<FIELD>`` (double underscore between levels,
   case-insensitive): ``OTUS_LOG__LEVEL=debug``, ``OTUS_AGENT__ID=edge-1``,
   ``OTUS_AGENT__TAGS__REGION=eu-west``, ``OTUS_LIMITS__MAX_TASKS=4``,
   ``OTUS_KAFKA__BROKERS=k1:9092,k2:9092`` (a list field takes commas or a YAML list),
   ``OTUS_LOG__OUTPUTS='[{type: stdout}]'`` (structured values are YAML). Text fields take the
   value as is; others are read as YAML scalars (``true``, ``8``, ``2.5``). A variable whose name
   has no double underscore (``OTUS_SOCKET``, ``OTUS_CONFIG``) is not an override; an override
   naming an unknown setting is an error, like an unknown key in the file.
"""

from __future__ import annotations

import os
import re
import socket
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator

from otus.control.base import KafkaSettings, KubernetesSettings
from otus.control.uds_server import MAX_SOCKET_PATH
from otus.core.errors import ConfigError
from otus.core.model import SpecModel
from otus.pipeline.spec import document_error, format_validation_error

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentSection",
    "DaemonSection",
    "FileOutput",
    "GlobalConfig",
    "LimitsSection",
    "LogSection",
    "LokiOutput",
    "MetricsSection",
    "StdoutOutput",
    "config_path",
    "load_config",
    "parse_listen",
]

DEFAULT_CONFIG_PATH = Path("/etc/otus/otus.yaml")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _duration(v: Any) -> Any:
    """Seconds from a number or a string like ``5s``, ``500ms``, ``1m``."""
    if isinstance(v, str):
        m = _DURATION.match(v)
        if not m:
            raise ValueError(f"not a duration: {v!r} (use 5s, 500ms, 1m)")
        return float(m.group(1)) * _UNITS[m.group(2)]
    return v


Duration = Annotated[float, BeforeValidator(_duration)]
_Path = Annotated[str, Field(min_length=1, max_length=4096)]
_Label = Annotated[str, Field(max_length=256)]


class DaemonSection(SpecModel):
    """Process-level settings (changes need a restart)."""

    pid_file: _Path = "/run/otus/otus.pid"
    socket_path: _Path = "/run/otus/otus.sock"
    socket_mode: int = Field(default=0o660, ge=0, le=0o777, description="Octal, e.g. '0660'.")
    socket_group: str = Field(default="", max_length=64, description="Group owning the socket.")
    state_file: _Path = "/var/lib/otus/state.json"
    shutdown_timeout_s: Duration = Field(default=15.0, ge=1.0, le=600.0)
    max_request_bytes: int = Field(default=1 << 20, ge=4096, le=64 << 20)
    max_clients: int = Field(default=64, ge=1, le=4096)

    @field_validator("socket_mode", mode="before")
    @classmethod
    def _octal(cls, v: Any) -> Any:
        return int(v, 8) if isinstance(v, str) else v

    @field_validator("socket_path")
    @classmethod
    def _fits_sun_path(cls, v: str) -> str:
        size = len(os.fsencode(v))
        if size > MAX_SOCKET_PATH:
            raise ValueError(
                f"{size} bytes: a Unix socket path has at most {MAX_SOCKET_PATH} (sun_path)"
            )
        return v


class StdoutOutput(SpecModel):
    """Log lines on standard output (what journald and container runtimes collect)."""

    type: Literal["stdout"] = "stdout"


class FileOutput(SpecModel):
    """A log file rotated by size; rotated files are numbered (``.1`` newest) and gzipped."""

    type: Literal["file"]
    path: _Path
    max_size_mb: int = Field(default=100, ge=1, le=100_000)
    max_backups: int = Field(default=5, ge=0, le=1000)
    compress: bool = True


class LokiOutput(SpecModel):
    """Batched pushes to Loki's push API, retried with backoff, from a bounded queue."""

    type: Literal["loki"]
    endpoint: str = Field(
        min_length=8,
        max_length=2048,
        pattern=r"^https?://",
        description="http(s)://host:3100/loki/api/v1/push",
    )
    labels: dict[_Label, _Label] = Field(default_factory=lambda: {"app": "otus"}, max_length=16)
    tenant_id: str = Field(default="", max_length=256, description="X-Scope-OrgID, if any.")
    batch_size: int = Field(default=100, ge=1, le=10_000)
    flush_interval: Duration = Field(default=5.0, gt=0, le=300)
    queue_size: int = Field(default=10_000, ge=10, le=1_000_000)
    timeout_s: Duration = Field(default=10.0, gt=0, le=300)
    max_retries: int = Field(default=5, ge=0, le=100)


LogOutput = Annotated[StdoutOutput | FileOutput | LokiOutput, Field(discriminator="type")]


def _default_outputs() -> list[StdoutOutput | FileOutput | LokiOutput]:
    return [StdoutOutput()]


LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class LogSection(SpecModel):
    """Logging: level, rendering, outputs (all reloadable)."""

    level: LogLevel = "info"
    format: Literal["json", "console"] = "json"
    outputs: list[LogOutput] = Field(default_factory=_default_outputs, max_length=8)

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower()
            return {"warn": "warning", "fatal": "critical"}.get(v, v)
        return v

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, v: Any) -> Any:
        return "console" if v == "text" else v


class MetricsSection(SpecModel):
    """The Prometheus endpoint (and /healthz, /readyz)."""

    enabled: bool = True
    listen: str = Field(default=":9090", max_length=256, description="[host]:port; port 0: any")
    path: str = Field(default="/metrics", pattern=r"^/[A-Za-z0-9/_.-]*$", max_length=256)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v


class AgentSection(SpecModel):
    """Who this agent is: its id (default: the hostname) and tags (for Kafka targeting)."""

    id: str = Field(default="", max_length=253)
    tags: dict[_Label, _Label] = Field(default_factory=dict, max_length=32)

    def resolved_id(self) -> str:
        """The configured id, or the hostname."""
        return self.id or socket.gethostname()


class LimitsSection(SpecModel):
    """Bounds on tasks (reloadable)."""

    max_tasks: int = Field(default=16, ge=1, le=1024, description="Tasks running at once.")
    memory_per_task_mb: int = Field(
        default=2048,
        ge=0,
        le=1 << 20,
        description="Summed RSS of a task's workers before it is failed; 0: no limit.",
    )


class GlobalConfig(SpecModel):
    """The whole file."""

    daemon: DaemonSection = Field(default_factory=DaemonSection)
    log: LogSection = Field(default_factory=LogSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    agent: AgentSection = Field(default_factory=AgentSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``":9090"`` -> (None, 9090) (every address); ``"127.0.0.1:0"``; ``"[::1]:9090"``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen must be [host]:port, not {listen!r}")
    host = host.strip("[]")
    return (host or None), int(port)


def config_path(explicit: str | Path | None, env: Mapping[str, str] | None = None) -> Path | None:
    """The config file to read: ``--config``, ``$OTUS_CONFIG``, or the default if it exists."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("OTUS_CONFIG"):
        return Path(env["OTUS_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def _is_text(ann: Any) -> bool:
    if ann is str:
        return True
    if typing.get_origin(ann) is typing.Annotated:
        return _is_text(typing.get_args(ann)[0])
    return False


def _is_list(ann: Any) -> bool:
    if typing.get_origin(ann) is typing.Annotated:
        return _is_list(typing.get_args(ann)[0])
    return typing.get_origin(ann) is list


def _coerce(parts: list[str], raw: str) -> Any:
    ann: Any = None
    section = GlobalConfig.model_fields.get(parts[0])
    if section is not None and len(parts) >= 2:
        model = section.annotation
        fields = getattr(model, "model_fields", {})
        if parts[1] in fields:
            ann = fields[parts[1]].annotation
            if len(parts) > 2:  # a key of a dict field (tags, labels): text
                return raw
    if ann is not None and _is_text(ann):
        return raw
    if ann is not None and _is_list(ann) and not raw.lstrip().startswith("["):
        return [p.strip() for p in raw.split(",") if p.strip()]
    try:
        return yaml.safe_load(raw) if raw.strip() else raw
    except (ValueError, RecursionError, yaml.YAMLError):
        return raw  # the text as is: validation then says what is wrong with it


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    applied = []
    for name in sorted(env):
        if not name.startswith("OTUS_") or "__" not in name:
            continue
        parts = [p for p in name[5:].lower().split("__") if p]
        if len(parts) < 2:
            continue
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                child = node[p] = {}
            node = child
        node[parts[-1]] = _coerce(parts, env[name])
        applied.append(name)
    return applied


def load_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> GlobalConfig:
    """Read, merge and validate; raise ConfigError with one line per problem."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {str(p)!r}: {e}") from None
        try:
            loaded = yaml.safe_load(text)
        except (ValueError, RecursionError, yaml.YAMLError) as e:
            raise ConfigError(f"{p}: not valid YAML: {document_error(e)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the config must be a mapping")
        data = loaded or {}
        source = str(p)
    applied = _apply_env(data, env)
    if applied:
        source += " + " + ", ".join(applied)
    try:
        return GlobalConfig.model_validate(data)
    except ValidationError as e:
        lines = "\n".join(f"  - {x}" for x in format_validation_error(e))
        raise ConfigError(f"invalid config ({source}):\n{lines}") from None
