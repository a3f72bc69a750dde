"""`otus daemon`'s entry: what it must survive before the daemon's own handlers are in place."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.infra.daemon import START_TIMEOUT_S, wait_for

pytestmark = pytest.mark.slow


def _ignores_sighup(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ignored = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(ignored, 16) & (1 << (signal.SIGHUP - 1)))


def _ready(d: Any) -> bool:
    try:
        return bool(d.rpc("daemon.status").get("ready"))
    except Exception:
        return False


def test_sighup_during_startup_does_not_kill_the_daemon(daemon_factory: Any) -> None:
    # systemd may send a reload right after the start, before the reload handler exists
    d = daemon_factory()
    d.start(wait=False)
    wait_for(
        lambda: _ignores_sighup(d.pid) or _ready(d) or d.proc.poll() is not None,
        START_TIMEOUT_S,
        "`otus daemon` to run",
        every=0.005,
    )
    assert _ignores_sighup(d.pid), "SIGHUP was not ignored while the daemon started"
    deadline = time.monotonic() + START_TIMEOUT_S
    sent = 0
    while not _ready(d):  # imports, config, socket, restore: a SIGHUP all along
        assert d.proc.poll() is None, f"daemon died after {sent} SIGHUP:\n{d.output()}"
        assert time.monotonic() < deadline, "the daemon never became ready"
        d.send_signal(signal.SIGHUP)
        sent += 1
        time.sleep(0.01)
    assert sent > 5
    # the real handler replaced the ignoring: a SIGHUP now reloads
    d.send_signal(signal.SIGHUP)
    wait_for(
        lambda: any(r.get("event") == "config reloaded" for r in d.log_records()),
        what="a reload",
    )
    assert d.proc.poll() is None
    d.stop()
    assert d.proc.returncode == 0
