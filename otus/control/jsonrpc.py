"""JSON-RPC 2.0: requests, responses, batches, and the error codes of Otus's control planes.

Framing on the Unix socket: one JSON text per line (newline-delimited, UTF-8); a request or a
batch per line, its response on one line (a batch of only notifications gets no line). JSON
encoders never put a raw newline inside a text, so no length prefix is needed.

Error codes: the standard ones, plus application codes in the range JSON-RPC reserves for
implementation-defined server errors (-32000 to -32099):

=======  ===================  ====================================================
 code     name                 when
=======  ===================  ====================================================
-32700   PARSE_ERROR          not JSON (or not UTF-8)
-32600   INVALID_REQUEST      not a request object; batch empty or too long; an integer
                              id beyond 64 bits; request over the size limit (the
                              connection is then closed)
-32601   METHOD_NOT_FOUND     unknown method
-32602   INVALID_PARAMS       params of the wrong shape (missing ``id``, ...)
-32603   INTERNAL_ERROR       a bug; the daemon logs it with its traceback
-32000   SHUTTING_DOWN        the daemon is shutting down and takes no command
-32001   TASK_NOT_FOUND       no task with that id
-32002   TASK_EXISTS          a task with that id exists (delete it first)
-32003   TASK_LIMIT           ``limits.max_tasks`` tasks are running
-32004   TASK_START_FAILED    the task could not start (nothing of it is left)
-32005   INVALID_SPEC         the task spec is invalid; ``data`` lists one line per problem
-32006   INVALID_CONFIG       ``daemon.reload``: the config file is invalid (old one kept)
-32007   TOO_MANY_CLIENTS     the control socket has ``max_clients`` connections open and
                              none idle to close; the new one gets this and is closed (retry)
=======  ===================  ====================================================
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from otus.core.errors import (
    ConfigError,
    ControlError,
    SpecError,
    TaskError,
    TaskExistsError,
    TaskLimitError,
    TaskNotFoundError,
    TaskStartError,
)

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_CONFIG",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "INVALID_SPEC",
    "MAX_BATCH",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SHUTTING_DOWN",
    "TASK_EXISTS",
    "TASK_LIMIT",
    "TASK_NOT_FOUND",
    "TASK_START_FAILED",
    "TOO_MANY_CLIENTS",
    "InvalidParamsError",
    "MethodNotFoundError",
    "Request",
    "ShuttingDown",
    "encode",
    "error_for",
    "error_response",
    "handle_payload",
    "parse_request",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SHUTTING_DOWN = -32000
TASK_NOT_FOUND = -32001
TASK_EXISTS = -32002
TASK_LIMIT = -32003
TASK_START_FAILED = -32004
INVALID_SPEC = -32005
INVALID_CONFIG = -32006
TOO_MANY_CLIENTS = -32007

MAX_BATCH = 128

Call = Callable[[str, Any], Awaitable[Any]]


class MethodNotFoundError(ControlError):
    """No such method."""


class InvalidParamsError(ControlError):
    """The params do not fit the method."""


class ShuttingDown(ControlError):
    """The daemon takes no more commands."""


@dataclass(slots=True)
class Request:
    """One parsed request."""

    method: str
    params: Any
    id: Any
    notification: bool


def encode(obj: Any) -> bytes:
    """One line of JSON (non-JSON values become their ``str``)."""
    return orjson.dumps(obj, default=str) + b"\n"


def error_response(req_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response object."""
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": req_id}


