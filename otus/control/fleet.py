"""The formats of the Kafka command plane (commands, replies, heartbeats) and what both ends share.

Three topics (names in :class:`~otus.control.base.KafkaSettings`):

``otus-commands`` — one JSON object per command, produced by ``otus fleet`` (or anything else),
keyed by the task id (by the command id when there is none) so one task's commands stay in order
on any partition count; the command id also travels in the ``otus-command-id`` header::

    {"id": "c-4f1e...",                      # required, 1-256 printable characters (not only
                                             #   spaces), unique: one id, one command
     "command": "task.create",               # task.create|task.update|task.delete|task.list|
                                             #   task.status|config.reload
     "target": {"agents": ["edge-1"]}        # 1-10000 agent ids; or {"tags": {"region": "eu"}}
                                             #   (every pair must match), or both (both must
                                             #   match), or {}: every agent
     "task": {...},                          # task.create/task.update: the task spec
     "task_id": "calls",                     # task.delete/task.status: 1-253 printable characters
                                             #   (or "task": {"id": ...}, not both)
     "expires_at": 1795315633.5,             # optional: Unix seconds after which nobody applies it
     "sent_at": 1795315603.5, "sender": "alice@ops-1"}   # optional, informational: Unix
                                             #   seconds and a string

A command takes only its own params: ``task`` for task.create/task.update, ``task_id`` (or
``task``) for task.delete/task.status, neither for task.list/config.reload.

``otus-replies`` — one reply per targeted agent, keyed by the command id::

    {"request_id": "c-4f1e...", "agent_id": "edge-1", "command": "task.create", "ts": ...,
     "ok": true, "result": {...}}            # the same result as the socket's JSON-RPC method
    {"request_id": ..., "agent_id": ..., "command": ..., "ts": ..., "ok": false,
     "error": {"code": -32002, "message": "task 'calls' already exists", "data": null}}

  plus ``"duplicate": true`` when the command was taken before (a redelivery after a restart):
  it is not applied again, and the reply repeats the recorded outcome (without the result).

``otus-status`` — heartbeats, keyed by the agent id (a compacted topic keeps the last of each)::

    {"type": "heartbeat", "agent_id": "edge-1", "state": "running" | "stopping", "ts": ...,
     "seq": 12, "hostname": "edge-1", "pid": 4242, "version": "0.1.0", "tags": {...},
     "started_at": ..., "uptime_s": 93.2, "heartbeat_interval_s": 10.0,
     "tasks": [{"id": "calls", "state": "running", "reason": null, "started_at": ...,
                "counters": {"packets": ..., "messages": ..., "records": ..., "dropped": ...,
                             "kafka_sent": ..., "buffered": ...}}],
     "commands": {"received": ..., "applied": ..., "failed": ..., "duplicates": ...,
                  "skipped": ..., "malformed": ..., "expired": ...}}

Error codes are JSON-RPC's (:mod:`otus.control.jsonrpc`) plus two of the plane's:

- ``-32700`` not JSON; ``-32600`` not a command object, a bad ``id`` (or one this agent took
  for a different command), ``target``, ``expires_at``, ``sent_at`` or ``sender``, an unknown
  member, or larger than ``max_command_bytes``; ``-32601`` unknown ``command``; ``-32602``
  ``task``/``task_id`` missing, of the wrong type or size, or not taken by the command; then the
  method's own errors (``-32002`` task exists, ``-32005`` invalid spec, ...);
- ``-32010`` COMMAND_EXPIRED: received after its ``expires_at``; not applied;
- ``-32011`` COMMAND_INTERRUPTED: a redelivered command whose application was under way when the
  agent stopped or crashed: it is not applied again, and may or may not have taken effect.

A command whose ``target`` is valid and does not name this agent is skipped silently, even when
the rest of it is malformed; one whose ``target`` is unreadable gets an error reply from every
agent (none can tell whether it was meant). A command without a usable id is counted and skipped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from otus.control.base import KafkaSettings
from otus.control.jsonrpc import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR
from otus.core.errors import ControlError
from otus.plugins.reporter.kafka_config import read_password, ssl_context

__all__ = [
    "COMMANDS",
    "COMMAND_EXPIRED",
    "COMMAND_INTERRUPTED",
    "ID_HEADER",
    "MAX_NAME",
    "MAX_TAG",
    "MAX_TARGET_AGENTS",
    "MAX_TARGET_TAGS",
    "BrokerUnreachableError",
    "Command",
    "EnvelopeError",
    "Target",
    "brief",
    "client_kwargs",
    "command_key",
    "ensure_topics",
    "error_reply",
    "id_problem",
    "ok_reply",
    "parse_command",
    "parse_target",
    "valid_id",
]

COMMAND_EXPIRED = -32010
COMMAND_INTERRUPTED = -32011
ID_HEADER = "otus-command-id"
MAX_ID = 256
MAX_NAME = 253  # agent and task ids: a DNS name's length
MAX_TAG = 256  # tag names and values, as the daemon's config allows them
MAX_TARGET_AGENTS = 10_000
MAX_TARGET_TAGS = 32
# command -> where its params come from
COMMANDS: dict[str, str | None] = {
    "task.create": "task",
    "task.update": "task",
    "task.delete": "task_id",
    "task.status": "task_id",
    "task.list": None,
    "config.reload": None,
}
_MEMBERS = frozenset(
    {"id", "command", "target", "task", "task_id", "expires_at", "sent_at", "sender"}
)


class BrokerUnreachableError(ControlError):
    """No broker answered within the timeout."""


class EnvelopeError(Exception):
    """A malformed command: the error to reply with, to whom, and whether this agent is meant."""

    def __init__(
        self,
        code: int,
        message: str,
        command_id: str | None = None,
        *,
        target: Target | None = None,
        command: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command_id = command_id
        self.target = target  # None: unreadable, every agent answers
        self.command = command


@dataclass(frozen=True, slots=True)
class Target:
    """Which agents a command is for; ``None`` fields match every agent."""

    agents: frozenset[str] | None = None
    tags: Mapping[str, str] | None = None

    def matches(self, agent_id: str, tags: Mapping[str, str]) -> bool:
        """Whether an agent with this id and these tags is targeted."""
        if self.agents is not None and agent_id not in self.agents:
            return False
        return self.tags is None or all(tags.get(k) == v for k, v in self.tags.items())

    def to_json(self) -> dict[str, Any]:
        """The envelope's ``target``."""
        out: dict[str, Any] = {}
        if self.agents is not None:
            out["agents"] = sorted(self.agents)
        if self.tags is not None:
            out["tags"] = dict(self.tags)
        return out


