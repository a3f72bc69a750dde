"""The ``CaptureTask`` custom resource as pydantic models, and its mapping to a :class:`TaskSpec`.

The spec is built from the task model's own parts (afpacket capture, decoder, parsers,
processors, reporters, limits) plus a node selector, ``paused``, and per-reporter ``secretRef``s
for Kafka credentials. The CRD schema is generated from :class:`CaptureTaskSpec` and
:class:`CaptureTaskStatus` by ``otus.control.kubernetes.crd``.

Credentials never appear in a CaptureTask: a reporter's ``secretRef`` names a Secret in the
task's namespace and which keys hold the username, password, CA, client certificate and key.
The agent writes the values to private files and points the reporter's ``password_file`` and
``ssl_*`` settings at them (the username goes in as a value). Until then (in the operator, which
only validates) those settings hold placeholder paths under :data:`UNRESOLVED_DIR`.

Task ids: ``<namespace>.<name>`` (both are DNS names, so this fits the task-id pattern); when
that is longer than 63 characters, its first 52 characters (trailing ``.-_`` cut) then ``-`` and
the first 10 hex digits of SHA-256 of ``<namespace>/<name>``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from otus.core.errors import SpecError
from otus.core.model import SpecModel
from otus.pipeline.spec import (
    DecoderSpec,
    LimitsSpec,
    ParserSpec,
    ProcessorSpec,
    ReporterSpec,
    SipParserSpec,
    TaskSpec,
    format_validation_error,
)
from otus.plugins.capture.afpacket import AfpacketConfig

__all__ = [
    "API_VERSION",
    "GROUP",
    "INLINE_FORBIDDEN",
    "KIND",
    "MAX_NODES",
    "NODE_MESSAGE_MAX",
    "PLURAL",
    "SECRET_FIELDS",
    "UNRESOLVED_DIR",
    "VERSION",
    "CaptureTaskSpec",
    "CaptureTaskStatus",
    "Condition",
    "LabelSelector",
    "LabelSelectorRequirement",
    "NodeStatus",
    "Phase",
    "SecretRef",
    "Totals",
    "is_agent_task_id",
    "node_message",
    "parse_capture_task",
    "task_id_for",
]

GROUP = "otus.firestige.xyz"
VERSION = "v1alpha1"
PLURAL = "capturetasks"
KIND = "CaptureTask"
API_VERSION = f"{GROUP}/{VERSION}"

# The most nodes one CaptureTask runs on. status.nodes holds an entry per node, and the object
# must fit one etcd request (1.5 MiB by default; beyond it every write fails with "etcdserver:
# request is too large"). Measured on a real API server, an entry at its largest (63-character
# node name, 15-digit counters, a NODE_MESSAGE_MAX message) costs ~0.75 KB stored with its
# assignedNodes item, ~0.21 KB of it managedFields (which the server drops rather than fail a
# write): 2000 of them plus two conditions at their largest store as 1.51 MB, 1.08 MB without
# managedFields. The operator assigns at most this many nodes and says so when more match.
MAX_NODES = 2000
NODE_MESSAGE_MAX = 128  # every node may carry one (an invalid edit: all of them): kept short
UNRESOLVED_DIR = "/run/otus/secrets/unresolved"

Phase = Literal[
    "Pending", "Starting", "Running", "Paused", "Stopping", "Stopped", "Failed", "Unknown"
]

DnsName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]
LabelKey = Annotated[
    str,
    Field(
        min_length=1,
        max_length=317,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
    ),
]
LabelValue = Annotated[
    str, Field(max_length=63, pattern=r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
]
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
Timestamp = Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"})]

# secretRef key -> the reporter config field it fills (a file path, or the value for username).
SECRET_FIELDS: dict[str, str] = {
    "username_key": "username",
    "password_key": "password_file",
    "ca_key": "ssl_cafile",
    "cert_key": "ssl_certfile",
    "key_key": "ssl_keyfile",
}
# Config fields a CaptureTask may not set inline: credentials come from a Secret.
INLINE_FORBIDDEN = ("password", "password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile")


class LabelSelectorRequirement(SpecModel):
    """One ``matchExpressions`` entry of a ``metav1.LabelSelector``."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.operator in ['In', 'NotIn'] ? "
                    "(has(self.values) && size(self.values) > 0) : "
                    "(!has(self.values) || size(self.values) == 0)",
                    "message": "In and NotIn need values; Exists and DoesNotExist take none",
                }
            ]
        }
    )

    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[LabelValue] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _values(self) -> LabelSelectorRequirement:
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError("In and NotIn need values; Exists and DoesNotExist take none")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label set satisfies this requirement."""
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: absent keys match, as in k8s


class LabelSelector(SpecModel):
    """Which nodes run the task (a ``metav1.LabelSelector``); empty selects every agent node."""

    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a node with these labels is selected."""
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            e.matches(labels) for e in self.match_expressions
        )


