"""Malformed JSON-RPC on the real daemon's socket: an error reply each, never a dead server."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.infra.daemon import looping_task

pytestmark = pytest.mark.slow


def reply(d: Any, line: bytes | str) -> Any:
    raw = d.raw(line.encode() if isinstance(line, str) else line)
    return json.loads(raw) if raw else None


def test_malformed_requests_get_errors(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(daemon={"max_request_bytes": 8192})
    d.start()
    cases = [
        (b"{not json", -32700, None),
        (b"\xff\xfe garbage", -32700, None),
        ('{"jsonrpc": "1.0", "method": "task.list", "id": 1}', -32600, 1),
        ('{"jsonrpc": "2.0", "id": 2}', -32600, 2),
        ('{"jsonrpc": "2.0", "method": 5, "id": 3}', -32600, 3),
        ('{"jsonrpc": "2.0", "method": "task.list", "params": 7, "id": 4}', -32600, 4),
        ('{"jsonrpc": "2.0", "method": "task.list", "id": {"x": 1}}', -32600, None),
        ("[]", -32600, None),
        ("42", -32600, None),
        ('{"jsonrpc": "2.0", "method": "no.such", "id": 5}', -32601, 5),
        ('{"jsonrpc": "2.0", "method": "task.status", "params": {}, "id": 6}', -32602, 6),
        ('{"jsonrpc": "2.0", "method": "task.delete", "params": [1], "id": 7}', -32602, 7),
        ('{"jsonrpc": "2.0", "method": "task.create", "params": [], "id": 8}', -32602, 8),
        ('{"jsonrpc": "2.0", "method": "task.list", "params": {"x": 1}, "id": 9}', -32602, 9),
        ('{"jsonrpc": "2.0", "method": "task.status", "params": ["nope"], "id": "s"}', -32001, "s"),
    ]
    for line, code, rid in cases:
        r = reply(d, line)
        assert r["jsonrpc"] == "2.0", line
        assert r["error"]["code"] == code, (line, r)
        assert r["id"] == rid, (line, r)

    bad_spec = {"id": "Bad Id!", "capture": {"type": "pcap"}, "surprise": 1}
    r = reply(
        d, json.dumps({"jsonrpc": "2.0", "method": "task.create", "params": bad_spec, "id": 1})
    )
    assert r["error"]["code"] == -32005
    data = r["error"]["data"]
    assert any(x.startswith("id:") for x in data)
    assert any(x.startswith("capture.pcap.path:") for x in data)
    assert any(x.startswith("surprise:") for x in data)

    # over the size limit: an error, then the connection is closed
    huge = json.dumps({"jsonrpc": "2.0", "method": "task.list", "id": 1, "pad": "x" * 20000})
    r = reply(d, huge)
    assert r["error"]["code"] == -32600 and "8192" in r["error"]["message"]

    # notifications get no reply; batches get one array
    assert d.raw(b'{"jsonrpc": "2.0", "method": "task.list"}') == b""
    batch = [
        {"jsonrpc": "2.0", "method": "task.list", "id": 1},
        {"jsonrpc": "2.0", "method": "daemon.status"},
        {"jsonrpc": "2.0", "method": "nope", "id": 2},
        {"foo": 1},
        {
            "jsonrpc": "2.0",
            "method": "task.create",
            "params": looping_task("b", tmp_path / "b"),
            "id": 3,
        },
    ]
    out = reply(d, json.dumps(batch))
    assert [x.get("id") for x in out] == [1, 2, None, 3]
    assert out[0]["result"] == {"tasks": []}
    assert out[1]["error"]["code"] == -32601
    assert out[2]["error"]["code"] == -32600
    assert out[3]["result"]["state"] == "running"
    assert d.raw(json.dumps([{"jsonrpc": "2.0", "method": "task.list"}]).encode()) == b""

    # several requests on one connection, answered in order
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(d.socket))
        s.sendall(
            b'{"jsonrpc":"2.0","method":"task.list","id":1}\n'
            b"junk\n"
            b'{"jsonrpc":"2.0","method":"daemon.status","id":2}\n'
        )
        s.shutdown(socket.SHUT_WR)
        data_in = b""
        while chunk := s.recv(65536):
            data_in += chunk
    got = [json.loads(x) for x in data_in.splitlines()]
    assert [g.get("id") for g in got] == [1, None, 2]
    assert got[1]["error"]["code"] == -32700

    # a client that disconnects mid-request does no harm
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(d.socket))
        s.sendall(b'{"jsonrpc":"2.0","method":"task.li')
    st = d.rpc("daemon.status")
    assert st["ready"] and st["tasks"]["total"] == 1
    d.stop()
