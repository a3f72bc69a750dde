"""Run the `otus` command the way a user does: a child process from the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["ROOT", "run_otus"]

ROOT = Path(__file__).resolve().parents[2]
# Where a developer's shell may point the CLI (a daemon, a broker): never inherited by tests.
_AMBIENT = ("OTUS_SOCKET", "OTUS_KAFKA_BROKERS")


def run_otus(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | bytes | IO[bytes] | None = None,
    pass_fds: tuple[int, ...] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """``python -m otus ARGS``, output captured as text; ``stdin``: text, bytes or an open file.

    ``env`` adds to a clean environment; ``pass_fds`` are inherited (``-r /dev/fd/N``).
    """
    full = {k: v for k, v in os.environ.items() if k not in _AMBIENT}
    full.update(PYTHONPATH=str(ROOT), **(env or {}))
    cmd = [sys.executable, "-m", "otus", *args]
    kw: dict[str, Any] = {"env": full, "cwd": ROOT, "timeout": timeout, "pass_fds": pass_fds}
    if stdin is None or isinstance(stdin, str):
        return subprocess.run(cmd, input=stdin, text=True, capture_output=True, check=False, **kw)
    # Bytes (a capture through a pipe) or an open file: the output is text all the same.
    if isinstance(stdin, bytes):
        raw = subprocess.run(cmd, input=stdin, capture_output=True, check=False, **kw)
    else:
        raw = subprocess.run(cmd, stdin=stdin, capture_output=True, check=False, **kw)
    out, err = raw.stdout.decode(), raw.stderr.decode()
    return subprocess.CompletedProcess(cmd, raw.returncode, out, err)