@dataclass(frozen=True, slots=True)
class Command:
    """A well-formed command."""

    id: str
    command: str
    target: Target
    params: Any
    expires_at: float | None = None


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, dict):
        return "an object"
    return "a list" if isinstance(v, list) else type(v).__name__


def id_problem(v: Any, limit: int) -> str | None:
    """What keeps ``v`` from being an id (1-``limit`` printable characters, not only spaces)."""
    if not isinstance(v, str):
        return f"must be a string, not {_json_type(v)}"
    if not v:
        return "is empty"
    if len(v) > limit:
        return f"is {len(v)} characters long, over the {limit}-character limit"
    if not v.isprintable():
        return "has non-printable characters"
    if not v.strip():
        return "is only spaces"
    return None


def brief(v: Any, width: int = 40) -> str:
    """``repr(v)``, cut short: messages quote what they refuse without echoing a megabyte."""
    text = repr(v)
    return text if len(text) <= width else text[: width - 3] + "..."


def valid_id(v: Any) -> TypeGuard[str]:
    """A command id: a string of 1-256 printable characters, not only spaces."""
    return id_problem(v, MAX_ID) is None


def _seconds(v: Any) -> bool:
    # bool is an int to Python, not a time to anyone; JSON has no infinities
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def parse_target(t: Any) -> Target:
    """The ``target`` member; raise ValueError with the reason."""
    if not isinstance(t, dict):
        raise ValueError('"target" must be an object ({} targets every agent)')
    extra = set(t) - {"agents", "tags"}
    if extra:
        raise ValueError(f'"target" has unknown members {sorted(extra)[:5]}')
    agents = tags = None
    if "agents" in t:
        a = t["agents"]
        # An empty list would match no agent: nobody would answer, and the sender wait in vain.
        if not isinstance(a, list) or not 0 < len(a) <= MAX_TARGET_AGENTS:
            raise ValueError(
                f'"target.agents" must be a list of 1-{MAX_TARGET_AGENTS} agent ids '
                "(leave it out to target every agent)"
            )
        for x in a:
            if problem := id_problem(x, MAX_NAME):
                raise ValueError(f'"target.agents": the agent id {brief(x)} {problem}')
        agents = frozenset(a)
    if "tags" in t:
        g = t["tags"]
        if not isinstance(g, dict) or len(g) > MAX_TARGET_TAGS:
            raise ValueError(f'"target.tags" must be an object of at most {MAX_TARGET_TAGS} tags')
        for k, v in g.items():
            if problem := id_problem(k, MAX_TAG):
                raise ValueError(f'"target.tags": the tag name {brief(k)} {problem}')
            if not isinstance(v, str) or len(v) > MAX_TAG:
                raise ValueError(
                    f'"target.tags": {brief(k)} must map to a string of at most {MAX_TAG} '
                    "characters"
                )
        tags = dict(g)
    return Target(agents, tags)


