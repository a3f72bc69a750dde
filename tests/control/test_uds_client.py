"""The CLI's socket client against daemons that refuse, stall, drip or talk nonsense."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otus.control.jsonrpc import INVALID_REQUEST, TOO_MANY_CLIENTS
from otus.control.uds_client import UdsClient
from otus.control.uds_server import UdsServer
from otus.core.errors import ControlError, DaemonNotRunningError, RpcError


@contextlib.contextmanager
def fake_daemon(
    path: Path, serve: Callable[[socket.socket], None], backlog: int = 8
) -> Iterator[socket.socket]:
    """A listening socket whose connections ``serve`` answers, one at a time, in a thread."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(backlog)
    listener.settimeout(0.1)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                with contextlib.suppress(OSError):
                    serve(conn)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield listener
    finally:
        stop.set()
        t.join(5)
        listener.close()


def replying(reply: bytes, *, every_s: float = 0.0) -> Callable[[socket.socket], None]:
    def serve(conn: socket.socket) -> None:
        conn.recv(65536)
        if not every_s:
            conn.sendall(reply)
            return
        for i in range(len(reply)):
            conn.sendall(reply[i : i + 1])
            time.sleep(every_s)

    return serve


@pytest.mark.parametrize(
    "reply",
    [
        b'{"jsonrpc":"2.0","error":"boom","id":1}\n',
        b'{"jsonrpc":"2.0","error":{"code":"abc","message":"m"},"id":1}\n',
        b'{"jsonrpc":"2.0","error":{"code":-32001},"id":1}\n',
        b'{"jsonrpc":"2.0","id":1}\n',
        b'{"jsonrpc":"2.0","result":null,"id":1}\n',
        b'{"jsonrpc":"2.0","result":[1],"id":1}\n',
        b'{"jsonrpc":"2.0","result":{},"id":99}\n',
        b'{"jsonrpc":"2.0","result":{},"error":{"code":1,"message":"m"},"id":1}\n',
        b"[1]\n",
    ],
)
def test_a_reply_that_is_not_a_response_is_a_control_error(tmp_path: Path, reply: bytes) -> None:
    with fake_daemon(tmp_path / "s.sock", replying(reply)):
        with pytest.raises(ControlError, match="not a JSON-RPC response") as e:
            UdsClient(tmp_path / "s.sock", timeout=5).call("task.list")
        assert not isinstance(e.value, RpcError)


def test_error_replies_with_a_null_id_are_the_daemons_errors(tmp_path: Path) -> None:
    reply = b'{"jsonrpc":"2.0","error":{"code":-32007,"message":"too many clients"},"id":null}\n'
    with (
        fake_daemon(tmp_path / "s.sock", replying(reply)),
        pytest.raises(RpcError, match="too many clients") as e,
    ):
        UdsClient(tmp_path / "s.sock", timeout=5).call("task.list")
    assert e.value.code == TOO_MANY_CLIENTS


def test_the_timeout_bounds_the_whole_call(tmp_path: Path) -> None:
    reply = b'{"jsonrpc":"2.0","result":{"tasks":[]},"id":1}\n'
    with fake_daemon(tmp_path / "s.sock", replying(reply, every_s=0.1)):  # 5 s in all
        t0 = time.monotonic()
        with pytest.raises(ControlError, match="no reply from the daemon within 1 s"):
            UdsClient(tmp_path / "s.sock", timeout=1.0).call("task.list")
        assert time.monotonic() - t0 < 2.5


def fill_listen_queue(path: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A listener on ``path`` that accepts nothing, its queue full of connections."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    fillers: list[socket.socket] = []
    for _ in range(16):
        f = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        f.setblocking(False)
        if f.connect_ex(str(path)) != 0:
            f.close()
            return listener, fillers
        fillers.append(f)
    pytest.fail("the listen queue never filled")


def test_a_full_listen_queue_is_waited_for(tmp_path: Path) -> None:
    listener, fillers = fill_listen_queue(tmp_path / "s.sock")
    reply = b'{"jsonrpc":"2.0","result":{"ok":true},"id":1}\n'

    def accept_later() -> None:
        time.sleep(0.5)  # a daemon busy for a moment
        for _ in fillers:
            listener.accept()[0].close()
        conn = listener.accept()[0]
        with conn:
            replying(reply)(conn)

    t = threading.Thread(target=accept_later, daemon=True)
    t.start()
    try:
        assert UdsClient(tmp_path / "s.sock", timeout=10).call("x") == {"ok": True}
    finally:
        t.join(5)
        for f in [*fillers, listener]:
            f.close()


def test_a_daemon_that_never_makes_room(tmp_path: Path) -> None:
    listener, fillers = fill_listen_queue(tmp_path / "s.sock")
    t0 = time.monotonic()
    try:
        with pytest.raises(ControlError, match="the daemon is busy"):
            UdsClient(tmp_path / "s.sock", timeout=0.5).call("x")
        assert 0.3 < time.monotonic() - t0 < 2.0
    finally:
        for f in [*fillers, listener]:
            f.close()


def test_a_path_that_is_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "dir").mkdir()
    for name in ("file", "dir"):
        with pytest.raises(DaemonNotRunningError, match=rf"{name} is not a socket"):
            UdsClient(tmp_path / name, timeout=5).call("task.list")


async def test_errors_the_daemon_sends_before_closing_reach_the_client(tmp_path: Path) -> None:
    async def commands(method: str, params: Any) -> Any:
        await asyncio.sleep(3)
        return {}

    srv = UdsServer(tmp_path / "s.sock", commands, max_request_bytes=4096, max_clients=1)
    await srv.start()
    task = asyncio.create_task(srv.run())
    client = UdsClient(srv.path, timeout=10)
    try:
        # a request far over the limit: the daemon answers and closes while the client sends
        with pytest.raises(RpcError, match="over 4096 bytes") as e:
            await asyncio.to_thread(client.call, "task.create", {"pad": "x" * (4 << 20)})
        assert e.value.code == INVALID_REQUEST
        # max_clients busy in a call: the next one is told so, however large its request
        busy = asyncio.create_task(asyncio.to_thread(client.call, "sleep"))
        await asyncio.sleep(0.3)
        with pytest.raises(RpcError, match="too many clients") as e:
            await asyncio.to_thread(client.call, "task.create", {"pad": "x" * (1 << 20)})
        assert e.value.code == TOO_MANY_CLIENTS
        assert await busy == {}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
