"""The control commands next to hostile socket clients, and against daemons that misbehave."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.cli import run_otus
from tests.infra.daemon import wait_for

pytestmark = pytest.mark.slow


def open_sockets(pid: int) -> int:
    """Sockets the process holds (its control connections, listeners, metrics)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return n


def settled_sockets(pid: int) -> int:
    """The socket count once it stops changing (the last client's close may be in flight)."""
    seen = [-1]

    def same() -> bool:
        seen.append(open_sockets(pid))
        return seen[-1] == seen[-2]

    wait_for(same, 10, "the daemon's sockets to settle", every=0.3)
    return seen[-1]


def test_silent_and_dripping_clients_do_not_lock_out_the_cli(daemon_factory: Any) -> None:
    d = daemon_factory(daemon={"max_clients": 4})
    d.start()
    base = settled_sockets(d.pid)
    held = []
    for i in range(4):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(d.socket))
        if i % 2:
            s.sendall(b'{"jsonrpc": "2.0", "meth')  # never finished
        held.append(s)
    wait_for(lambda: open_sockets(d.pid) == base + 4, 10, "the daemon to accept 4 connections")
    time.sleep(1.2)  # longer than a connection may wait for a request when others need room
    t0 = time.monotonic()
    r = run_otus("task", "list", "-q", "--socket", str(d.socket), "--timeout", "10")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert time.monotonic() - t0 < 10
    for s in held:
        s.close()
    wait_for(lambda: settled_sockets(d.pid) == base, 10, "the daemon to close every connection")
    assert d.rpc("daemon.status")["ready"]
    d.stop()


@contextlib.contextmanager
def fake_daemon(path: Path, reply: bytes | None) -> Iterator[None]:
    """Accepts on ``path``; replies ``reply`` to each request, or never when it is None."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if reply is None:
                held.append(conn)
                continue
            with conn:
                conn.settimeout(10)
                conn.recv(65536)
                conn.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)
        for c in [*held, listener]:
            c.close()


@pytest.mark.parametrize(
    ("reply", "rc", "line"),
    [
        (None, 1, "otus: no reply from the daemon within 2 s"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", 1, "otus: the daemon sent a reply that is not JSON"),
        (
            b'{"jsonrpc":"2.0","error":"nope","id":1}\n',
            1,
            "otus: the daemon sent a reply that is not a JSON-RPC response to the call",
        ),
        (
            b'{"jsonrpc":"2.0","result":null,"id":1}\n',
            1,
            "otus: the daemon sent a reply that is not a JSON-RPC response to the call",
        ),
        (b"", 1, "otus: the daemon closed the connection without replying"),
    ],
)
def test_a_misbehaving_daemon_is_one_line(
    tmp_path: Path, reply: bytes | None, rc: int, line: str
) -> None:
    sock = tmp_path / "s.sock"
    with fake_daemon(sock, reply):
        for args in (["task", "list"], ["stop"]):
            t0 = time.monotonic()
            r = run_otus(*args, "--socket", str(sock), "--timeout", "2")
            assert (r.returncode, r.stderr.strip()) == (rc, line), (args, r.stderr)
            assert time.monotonic() - t0 < 30


@pytest.mark.parametrize(
    ("args", "result"),
    [
        (["task", "list"], '{"tasks":[1]}'),
        (["task", "list"], '{"tasks":null}'),
        (["task", "status", "x"], '{"id":"x"}'),
        (["status"], '{"pid":"one"}'),
    ],
)
def test_a_reply_of_the_wrong_shape_is_one_line(
    tmp_path: Path, args: list[str], result: str
) -> None:
    """Another version's daemon, or another program: one line that says so, no traceback."""
    sock = tmp_path / "s.sock"
    with fake_daemon(sock, b'{"jsonrpc":"2.0","result":%s,"id":1}\n' % result.encode()):
        r = run_otus(*args, "--socket", str(sock), "--timeout", "5")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert line.startswith("otus: the daemon sent a reply this otus cannot read ("), line
    assert line.endswith("is it the same version?")


def test_a_socket_path_that_is_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    r = run_otus("task", "list", "--socket", str(tmp_path / "file"))
    assert r.returncode == 3
    assert r.stderr.strip() == f"otus: daemon not running ({tmp_path / 'file'} is not a socket)"
    long = "/tmp/" + "x" * 120 + "/otus.sock"
    r = run_otus("task", "list", "--socket", long)
    assert r.returncode == 1
    assert r.stderr.strip() == f"otus: cannot connect to {long}: AF_UNIX path too long"
