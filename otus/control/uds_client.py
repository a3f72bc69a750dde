"""A blocking JSON-RPC client of the daemon's Unix socket (what the CLI uses)."""

from __future__ import annotations

import itertools
import math
import socket
from pathlib import Path
from typing import Any

import orjson

from otus.core.errors import ControlError, DaemonNotRunningError, RpcError

__all__ = ["UdsClient"]

_MAX_REPLY = 64 << 20
_MAX_TIMEOUT_S = 1e6  # socket.settimeout overflows somewhere past 1e9 s


class UdsClient:
    """One connection per call; each call waits at most ``timeout`` seconds for its reply."""

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        if not (math.isfinite(timeout) and 0 < timeout <= _MAX_TIMEOUT_S):
            raise ValueError(
                f"timeout must be a finite number of seconds > 0, at most {_MAX_TIMEOUT_S:.0f}, "
                f"not {timeout}"
            )
        self.path = Path(path)
        self.timeout = timeout
        self._ids = itertools.count(1)

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except FileNotFoundError:
            s.close()
            raise DaemonNotRunningError(f"daemon not running (no socket at {self.path})") from None
        except ConnectionRefusedError:
            s.close()
            raise DaemonNotRunningError(
                f"daemon not running (nothing listens on {self.path})"
            ) from None
        except PermissionError:
            s.close()
            raise ControlError(
                f"permission denied on {self.path} (run as root or in the socket's group)"
            ) from None
        except OSError as e:
            s.close()
            raise ControlError(f"cannot connect to {self.path}: {e.strerror or e}") from None
        return s

    def exchange(self, line: bytes) -> bytes:
        """Send one raw line, return the raw reply line (b"" when the daemon sent none)."""
        with self._connect() as s:
            try:
                s.sendall(line if line.endswith(b"\n") else line + b"\n")
                s.shutdown(socket.SHUT_WR)
                buf = bytearray()
                while b"\n" not in buf:
                    chunk = s.recv(65536)
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
        """Call a method; return its result or raise RpcError with the daemon's error."""
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params is not None:
            req["params"] = params
        raw = self.exchange(orjson.dumps(req))
        if not raw:
            raise ControlError("the daemon closed the connection without replying")
        try:
            resp = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ControlError("the daemon sent a reply that is not JSON") from None
        if not isinstance(resp, dict):
            raise ControlError("the daemon sent an unexpected reply")
        err = resp.get("error")
        if err is not None:
            raise RpcError(int(err.get("code", 0)), str(err.get("message", "")), err.get("data"))
        return resp.get("result")
