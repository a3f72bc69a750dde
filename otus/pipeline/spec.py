"""The task spec: one capture job, as a pydantic model loadable from YAML or JSON.

The same model validates tasks from the CLI, the control socket, Kafka commands and the
``CaptureTask`` custom resource (whose CRD schema is generated from it), so every field is
bounded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import to_jsonable_python

from otus.core.errors import SpecError
from otus.core.model import SpecModel
from otus.decoder.options import DecoderOptions
from otus.plugins.capture.afpacket import AfpacketConfig
from otus.plugins.capture.pcapfile import PcapConfig
from otus.plugins.parser.sip import SipConfig
from otus.plugins.processor.filter import FilterConfig, LabelsConfig
from otus.plugins.processor.k8s import K8sConfig
from otus.plugins.reporter.console import ConsoleConfig
from otus.plugins.reporter.kafka_config import KafkaConfig

__all__ = [
    "CaptureSpec",
    "DecoderSpec",
    "LimitsSpec",
    "ParserSpec",
    "ProcessorSpec",
    "ReporterSpec",
    "TaskSpec",
    "document_error",
    "format_validation_error",
    "load_document",
    "load_task",
    "parse_task",
    "task_data",
]

TASK_ID_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
TunnelName = Literal["vxlan", "geneve", "gre", "erspan", "ipip"]
_ALL_TUNNELS: tuple[TunnelName, ...] = ("vxlan", "geneve", "gre", "erspan", "ipip")
Port = Annotated[int, Field(ge=1, le=65535)]


class DecoderSpec(SpecModel):
    """Which encapsulations to open and how hard to try reassembling IP fragments."""

    tunnels: list[TunnelName] = Field(
        default_factory=lambda: list(_ALL_TUNNELS),
        max_length=5,
        description="Tunnels to decapsulate; others are left as they are.",
    )
    vxlan_ports: list[Port] = Field(default_factory=lambda: [4789], max_length=8)
    geneve_ports: list[Port] = Field(default_factory=lambda: [6081], max_length=8)
    ip_reassembly: bool = True
    max_datagrams: int = Field(
        default=1024, ge=1, le=65536, description="IP datagrams reassembled at once."
    )
    max_fragments: int = Field(default=64, ge=2, le=1024, description="Fragments per datagram.")
    max_datagram_size: int = Field(default=65535, ge=576, le=65535)
    reassembly_timeout_ms: int = Field(default=30_000, ge=100, le=300_000)

    def to_options(self) -> DecoderOptions:
        """The decoder's plain options."""
        return DecoderOptions(
            tunnels=frozenset(self.tunnels),
            vxlan_ports=frozenset(self.vxlan_ports),
            geneve_ports=frozenset(self.geneve_ports),
            ip_reassembly=self.ip_reassembly,
            max_datagrams=self.max_datagrams,
            max_fragments=self.max_fragments,
            max_datagram_size=self.max_datagram_size,
            reassembly_timeout_us=self.reassembly_timeout_ms * 1000,
        )


class SipParserSpec(SpecModel):
    """The SIP parser."""

    type: Literal["sip"] = "sip"
    config: SipConfig = Field(default_factory=SipConfig)


ParserSpec = SipParserSpec


class FilterProcessorSpec(SpecModel):
    """Drop messages by method or label expression."""

    type: Literal["filter"]
    config: FilterConfig = Field(default_factory=FilterConfig)


class LabelsProcessorSpec(SpecModel):
    """Add static labels."""

    type: Literal["labels"]
    config: LabelsConfig = Field(default_factory=LabelsConfig)


class K8sProcessorSpec(SpecModel):
    """Label messages with the pods owning their source and destination IPs."""

    type: Literal["k8s"]
    config: K8sConfig = Field(default_factory=K8sConfig)


ProcessorSpec = Annotated[
    FilterProcessorSpec | LabelsProcessorSpec | K8sProcessorSpec, Field(discriminator="type")
]


class ConsoleReporterSpec(SpecModel):
    """Print records."""

    type: Literal["console"]
    config: ConsoleConfig = Field(default_factory=ConsoleConfig)


class KafkaReporterSpec(SpecModel):
    """Send records to Kafka."""

    type: Literal["kafka"]
    config: KafkaConfig


ReporterSpec = Annotated[ConsoleReporterSpec | KafkaReporterSpec, Field(discriminator="type")]

