"""The Unix-socket server in-process: permissions, stale sockets, limits, many clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from otus.control.jsonrpc import TOO_MANY_CLIENTS
from otus.control.uds_client import UdsClient
from otus.control.uds_server import UdsServer, make_socket_dir, socket_in_use
from otus.core.errors import ControlError


async def slow_echo(method: str, params: Any) -> Any:
    if method == "sleep":
        await asyncio.sleep(float(params[0]))
    return {"method": method, "params": params}


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[UdsServer]:
    srv = UdsServer(tmp_path / "run" / "s.sock", slow_echo, max_request_bytes=4096, max_clients=4)
    await srv.start()
    task = asyncio.create_task(srv.run())
    yield srv
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def request(path: Path, line: bytes) -> list[Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(line)
    writer.write_eof()
    data = await reader.read()
    writer.close()
    return [json.loads(x) for x in data.splitlines()]


async def test_socket_mode_and_parent_dir(server: UdsServer) -> None:
    st = server.path.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(server.path.parent.stat().st_mode) == 0o750
    assert socket_in_use(server.path)


def test_socket_dir_is_0750_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        make_socket_dir(tmp_path / "a" / "b" / "s.sock")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o750
    (tmp_path / "mine").mkdir(mode=0o700)
    make_socket_dir(tmp_path / "mine" / "s.sock")  # an existing directory is the admin's
    assert stat.S_IMODE((tmp_path / "mine").stat().st_mode) == 0o700


@pytest.mark.parametrize("timeout", [-1.0, 0.0, float("nan"), float("inf"), 1e12])
def test_client_refuses_an_unusable_timeout(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0"):
        UdsClient("/nonexistent.sock", timeout=timeout)


async def test_concurrent_clients_are_served_concurrently(server: UdsServer) -> None:
    line = b'{"jsonrpc":"2.0","method":"sleep","params":[0.5],"id":1}\n'
    t0 = asyncio.get_running_loop().time()
    replies = await asyncio.gather(*(request(server.path, line) for _ in range(4)))
    assert all(r[0]["result"]["method"] == "sleep" for r in replies)
    assert asyncio.get_running_loop().time() - t0 < 1.5  # not one after another


async def test_too_many_clients_get_an_error(server: UdsServer) -> None:
    held = [await asyncio.open_unix_connection(str(server.path)) for _ in range(4)]
    await asyncio.sleep(0.1)
    (r,) = await request(server.path, b'{"jsonrpc":"2.0","method":"x","id":1}\n')
    assert r["error"]["code"] == TOO_MANY_CLIENTS == -32007
    assert "too many clients" in r["error"]["message"]
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    (r,) = await request(server.path, b'{"jsonrpc":"2.0","method":"x","id":1}\n')
    assert r["result"]["method"] == "x"


async def test_oversized_request_closes_only_that_connection(server: UdsServer) -> None:
    (r,) = await request(server.path, b'{"x": "' + b"a" * 10000 + b'"}\n{"jsonrpc":"2.0"}\n')
    assert r["error"]["code"] == -32600
    (r,) = await request(server.path, b'{"jsonrpc":"2.0","method":"ok","id":1}\n')
    assert r["result"]["method"] == "ok"


async def test_live_socket_refused_stale_replaced(server: UdsServer, tmp_path: Path) -> None:
    other = UdsServer(server.path, slow_echo)
    with pytest.raises(ControlError, match="another daemon is listening"):
        await other.start()
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    assert not socket_in_use(stale)
    fresh = UdsServer(stale, slow_echo)
    await fresh.start()
    task = asyncio.create_task(fresh.run())
    (r,) = await request(stale, b'{"jsonrpc":"2.0","method":"m","id":1}\n')
    assert r["id"] == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not stale.exists()  # run() removes its socket when cancelled
    regular = tmp_path / "file"
    regular.write_text("")
    with pytest.raises(ControlError, match="not a socket"):
        await UdsServer(regular, slow_echo).start()
    assert regular.read_text() == ""  # left alone
