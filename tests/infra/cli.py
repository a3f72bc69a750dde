"""Run the `otus` command the way a user does: a child process from the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ROOT", "run_otus"]

ROOT = Path(__file__).resolve().parents[2]
# Where a developer's shell may point the CLI (a daemon, a broker): never inherited by tests.
_AMBIENT = ("OTUS_SOCKET", "OTUS_KAFKA_BROKERS")


def run_otus(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """``python -m otus ARGS`` with text output captured; ``env`` adds to a clean environment."""
    full = {k: v for k, v in os.environ.items() if k not in _AMBIENT}
    full.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "otus", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=full,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
