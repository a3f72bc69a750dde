"""JSON-RPC 2.0 handling and the error codes, without a socket."""

from __future__ import annotations

import json
from typing import Any

import pytest

from otus.control.jsonrpc import error_for, handle_payload
from otus.core.errors import (
    ConfigError,
    SpecError,
    TaskExistsError,
    TaskLimitError,
    TaskNotFoundError,
    TaskStartError,
)


async def echo(method: str, params: Any) -> Any:
    if method == "echo":
        return params
    if method == "fail":
        raise TaskNotFoundError("no task 'x'")
    if method == "bug":
        raise RuntimeError("oops")
    from otus.control.jsonrpc import MethodNotFoundError

    raise MethodNotFoundError(method)


async def call(line: str | bytes) -> Any:
    raw = await handle_payload(line.encode() if isinstance(line, str) else line, echo)
    return None if raw is None else json.loads(raw)


async def test_single_batch_and_notifications() -> None:
    r = await call('{"jsonrpc":"2.0","method":"echo","params":{"a":1},"id":"x"}')
    assert r == {"jsonrpc": "2.0", "result": {"a": 1}, "id": "x"}
    assert await call('{"jsonrpc":"2.0","method":"echo","params":[1]}') is None
    r = await call(
        '[{"jsonrpc":"2.0","method":"echo","params":[1],"id":1},'
        '{"jsonrpc":"2.0","method":"echo"},'
        '{"jsonrpc":"2.0","method":"fail","id":2}]'
    )
    assert r[0]["result"] == [1] and r[1]["error"]["code"] == -32001 and len(r) == 2
    assert await call('[{"jsonrpc":"2.0","method":"echo"}]') is None
    assert (await call("[" + ",".join(['{"jsonrpc":"2.0","method":"echo"}'] * 129) + "]"))["error"][
        "code"
    ] == -32600


async def test_internal_errors_are_reported_and_hooked() -> None:
    seen: list[BaseException] = []
    raw = await handle_payload(b'{"jsonrpc":"2.0","method":"bug","id":1}', echo, seen.append)
    assert raw is not None
    r = json.loads(raw)
    assert r["error"]["code"] == -32603 and "oops" in r["error"]["message"]
    assert isinstance(seen[0], RuntimeError)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (SpecError("task: invalid task", ["id: bad"]), -32005),
        (TaskNotFoundError("x"), -32001),
        (TaskExistsError("x"), -32002),
        (TaskLimitError("x"), -32003),
        (TaskStartError("x"), -32004),
        (ConfigError("x"), -32006),
        (ValueError("x"), -32603),
    ],
)
def test_error_codes(exc: Exception, code: int) -> None:
    got, message, data = error_for(exc)
    assert got == code
    if code == -32005:
        assert message == "task: invalid task" and data == ["id: bad"]


async def test_ids_come_back_as_sent() -> None:
    # orjson reads an integer beyond 64 bits as a float: the reply must not carry another id.
    big = 2**64 + 1
    r = await call(f'{{"jsonrpc":"2.0","method":"echo","params":[1],"id":{big}}}')
    assert r["error"]["code"] == -32600 and r["id"] is None
    assert "64-bit" in r["error"]["message"]
    top = 2**63 - 1
    r = await call(f'{{"jsonrpc":"2.0","method":"echo","params":[1],"id":{top}}}')
    assert r["id"] == top and r["result"] == [1]
    r = await call(
        '[{"jsonrpc":"2.0","method":"echo","params":[2],"id":1.5},'
        f'{{"jsonrpc":"2.0","method":"echo","params":[3],"id":{big}}}]'
    )
    assert r[0] == {"jsonrpc": "2.0", "result": [2], "id": 1.5}
    assert r[1]["error"]["code"] == -32600