def error_for(exc: BaseException) -> tuple[int, str, Any]:
    """(code, message, data) for an exception a command raised."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, SpecError):
        return INVALID_SPEC, super(SpecError, exc).__str__(), list(exc.errors)
    if isinstance(exc, InvalidParamsError):
        return INVALID_PARAMS, msg, None
    if isinstance(exc, MethodNotFoundError):
        return METHOD_NOT_FOUND, msg, None
    if isinstance(exc, ShuttingDown):
        return SHUTTING_DOWN, msg, None
    if isinstance(exc, TaskNotFoundError):
        return TASK_NOT_FOUND, msg, None
    if isinstance(exc, TaskExistsError):
        return TASK_EXISTS, msg, None
    if isinstance(exc, TaskLimitError):
        return TASK_LIMIT, msg, None
    if isinstance(exc, TaskStartError):
        return TASK_START_FAILED, msg, None
    if isinstance(exc, TaskError):  # shutting down, or another refusal of the manager
        return SHUTTING_DOWN, msg, None
    if isinstance(exc, ConfigError):
        return INVALID_CONFIG, msg, None
    return INTERNAL_ERROR, f"internal error: {msg}", None


def parse_request(obj: Any) -> Request | dict[str, Any]:
    """A Request, or the error response for an invalid one."""
    if not isinstance(obj, dict):
        return error_response(None, INVALID_REQUEST, "invalid request: not an object")
    req_id = obj.get("id")
    valid_id = req_id is None or (
        isinstance(req_id, str | int | float) and not isinstance(req_id, bool)
    )
    if not valid_id:
        return error_response(None, INVALID_REQUEST, "invalid request: bad id")
    if isinstance(req_id, int) and not _INT64_MIN <= req_id <= _INT64_MAX:
        # orjson neither reads nor writes such an integer: its reply would carry another id.
        return error_response(None, INVALID_REQUEST, "invalid request: id beyond 64-bit integers")
    if obj.get("jsonrpc") != "2.0":
        return error_response(req_id, INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"')
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return error_response(req_id, INVALID_REQUEST, 'invalid request: "method" must be a string')
    params = obj.get("params")
    if params is not None and not isinstance(params, dict | list):
        return error_response(
            req_id, INVALID_REQUEST, 'invalid request: "params" must be an object or an array'
        )
    extra = set(obj) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return error_response(
            req_id, INVALID_REQUEST, f"invalid request: unknown members {sorted(extra)}"
        )
    return Request(method, params, req_id, "id" not in obj)


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _ids_exact(payload: bytes, obj: Any) -> Any:
    """``obj`` again, read by the json module when an id may be an integer orjson made a float."""
    reqs = obj if isinstance(obj, list) else [obj]
    if any(isinstance(r, dict) and isinstance(r.get("id"), float) for r in reqs):
        try:  # rare: float ids are legal but unusual
            return json.loads(payload)
        except (ValueError, RecursionError):  # deeper than json reads: orjson's reading stands
            return obj
    return obj


async def _one(obj: Any, call: Call, on_error: Callable[[BaseException], None] | None) -> Any:
    req = parse_request(obj)
    if isinstance(req, dict):
        return req
    try:
        result = await call(req.method, req.params)
    except Exception as e:
        code, message, data = error_for(e)
        if code == INTERNAL_ERROR and on_error is not None:
            on_error(e)
        return None if req.notification else error_response(req.id, code, message, data)
    return None if req.notification else {"jsonrpc": "2.0", "result": result, "id": req.id}


async def handle_payload(
    payload: bytes, call: Call, on_error: Callable[[BaseException], None] | None = None
) -> bytes | None:
    """Handle one line (a request or a batch); return the response line, or None for none."""
    try:
        obj = _ids_exact(payload, orjson.loads(payload))
    except orjson.JSONDecodeError as e:
        return encode(error_response(None, PARSE_ERROR, f"parse error: {e}"))
    if isinstance(obj, list):
        if not obj:
            return encode(error_response(None, INVALID_REQUEST, "invalid request: empty batch"))
        if len(obj) > MAX_BATCH:
            return encode(
                error_response(
                    None, INVALID_REQUEST, f"invalid request: batch over {MAX_BATCH} calls"
                )
            )
        out = [r for r in [await _one(o, call, on_error) for o in obj] if r is not None]
        return encode(out) if out else None
    resp = await _one(obj, call, on_error)
    return None if resp is None else encode(resp)