def parse_command(value: bytes | None, *, max_bytes: int, header_id: str | None = None) -> Command:
    """Validate one message of the command topic; raise EnvelopeError when it is malformed."""
    reply_id = header_id if valid_id(header_id) else None
    if value is None:
        raise EnvelopeError(INVALID_REQUEST, "invalid command: empty message", reply_id)
    if len(value) > max_bytes:
        raise EnvelopeError(
            INVALID_REQUEST,
            f"invalid command: {len(value)} bytes, over the {max_bytes}-byte limit",
            reply_id,
        )
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise EnvelopeError(PARSE_ERROR, f"parse error: {e}", reply_id) from None
    if not isinstance(obj, dict):
        raise EnvelopeError(INVALID_REQUEST, "invalid command: not an object", reply_id)
    cid = obj.get("id")
    if not valid_id(cid):
        raise EnvelopeError(
            INVALID_REQUEST,
            f'invalid command: "id" {id_problem(cid, MAX_ID)} (1-{MAX_ID} printable characters, '
            "not only spaces)",
            reply_id,
        )
    name = obj.get("command")
    name = name if isinstance(name, str) else ""
    try:
        target = parse_target(obj.get("target"))
    except ValueError as e:
        raise EnvelopeError(INVALID_REQUEST, f"invalid command: {e}", cid, command=name) from None

    def bad(code: int, message: str) -> EnvelopeError:
        return EnvelopeError(code, message, cid, target=target, command=name)

    extra = set(obj) - _MEMBERS
    if extra:
        raise bad(INVALID_REQUEST, f"invalid command: unknown members {sorted(extra)[:5]}")
    if name not in COMMANDS:
        raise bad(METHOD_NOT_FOUND, f"unknown command {str(obj.get('command'))[:100]!r}")
    for member in ("expires_at", "sent_at"):
        v = obj.get(member)
        if not _seconds(v):
            why = f'"{member}" must be Unix seconds (a number), not {_json_type(v)}'
            raise bad(INVALID_REQUEST, f"invalid command: {why}")
    sender = obj.get("sender")
    if sender is not None and not isinstance(sender, str):
        why = f'"sender" must be a string, not {_json_type(sender)}'
        raise bad(INVALID_REQUEST, f"invalid command: {why}")
    try:
        params = _params(name, obj)
    except ValueError as e:
        raise bad(INVALID_PARAMS, str(e)) from None
    expires = obj.get("expires_at")
    return Command(cid, name, target, params, None if expires is None else float(expires))