class SecretRef(SpecModel):
    """A Secret in the task's namespace holding the reporter's credentials, by key."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.keyKey) || has(self.certKey)",
                    "message": "keyKey needs certKey",
                }
            ]
        }
    )

    name: DnsName = Field(description="Secret name (same namespace as the CaptureTask).")
    username_key: SecretKey | None = Field(default=None, description="Key of the SASL username.")
    password_key: SecretKey | None = Field(default=None, description="Key of the SASL password.")
    ca_key: SecretKey | None = Field(default=None, description="Key of the CA bundle (PEM).")
    cert_key: SecretKey | None = Field(
        default=None, description="Key of the client certificate (PEM)."
    )
    key_key: SecretKey | None = Field(default=None, description="Key of the client key (PEM).")

    @model_validator(mode="after")
    def _keys(self) -> SecretRef:
        if self.key_key and not self.cert_key:
            raise ValueError("keyKey needs certKey")
        return self

    def keys(self) -> dict[str, str]:
        """Config field -> Secret key, for the keys given."""
        return {
            target: key
            for ref, target in SECRET_FIELDS.items()
            if (key := getattr(self, ref)) is not None
        }


def _members(union: Any) -> tuple[type[SpecModel], ...]:
    args = get_args(union)
    inner = args[0] if args else union  # Annotated[X, Field(...)] -> X
    return get_args(inner) or (inner,)


def _secret_placeholders(data: Any) -> Any:
    """Reject inline credentials; fill secretRef'd config fields with placeholders to validate."""
    if not isinstance(data, dict):
        return data
    ref = data.get("secretRef", data.get("secret_ref"))
    config = data.get("config")
    if isinstance(config, dict):
        inline = [f for f in INLINE_FORBIDDEN if f in config or _camel(f) in config]
        if inline:
            raise ValueError(
                f"{', '.join(sorted(inline))}: credentials come from a Secret (secretRef), "
                "not from the CaptureTask"
            )
    if not isinstance(ref, dict):
        return data
    try:
        keys = SecretRef.model_validate(ref).keys()
    except ValidationError:
        return data  # reported by the secretRef field itself
    config = dict(config) if isinstance(config, dict) else {}
    for target, key in keys.items():
        if target in config or _camel(target) in config:
            raise ValueError(f"{target} is set both inline and through secretRef")
        config[target] = f"secret-{key}" if target == "username" else f"{UNRESOLVED_DIR}/{key}"
    return {**data, "config": config}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


_SECRETS_VALIDATOR: Any = model_validator(mode="before")(_secret_placeholders)


def _with_secret_ref(member: type[SpecModel]) -> type[SpecModel]:
    config = member.model_fields["config"].annotation
    fields = getattr(config, "model_fields", {})
    if not any(target in fields for target in SECRET_FIELDS.values()):
        return member
    return create_model(
        member.__name__,
        __base__=member,
        __module__=__name__,
        __validators__={"_secrets": _SECRETS_VALIDATOR},
        secret_ref=(
            SecretRef | None,
            Field(default=None, description="Credentials from a Secret of this namespace."),
        ),
    )


def _union(types: tuple[type[Any], ...]) -> Any:
    out: Any = types[0]
    for t in types[1:]:
        out = out | t
    return out


# The task model's reporters, each with a ``secretRef`` when its config takes credentials.
REPORTER_ENTRIES: tuple[type[SpecModel], ...] = tuple(
    _with_secret_ref(m) for m in _members(ReporterSpec)
)
if TYPE_CHECKING:
    ReporterEntry = SpecModel
else:
    ReporterEntry = Annotated[_union(REPORTER_ENTRIES), Field(discriminator="type")]


