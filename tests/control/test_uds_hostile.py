"""The Unix-socket server against hostile local clients: silent, slow, never reading, racing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from otus.control.jsonrpc import TOO_MANY_CLIENTS
from otus.control.uds_server import UdsServer
from otus.core.errors import ControlError

LIST = b'{"jsonrpc":"2.0","method":"task.list","id":1}\n'


async def commands(method: str, params: Any) -> Any:
    if method == "sleep":
        await asyncio.sleep(float(params[0]))
    if method == "big":  # a reply larger than the socket buffers
        return {"pad": "x" * int(params[0])}
    return {"method": method}


@contextlib.asynccontextmanager
async def serving(path: Path, **kwargs: Any) -> AsyncIterator[UdsServer]:
    srv = UdsServer(path, commands, max_request_bytes=4096, max_clients=4, **kwargs)
    await srv.start()
    task = asyncio.create_task(srv.run())
    try:
        yield srv
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def ask(path: Path, line: bytes = LIST) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(line)
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return json.loads(data)  # type: ignore[no-any-return]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raw_client(path: Path, send: bytes = b"") -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect(str(path))
    if send:
        s.send(send)
    return s


async def test_idle_and_dripping_clients_do_not_lock_others_out(tmp_path: Path) -> None:
    async with serving(tmp_path / "s.sock") as srv:
        # max_clients connections: two silent, two stuck in the middle of a request line
        held = [raw_client(srv.path, b'{"jsonrpc"' if i % 2 else b"") for i in range(4)]
        try:
            await asyncio.sleep(1.3)  # waited for a request longer than evict_idle_s (1 s)
            r = await ask(srv.path)
            assert r["result"] == {"method": "task.list"}, r
            assert srv.evicted_total == 1
            await asyncio.sleep(0.1)
            assert held[0].recv(100) == b""  # the one waiting longest was closed
            with pytest.raises(BlockingIOError):
                held[1].recv(100)  # the others were not
        finally:
            for s in held:
                s.close()


async def test_connections_in_a_call_are_never_evicted(tmp_path: Path) -> None:
    async with serving(tmp_path / "s.sock") as srv:
        line = b'{"jsonrpc":"2.0","method":"sleep","params":[2.5],"id":7}\n'
        busy = [asyncio.create_task(ask(srv.path, line)) for _ in range(4)]
        await asyncio.sleep(1.3)
        r = await ask(srv.path)
        assert r["error"]["code"] == TOO_MANY_CLIENTS
        assert all(x["result"] == {"method": "sleep"} for x in await asyncio.gather(*busy))
        assert srv.evicted_total == 0


async def test_a_client_that_never_reads_does_not_keep_its_socket(tmp_path: Path) -> None:
    async with serving(tmp_path / "s.sock", write_timeout_s=0.5) as srv:
        before = open_fds()
        line = b'{"jsonrpc":"2.0","method":"big","params":[4000000],"id":1}\n'
        held = [raw_client(srv.path, line) for _ in range(3)]
        try:
            await asyncio.sleep(0.3)
            assert open_fds() == before + 6  # both ends of each connection live here
            # write timeout (0.5 s), then one more second for close() to flush, which never comes
            await asyncio.sleep(2.5)
            assert open_fds() == before + 3, "the server still holds sockets nobody reads"
            assert srv._clients == 0
            r = await ask(srv.path)
            assert r["result"] == {"method": "task.list"}
        finally:
            for s in held:
                s.close()


async def test_nobody_connects_before_the_socket_has_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.sock"
    connected_early: list[bool] = []
    real_chmod: Callable[..., None] = os.chmod

    def chmod(p: Any, mode: int, **kw: Any) -> None:
        if Path(p) == path:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                connected_early.append(s.connect_ex(str(path)) == 0)
        real_chmod(p, mode, **kw)

    monkeypatch.setattr(os, "chmod", chmod)
    old = os.umask(0)
    try:
        async with serving(path) as srv:
            assert connected_early == [False]
            assert (await ask(srv.path))["result"] == {"method": "task.list"}
    finally:
        os.umask(old)


async def test_socket_path_too_long(tmp_path: Path) -> None:
    parent = tmp_path / ("d" * 120)
    with pytest.raises(ControlError, match=r"socket path too long \(\d+ bytes, at most 108\)"):
        await UdsServer(parent / "otus.sock", commands).start()
    assert not parent.exists()