def _params(name: str, obj: Mapping[str, Any]) -> Any:
    """The params of command ``name`` from its members; raise ValueError with what is wrong."""
    source = COMMANDS[name]
    has_task, has_id = "task" in obj, "task_id" in obj
    # A member the command does not take is refused, not ignored: the sender meant something.
    if source is None:
        if has_task or has_id:
            raise ValueError(f'{name} takes neither "task" nor "task_id"')
        return None
    task = obj.get("task")
    if source == "task":
        if has_id:
            raise ValueError(f'{name} takes "task" (the task spec), not "task_id"')
        if not has_task:
            raise ValueError(f'{name} needs "task": the task spec (an object)')
        if not isinstance(task, dict):
            raise ValueError(
                f'{name}: "task" must be the task spec (an object), not {_json_type(task)}'
            )
        return task
    if has_task and has_id:
        raise ValueError(f'{name} takes "task_id" or "task", not both')
    if has_task:
        if not isinstance(task, dict):
            raise ValueError(
                f'{name}: "task" must be an object with the task\'s "id", not {_json_type(task)}'
            )
        what, task_id = '"task.id"', task.get("id")
    elif has_id:
        what, task_id = '"task_id"', obj["task_id"]
    else:
        raise ValueError(f'{name} needs "task_id": the task id')
    if problem := id_problem(task_id, MAX_NAME):
        raise ValueError(f"{name}: {what} {problem}")
    return {"id": task_id}


def command_key(envelope: Mapping[str, Any]) -> bytes:
    """The Kafka key of a command: its task's id (one task's commands stay ordered), else its id."""
    task = envelope.get("task")
    tid = envelope.get("task_id") or (task.get("id") if isinstance(task, dict) else None)
    return str(tid or envelope["id"]).encode()


def _reply(cid: str, agent_id: str, command: str, duplicate: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "request_id": cid,
        "agent_id": agent_id,
        "command": command,
        "ts": round(time.time(), 6),
    }
    if duplicate:
        out["duplicate"] = True
    return out


def ok_reply(
    cid: str, agent_id: str, command: str, result: Any, *, duplicate: bool = False
) -> dict[str, Any]:
    """A successful reply."""
    return {**_reply(cid, agent_id, command, duplicate), "ok": True, "result": result}


def error_reply(
    cid: str,
    agent_id: str,
    command: str,
    code: int,
    message: str,
    data: Any = None,
    *,
    duplicate: bool = False,
) -> dict[str, Any]:
    """A failed reply."""
    err = {"code": code, "message": message, "data": data}
    return {**_reply(cid, agent_id, command, duplicate), "ok": False, "error": err}


def client_kwargs(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """aiokafka client arguments: brokers, timeouts and security (raises ReporterError on files)."""
    sec = settings.security()
    return {
        "bootstrap_servers": list(settings.brokers),
        "client_id": client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": sec.security_protocol,
        "ssl_context": ssl_context(sec),
        "sasl_mechanism": sec.sasl_mechanism or "PLAIN",
        "sasl_plain_username": sec.username,
        "sasl_plain_password": read_password(sec),
    }


async def ensure_topics(settings: KafkaSettings, kwargs: Mapping[str, Any]) -> list[str]:
    """Create the three topics where missing (1 partition; status compacted); return problems."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    admin_kw = {k: v for k, v in kwargs.items() if k != "request_timeout_ms"}
    admin = AIOKafkaAdminClient(**admin_kw, request_timeout_ms=settings.request_timeout_ms)
    await admin.start()
    try:
        rf = settings.replication_factor
        if not rf:
            rf = max(1, min(3, len((await admin.describe_cluster())["brokers"])))
        topics = [
            NewTopic(settings.command_topic, 1, rf),
            NewTopic(settings.reply_topic, 1, rf, topic_configs={"retention.ms": "86400000"}),
            NewTopic(
                settings.status_topic,
                1,
                rf,
                topic_configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
            ),
        ]
        resp = await admin.create_topics(topics)
    finally:
        await admin.close()
    problems = []
    for name, code, message in (tuple(e)[:3] for e in resp.topic_errors):
        if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
            problems.append(f"{name}: error {code}: {message}")
    return problems
