"""A blocking JSON-RPC client of the daemon's Unix socket (what the CLI uses)."""

from __future__ import annotations

import itertools
import math
import socket
import stat
import time
from pathlib import Path
from typing import Any

import orjson

from otus.core.errors import ControlError, DaemonNotRunningError, RpcError

__all__ = ["UdsClient"]

_MAX_REPLY = 64 << 20
_MAX_TIMEOUT_S = 1e6  # socket.settimeout overflows somewhere past 1e9 s


class UdsClient:
    """One connection per call; each call waits at most ``timeout`` seconds in all for its reply."""

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        if not (math.isfinite(timeout) and 0 < timeout <= _MAX_TIMEOUT_S):
            raise ValueError(
                f"timeout must be a finite number of seconds > 0, at most {_MAX_TIMEOUT_S:.0f}, "
                f"not {timeout}"
            )
        self.path = Path(path)
        self.timeout = timeout
        self._ids = itertools.count(1)

    def _connect(self, deadline: float) -> socket.socket:
        pause = 0.005
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                s.connect(str(self.path))
                return s
            except BlockingIOError:
                # EAGAIN: the daemon's listen queue is full; a Unix connect does not wait for
                # room as a TCP one does, so wait here (a burst of clients is not an error).
                s.close()
                if time.monotonic() + pause > deadline:
                    raise ControlError(
                        f"the daemon is busy: no connection to {self.path} within "
                        f"{self.timeout:g} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
            except FileNotFoundError:
                s.close()
                raise DaemonNotRunningError(
                    f"daemon not running (no socket at {self.path})"
                ) from None
            except ConnectionRefusedError:
                s.close()
                raise DaemonNotRunningError(f"daemon not running ({self._refused_why()})") from None
            except PermissionError:
                s.close()
                raise ControlError(
                    f"permission denied on {self.path} (run as root or in the socket's group)"
                ) from None
            except OSError as e:
                s.close()
                raise ControlError(f"cannot connect to {self.path}: {e.strerror or e}") from None

    def _refused_why(self) -> str:
        try:
            is_socket = stat.S_ISSOCK(self.path.stat().st_mode)
        except OSError:
            is_socket = True
        return f"nothing listens on {self.path}" if is_socket else f"{self.path} is not a socket"

    def exchange(self, line: bytes) -> bytes:
        """Send one raw line, return the raw reply line (b"" when the daemon sent none)."""
        deadline = time.monotonic() + self.timeout
        with self._connect(deadline) as s:
            buf = bytearray()
            try:
                try:
                    s.sendall(line if line.endswith(b"\n") else line + b"\n")
                    s.shutdown(socket.SHUT_WR)
                except (BrokenPipeError, ConnectionResetError):
                    # The daemon answered and closed before reading it all (too many clients,
                    # request too large): its reply waits in our receive queue.
                    pass
                while b"\n" not in buf:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    # Per call, not per recv: a daemon sending a byte at a time must not hold
                    # the client past its timeout.
                    s.settimeout(left)
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        if not buf:
                            raise
                        break
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > _MAX_REPLY:
                        raise ControlError("reply too large")
            except TimeoutError:
                raise ControlError(f"no reply from the daemon within {self.timeout:g} s") from None
            except OSError as e:
                raise ControlError(f"connection to the daemon failed: {e.strerror or e}") from None
        return bytes(buf)

    def call(self, method: str, params: Any = None) -> Any:
        """Call a method; return its result (an object), or raise RpcError: the daemon's error."""
        req_id = next(self._ids)
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": req_id}
        if params is not None:
            req["params"] = params
        raw = self.exchange(orjson.dumps(req))
        if not raw:
            raise ControlError("the daemon closed the connection without replying")
        try:
            resp = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ControlError("the daemon sent a reply that is not JSON") from None
        return _result(resp, req_id)


def _result(resp: Any, req_id: int) -> Any:
    """The result of a response to call ``req_id``, or raise its error."""
    bad = ControlError("the daemon sent a reply that is not a JSON-RPC response to the call")
    if not isinstance(resp, dict) or ("result" in resp) == ("error" in resp):
        raise bad
    if "error" in resp:
        err = resp["error"]
        # id null: the daemon could not read the call (too many clients, request too large)
        if resp.get("id") not in (req_id, None) or not isinstance(err, dict):
            raise bad
        code, message = err.get("code"), err.get("message")
        if not isinstance(code, int) or isinstance(code, bool) or not isinstance(message, str):
            raise bad
        raise RpcError(code, message, err.get("data"))
    # every method's result is an object; anything else is not the daemon we know
    if resp.get("id") != req_id or not isinstance(resp["result"], dict):
        raise bad
    return resp["result"]
