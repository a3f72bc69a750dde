"""A real daemon given a config it cannot use: one line says why; a running daemon stays up."""

from __future__ import annotations

import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from otus.core.errors import RpcError
from otus.daemon.config import DaemonSection, GlobalConfig
from otus.daemon.daemon import Daemon
from tests.infra.daemon import pid_alive, wait_for

pytestmark = pytest.mark.slow

UNREADABLE = {
    "nested": ("a: " + "[" * 100_000, "nested too deeply"),
    "huge-int": ("a: " + "9" * 5000, "more than 4300 digits"),
}


def test_unreadable_config_on_sighup_or_reload_keeps_the_old_one(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.start()
    for text, why in UNREADABLE.values():
        d.config_path.write_text(text)
        d.send_signal(signal.SIGHUP)
        wait_for(
            lambda why=why: [
                r
                for r in d.log_records()
                if r.get("event") == "config reload failed; keeping the current config"
                and why in str(r.get("error"))
            ],
            what=f"the reload failure ({why}) in the log",
        )
        assert pid_alive(d.pid), d.output()[-3000:]
        with pytest.raises(RpcError) as e:
            d.rpc("daemon.reload")
        assert e.value.code == -32006 and why in e.value.message  # invalid config, not internal
        assert d.rpc("daemon.status")["ready"]
    assert "Traceback" not in d.output()
    assert d.stop() < 15.0 and d.proc.returncode == 0


def test_socket_directory_is_created_0750(daemon_factory: Any, tmp_path: Path) -> None:
    sock_dir = tmp_path / "run" / "otus"
    d = daemon_factory(daemon={"socket_path": str(sock_dir / "otus.sock")})
    d.socket = sock_dir / "otus.sock"
    d.start()
    assert stat.S_IMODE(sock_dir.stat().st_mode) == 0o750
    d.stop()


def test_bad_kafka_broker_in_the_environment_stops_the_start(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.start(wait=False, env={"OTUS_KAFKA__BROKERS": "127.0.0.1:abc"})
    assert d.proc.wait(60) == 2
    out = d.output()
    assert "broker '127.0.0.1:abc': the port must be a number from 1 to 65535" in out
    assert "Traceback" not in out


async def test_a_reload_bug_never_escapes_the_sighup_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An exception out of the SIGHUP task would end the daemon's task group, and the daemon.
    config = GlobalConfig(daemon=DaemonSection(state_file=str(tmp_path / "state.json")))
    daemon = Daemon(config, env={})

    async def broken() -> dict[str, Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(daemon, "reload", broken)
    await daemon._reload_quietly()
    assert daemon.config is config
