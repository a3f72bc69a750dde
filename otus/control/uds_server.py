"""The JSON-RPC server on the daemon's Unix socket (newline-delimited; see ``jsonrpc``).

- The socket is created with mode ``0660`` (optionally group-owned by ``group``) in a parent
  directory created ``0750`` when missing; a stale socket (nobody accepting on it) is replaced,
  a live one makes :meth:`UdsServer.start` fail with a clear message.
- The socket is bound, given its mode and group, and only then listens: nobody connects while
  it still has the umask's mode.
- Every connection is served by its own task in the server's task group; requests on one
  connection are answered in order; at most ``max_clients`` connections at once. One more
  closes the connection that has waited longest (over ``evict_idle_s``) for a request; when
  none has, it gets a ``-32007`` too-many-clients reply and is closed.
- A request line over ``max_request_bytes`` gets ``-32600`` and the connection is closed (its
  framing is lost); an idle connection is closed after ``idle_timeout_s``; a reply the client
  does not read within ``write_timeout_s`` closes the connection, unsent data dropped.
- Malformed input never ends the server: each connection's failures stay in that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from otus.control.jsonrpc import (
    INVALID_REQUEST,
    SHUTTING_DOWN,
    TOO_MANY_CLIENTS,
    encode,
    error_response,
)
from otus.control.jsonrpc import handle_payload as _handle
from otus.core.errors import ControlError

__all__ = ["UdsServer", "make_socket_dir", "socket_in_use"]

log = structlog.stdlib.get_logger("otus.control")

_CRED = struct.Struct("3i")
# sun_path is 108 bytes; Linux takes a path that fills it without the terminating NUL.
MAX_SOCKET_PATH = 108


def make_socket_dir(path: Path) -> None:
    """Create the socket's directory ``0750`` when it is missing; an existing one is left as is."""
    parent = path.parent
    if parent.is_dir():
        return
    try:
        parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.chmod(parent, 0o750)  # noqa: S103 - the documented mode, whatever the umask
    except OSError as e:
        raise ControlError(f"cannot create the socket directory {parent}: {e.strerror}") from None


