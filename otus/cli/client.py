"""What the control commands share: finding the socket, calling the daemon, printing results.

Socket: ``--socket PATH``, else ``$OTUS_SOCKET``, else ``daemon.socket_path`` of the config
(``--config``, ``$OTUS_CONFIG``, ``/etc/otus/otus.yaml``; ``OTUS_DAEMON__SOCKET_PATH`` applies),
else ``/run/otus/otus.sock``.

Exit codes of every control command: 0 done; 1 the daemon refused or failed the request (task
not found, task exists, limit, start failed, internal error) or did not answer in time; 2 bad
usage or an invalid task/config (locally or ``-32005``/``-32602`` from the daemon); 3 the daemon
is not running (no socket, or nobody listening on it).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from otus.control.uds_client import UdsClient
from otus.core.errors import ControlError

__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "ago",
    "client_parent",
    "connect",
    "print_json",
    "reads_reply",
    "resolve_socket",
    "seconds",
    "table",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
DAY_S = 86400.0


def seconds(max_s: float = DAY_S, *, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, > 0 (>= 0 with ``zero``), <= ``max_s``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above_zero = value >= 0 if zero else value > 0
        if not (math.isfinite(value) and above_zero and value <= max_s):
            raise argparse.ArgumentTypeError(
                f"must be a finite number of seconds, {'>=' if zero else '>'} 0 and at most "
                f"{max_s:.0f}, not {text!r}"
            )
        return value

    return parse


def client_parent() -> argparse.ArgumentParser:
    """Options every control command takes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument("--socket", metavar="PATH", help="control socket (default: see otus --help)")
    g.add_argument("--config", metavar="PATH", help="read the socket path from this config")
    g.add_argument(
        "--timeout", type=seconds(), default=60.0, metavar="SECONDS", help="reply timeout (60)"
    )
    p.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="output format"
    )
    return p


def resolve_socket(args: argparse.Namespace) -> Path:
    """Where the daemon's socket is (see the module docstring)."""
    if getattr(args, "socket", None):
        return Path(args.socket)
    if os.environ.get("OTUS_SOCKET"):
        return Path(os.environ["OTUS_SOCKET"])
    from otus.daemon.config import config_path, load_config  # noqa: PLC0415 - keep the CLI fast

    return Path(load_config(config_path(getattr(args, "config", None))).daemon.socket_path)


def connect(args: argparse.Namespace) -> UdsClient:
    """A client of the daemon named by the arguments."""
    return UdsClient(resolve_socket(args), timeout=getattr(args, "timeout", 60.0))


def print_json(obj: Any) -> None:
    """Pretty JSON on stdout."""
    print(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table."""
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def ago(ts: float | None) -> str:
    """``3m12s`` since a Unix time."""
    if not ts:
        return "-"
    s = int(max(0.0, time.time() - ts))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def reads_reply(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command whose reply has the wrong shape (another version?) fails in one line."""

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        try:
            return cmd(args)
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            raise ControlError(
                f"the daemon sent a reply this otus cannot read ({type(e).__name__}: {e}); "
                "is it the same version?"
            ) from None

    return run
