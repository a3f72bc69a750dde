"""The Kafka plane's answer to a command whose id it took before: a redelivery, or a reused id.

A redelivery (the same message again: a restart before the commit, offsets moved back) is not
applied again; the reply repeats the recorded outcome with ``"duplicate": true``, or says the
application was interrupted. An id that arrives with another command is a sender reusing ids: the
recorded outcome belongs to the other command, so replaying it would answer the wrong question.
It is refused instead (and neither applied nor recorded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otus.control.fleet import COMMAND_INTERRUPTED, Command, error_reply, ok_reply
from otus.control.jsonrpc import INVALID_REQUEST

__all__ = ["duplicate_reply", "reused_id_reply"]


def reused_id_reply(cmd: Command, prior: Mapping[str, Any], agent_id: str) -> dict[str, Any] | None:
    """The refusal when ``prior`` was recorded for another command under ``cmd.id``, else None."""
    before = prior.get("command")
    # The record holds the command's name only (not its params): a name is what can be compared.
    if not isinstance(before, str) or before == cmd.command:
        return None
    message = (
        f"command id {cmd.id!r} was already used by {before}; not applied (give every command "
        "an id of its own)"
    )
    return error_reply(cmd.id, agent_id, cmd.command, INVALID_REQUEST, message)


def duplicate_reply(cmd: Command, prior: Mapping[str, Any], agent_id: str) -> dict[str, Any]:
    """The reply to a redelivered command: its recorded outcome, flagged ``duplicate``."""
    if prior.get("status") != "done":
        msg = "interrupted: the agent stopped while applying this command; not applied again"
        return error_reply(cmd.id, agent_id, cmd.command, COMMAND_INTERRUPTED, msg, duplicate=True)
    if prior.get("ok"):
        result = {"already_applied_at": prior.get("at")}
        return ok_reply(cmd.id, agent_id, cmd.command, result, duplicate=True)
    code = int(prior.get("code") or 0)
    message = str(prior.get("message") or "failed")
    return error_reply(cmd.id, agent_id, cmd.command, code, message, duplicate=True)