def socket_in_use(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError as e:
        # ECONNREFUSED: a stale socket left by a crashed daemon. EAGAIN: a live but busy one.
        return e.errno == errno.EAGAIN
    finally:
        s.close()
    return True


class UdsServer:
    """Serves ``call(method, params)`` over a Unix socket until cancelled."""

    def __init__(
        self,
        path: str | Path,
        call: Callable[[str, Any], Awaitable[Any]],
        *,
        mode: int = 0o660,
        group: str = "",
        max_request_bytes: int = 1 << 20,
        max_clients: int = 64,
        idle_timeout_s: float = 300.0,
        write_timeout_s: float = 30.0,
        evict_idle_s: float = 1.0,
        on_internal_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.call = call
        self.mode = mode
        self.group = group
        self.max_request_bytes = max_request_bytes
        self.max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self.write_timeout_s = write_timeout_s
        self.evict_idle_s = evict_idle_s
        self.on_internal_error = on_internal_error
        self._server: asyncio.AbstractServer | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._pending: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._clients = 0
        # connection task -> when it began waiting for a request line (oldest first)
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._inode: int | None = None
        self.accepting = False
        self.connections_total = 0
        self.rejected_total = 0
        self.evicted_total = 0

    @property
    def serving(self) -> bool:
        """Listening and taking commands."""
        return self._server is not None and self.accepting

    async def start(self) -> None:
        """Bind and listen; raise ControlError when another process serves this socket."""
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise ControlError(
                f"socket path too long ({len(os.fsencode(self.path))} bytes, at most "
                f"{MAX_SOCKET_PATH}): {self.path}"
            )
        if socket_in_use(self.path):
            raise ControlError(f"another daemon is listening on {self.path}")
        make_socket_dir(self.path)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ControlError(f"{self.path} exists and is not a socket")
            self.path.unlink()  # stale: left by a daemon that did not shut down
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            self._inode = self.path.stat().st_ino
            # Before listen(): until then a connect is refused, so no one gets in through the
            # umask's mode (0777 under umask 0) before the documented one applies.
            os.chmod(self.path, self.mode)
            self._chgrp()
            self._server = await asyncio.start_unix_server(
                self._accept, sock=sock, limit=self.max_request_bytes, backlog=128
            )
        except OSError as e:
            sock.close()
            self._unlink()
            raise ControlError(f"cannot listen on {self.path}: {e.strerror or e}") from None
        self.accepting = True
        log.info("control socket listening", path=str(self.path))

    def _chgrp(self) -> None:
        if not self.group:
            return
        try:
            os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
        except (KeyError, OSError) as e:
            log.warning("cannot give the socket to its group", group=self.group, error=str(e))

    async def run(self) -> None:
        """Serve until cancelled, then close every connection and remove the socket file."""
        if self._server is None:
            await self.start()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for reader, writer in self._pending:
                    tg.create_task(self._client(reader, writer))
                self._pending.clear()
                await asyncio.Event().wait()
        finally:
            self._tg = None
            self.stop_accepting()
            self._unlink()

    def stop_accepting(self) -> None:
        """Stop listening (first step of a shutdown); connections already open are answered."""
        self.accepting = False
        if self._server is not None:
            self._server.close()

    async def drain(self, wait_s: float) -> None:
        """Wait (at most ``wait_s``) for the requests in progress to be answered."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), wait_s)

    def _unlink(self) -> None:
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tg is None:
            self._pending.append((reader, writer))
        else:
            self._tg.create_task(self._client(reader, writer))

    def _evict_idle(self) -> bool:
        """Close the connection that has waited longest for a request, if long enough."""
        victim = next(iter(self._waiting), None)
        now = asyncio.get_running_loop().time()
        if victim is None or now - self._waiting[victim] < self.evict_idle_s:
            return False
        # Cancelled while it waits for a line: no command of it is running or half done.
        del self._waiting[victim]
        victim.cancel()
        self.evicted_total += 1
        log.info("closed an idle control connection to make room", clients=self._clients)
        return True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if not self.accepting or (self._clients >= self.max_clients and not self._evict_idle()):
            self.rejected_total += 1
            code, why = (
                (TOO_MANY_CLIENTS, "too many clients")
                if self.accepting
                else (SHUTTING_DOWN, "the daemon is shutting down")
            )
            with contextlib.suppress(Exception):
                writer.write(encode(error_response(None, code, why)))
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.close()
            return
        self._clients += 1
        structlog.contextvars.bind_contextvars(**_peer(writer))
        try:
            await self._serve(reader, writer)
        except Exception as e:  # one connection's trouble never reaches the server
            log.warning("control connection failed", error=repr(e))
        finally:
            self._clients -= 1
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except Exception:
                # close() waits for the unsent reply to be flushed: from a peer that never
                # reads, that is forever, holding the socket and the reply past max_clients.
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        loop = asyncio.get_running_loop()
        while True:
            self._waiting[me] = loop.time()
            try:
                line = await asyncio.wait_for(reader.readline(), self.idle_timeout_s)
            except TimeoutError:
                return
            except (ValueError, asyncio.LimitOverrunError):
                msg = f"invalid request: over {self.max_request_bytes} bytes"
                writer.write(encode(error_response(None, INVALID_REQUEST, msg)))
                await asyncio.wait_for(writer.drain(), self.write_timeout_s)
                return
            except ConnectionError:
                return
            finally:
                self._waiting.pop(me, None)
            if not line:
                return
            if not line.strip():
                continue
            self._busy += 1
            self._idle.clear()
            try:
                resp = await _handle(line, self.call, self._internal_error)
                if resp is not None:
                    writer.write(resp)
                    await asyncio.wait_for(writer.drain(), self.write_timeout_s)
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()

    def _internal_error(self, exc: BaseException) -> None:
        log.error("control command failed", exc_info=exc)
        if self.on_internal_error is not None:
            self.on_internal_error(exc)


def _peer(writer: asyncio.StreamWriter) -> dict[str, int]:
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _gid = _CRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
        )
    except (OSError, AttributeError, struct.error):
        return {}
    return {"peer_pid": pid, "peer_uid": uid}