CaptureSpec = Annotated[PcapConfig | AfpacketConfig, Field(discriminator="type")]


class LimitsSpec(SpecModel):
    """Optional bounds after which a task stops by itself."""

    duration_s: float | None = Field(default=None, gt=0, le=30 * 86400, allow_inf_nan=False)
    max_packets: int | None = Field(default=None, ge=1, le=2**53)


def _default_reporters() -> list[ConsoleReporterSpec | KafkaReporterSpec]:
    return [ConsoleReporterSpec(type="console")]


class TaskSpec(SpecModel):
    """One capture job: capture -> decode -> parse -> process -> report."""

    id: str = Field(pattern=TASK_ID_PATTERN, max_length=63, description="Task id, DNS-label-like.")
    capture: CaptureSpec
    decoder: DecoderSpec = Field(default_factory=DecoderSpec)
    parsers: list[ParserSpec] = Field(
        default_factory=lambda: [SipParserSpec()], min_length=1, max_length=8
    )
    processors: list[ProcessorSpec] = Field(default_factory=list, max_length=16)
    reporters: list[ReporterSpec] = Field(
        default_factory=_default_reporters, min_length=1, max_length=8
    )
    limits: LimitsSpec = Field(default_factory=LimitsSpec)

    @field_validator("parsers", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        # The plan's task JSON lists parsers by name: ["sip"].
        if isinstance(v, list):
            return [{"type": p} if isinstance(p, str) else p for p in v]
        return v


def task_data(spec: TaskSpec) -> dict[str, Any]:
    """The spec as JSON-ready data that validates back to the same task, secrets included."""
    # model_dump(mode="json") writes a SecretStr as "**********": a task re-read from that
    # (otus run --task, otus task create, a worker process) would log in with the stars.
    return dict(to_jsonable_python(_reveal(spec.model_dump(exclude_unset=True))))


def _reveal(v: Any) -> Any:
    if isinstance(v, SecretStr):
        return v.get_secret_value()
    if isinstance(v, dict):
        return {k: _reveal(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_reveal(x) for x in v]
    return v


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping (YAML forbids it)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys: a second `processors:` would silently
        # replace the first. Keys brought in by a `<<` merge may be overridden, as YAML says.
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says so
                pass
        return super().construct_mapping(node, deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def load_document(text: str, *, json_only: bool = False) -> Any:
    """Parse a task document (YAML, or JSON only); a key given twice is an error."""
    if json_only:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def format_validation_error(e: ValidationError) -> list[str]:
    """One readable line per problem: ``capture.interfaces: Field required``."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, str) or p[:1] != "_")
        lines.append(f"{loc or '(task)'}: {err['msg']}")
    return lines


def document_error(e: Exception) -> str:
    """Why a YAML or JSON document could not be read, in words for whoever wrote it."""
    # Both parsers recurse per nesting level and int() refuses huge literals: neither raises
    # its own error type, and Python's wording names internals (recursion, set_int_max_str_digits).
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, yaml.MarkedYAMLError) and (e.problem or e.context):
        # PyYAML's own message spans lines, with a caret: what is wrong and where, on one
        mark = e.problem_mark if e.problem else e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"{e.problem or e.context}{where}"
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
        return f"{str(e).splitlines()[0]} (character {e.position + 1})"
    if isinstance(e, yaml.YAMLError):
        return " ".join(str(e).split())
    if isinstance(e, ValueError) and "Exceeds the limit" in str(e):
        return f"an integer has more than {sys.get_int_max_str_digits()} digits"
    return str(e)


def parse_task(data: Any, source: str = "task") -> TaskSpec:
    """Validate a task given as a dict; raise SpecError with readable lines."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a task must be a mapping, not {type(data).__name__}")
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{source}: invalid task", format_validation_error(e)) from None


def load_task(path: str | Path) -> TaskSpec:
    """Load a task from a YAML or JSON file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not content
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read task file {str(p)!r}: {e}") from None
    try:
        data = load_document(text, json_only=p.suffix == ".json")
    except (ValueError, RecursionError, yaml.YAMLError) as e:
        kind = "JSON" if p.suffix == ".json" else "YAML"
        raise SpecError(f"{p}: not valid {kind}: {document_error(e)}") from None
    if isinstance(data, dict) and "task" in data and "id" not in data:
        data = data["task"]  # accept the plan's command envelope {"command": ..., "task": {...}}
    return parse_task(data, str(p))