class CaptureTaskSpec(SpecModel):
    """What a CaptureTask asks for: a capture task on every selected node."""

    node_selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="Nodes to capture on (among those running an agent); empty: all of them.",
    )
    paused: bool = Field(default=False, description="Stop capturing on every node; keep the task.")
    capture: AfpacketConfig
    decoder: DecoderSpec = Field(default_factory=DecoderSpec)
    parsers: list[ParserSpec] = Field(
        default_factory=lambda: [SipParserSpec()], min_length=1, max_length=8
    )
    processors: list[ProcessorSpec] = Field(default_factory=list, max_length=16)
    reporters: list[ReporterEntry] = Field(min_length=1, max_length=8)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)

    @field_validator("parsers", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"type": p} if isinstance(p, str) else p for p in v]
        return v

    def secret_refs(self) -> dict[int, SecretRef]:
        """Reporter index -> its secretRef."""
        return {
            i: ref
            for i, r in enumerate(self.reporters)
            if (ref := getattr(r, "secret_ref", None)) is not None
        }

    def to_task_spec(
        self, task_id: str, resolved: Mapping[int, Mapping[str, str]] | None = None
    ) -> TaskSpec:
        """The task an agent runs; ``resolved`` maps reporter index -> config field -> value."""
        reporters = []
        for i, r in enumerate(self.reporters):
            entry = r.model_dump(mode="python", exclude={"secret_ref"})
            config = entry.get("config")
            if isinstance(config, dict):
                for k, v in list(config.items()):
                    if hasattr(v, "get_secret_value"):
                        config[k] = v.get_secret_value()
                config.update((resolved or {}).get(i, {}))
            reporters.append(entry)
        data = {
            "id": task_id,
            "capture": self.capture.model_dump(mode="python"),
            "decoder": self.decoder.model_dump(mode="python"),
            "parsers": [p.model_dump(mode="python") for p in self.parsers],
            "processors": [p.model_dump(mode="python") for p in self.processors],
            "reporters": reporters,
            "limits": self.limits.model_dump(mode="python"),
        }
        try:
            return TaskSpec.model_validate(data)
        except ValidationError as e:
            raise SpecError("invalid task", format_validation_error(e)) from None


def parse_capture_task(spec: Any) -> CaptureTaskSpec:
    """Validate a CaptureTask's ``spec``; raise SpecError with one readable line per problem."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec: must be a mapping")
    try:
        return CaptureTaskSpec.model_validate(dict(spec))
    except ValidationError as e:
        raise SpecError("invalid CaptureTask spec", format_validation_error(e)) from None


def task_id_for(namespace: str, name: str) -> str:
    """The agent-side task id of a CaptureTask (see the module docstring)."""
    tid = f"{namespace}.{name}"
    if len(tid) <= 63:
        return tid
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:10]
    return f"{tid[:52].rstrip('._-')}-{digest}"


_PLAIN_ID = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_HASHED_ID = re.compile(r"([a-z0-9][-a-z0-9.]*)-[0-9a-f]{10}")


def is_agent_task_id(task_id: str, namespace: str | None = None) -> bool:
    """Whether ``task_id`` has the form :func:`task_id_for` gives (for ``namespace`` if set)."""
    if len(task_id) > 63:
        return False
    if _PLAIN_ID.fullmatch(task_id):
        return namespace is None or task_id.startswith(f"{namespace}.")
    hashed = _HASHED_ID.fullmatch(task_id)
    # A hashed id keeps 52 characters less the separators cut at its end; a short one is not ours.
    if hashed is None or len(task_id) < 53:
        return False
    prefix, ns_dot = hashed.group(1), f"{namespace}."
    return namespace is None or prefix.startswith(ns_dot) or ns_dot.startswith(prefix)


# -- status ---------------------------------------------------------------------------------


class Condition(SpecModel):
    """A ``metav1.Condition``."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    status: Literal["True", "False", "Unknown"]
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: Timestamp
    reason: str = Field(
        min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    message: str = Field(default="", max_length=32768)


class NodeStatus(SpecModel):
    """One node's report, written only by that node's agent (and ``Unknown`` by the operator)."""

    phase: Phase
    packets: int = Field(default=0, ge=0)
    sip_messages: int = Field(default=0, ge=0)
    drops: int = Field(default=0, ge=0)
    last_heartbeat: Timestamp | None = None
    message: str = Field(default="", max_length=NODE_MESSAGE_MAX)
    observed_generation: int | None = Field(default=None, ge=0)
    task_id: str | None = Field(default=None, max_length=63)


def node_message(text: str, keep: str = "") -> str:
    """``text`` on one line, cut to fit a node entry with ``keep`` whole at its end."""
    text = " ".join(text.split())
    room = NODE_MESSAGE_MAX - len(keep)
    if len(text) > room:
        text = text[: max(0, room - 3)].rstrip() + "..."
    return (text + keep)[:NODE_MESSAGE_MAX]


class Totals(SpecModel):
    """Sums over the nodes' reports."""

    packets: int = Field(default=0, ge=0)
    sip_messages: int = Field(default=0, ge=0)
    drops: int = Field(default=0, ge=0)


class CaptureTaskStatus(SpecModel):
    """What the operator (conditions, assignment, totals) and agents (``nodes``) report."""

    observed_generation: int | None = Field(default=None, ge=0)
    conditions: list[Condition] = Field(default_factory=list, max_length=8)
    targeted_nodes: int = Field(default=0, ge=0)
    running_nodes: int = Field(default=0, ge=0)
    assigned_nodes: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list, max_length=MAX_NODES
    )
    totals: Totals = Field(default_factory=Totals)
    nodes: dict[Annotated[str, Field(max_length=253)], NodeStatus] = Field(
        default_factory=dict, max_length=MAX_NODES
    )
