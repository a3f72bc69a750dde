"""A real `otus daemon` process for tests: config, socket, PID and state files in tmp."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otus.control.uds_client import UdsClient
from tests.infra.cli import ROOT, run_otus

__all__ = ["DaemonProc", "children_of", "daemon_factory", "looping_task", "pid_alive", "wait_for"]

EXAMPLE = ROOT / "examples" / "sipp-uac-uas.pcap"
START_TIMEOUT_S = 90.0  # a loaded 2-core CI machine imports slowly


def wait_for(pred: Any, timeout: float = 30.0, what: str = "condition", every: float = 0.1) -> Any:
    """Poll ``pred()`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def pid_alive(pid: int) -> bool:
    """Whether a process exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ")[1][:1] != b"Z"
    except (OSError, IndexError):
        return False


def children_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` (multiprocessing's resource tracker aside)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != b"Z":
            try:
                if b"resource_tracker" in (entry / "cmdline").read_bytes():
                    continue
            except OSError:
                continue
            out.append(int(entry.name))
    return out


def looping_task(task_id: str, out: Path, rate: int = 100, **extra: Any) -> dict[str, Any]:
    """A task that replays the example capture until stopped, records to ``out``."""
    return {
        "id": task_id,
        "capture": {"type": "pcap", "path": str(EXAMPLE), "loop": 0, "rate_pps": rate},
        "reporters": [{"type": "console", "config": {"format": "json", "path": str(out)}}],
        **extra,
    }


class DaemonProc:
    """One daemon: config in ``tmp``, started and stopped by the test."""

    def __init__(self, tmp: Path, name: str = "d", **overrides: Any) -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "otus.sock"
        self.pid_file = self.dir / "otus.pid"
        self.state_file = self.dir / "state.json"
        self.log_file = self.dir / "otus.log"
        self.config_path = self.dir / "otus.yaml"
        self.stdout = self.dir / "stdout.log"
        self.config: dict[str, Any] = {
            "daemon": {
                "pid_file": str(self.pid_file),
                "socket_path": str(self.socket),
                "state_file": str(self.state_file),
                "shutdown_timeout_s": 15,
            },
            "log": {
                "level": "info",
                "format": "json",
                "outputs": [{"type": "stdout"}, {"type": "file", "path": str(self.log_file)}],
            },
            "metrics": {"listen": "127.0.0.1:0"},
            "agent": {"id": f"test-{name}"},
        }
        for section, values in overrides.items():
            self.config.setdefault(section, {}).update(values)
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        """(Re)write the YAML file."""
        self.config_path.write_text(yaml.safe_dump(self.config))

    @property
    def pid(self) -> int:
        """The daemon's PID."""
        assert self.proc is not None
        return self.proc.pid

    def start(
        self,
        *args: str,
        wait: bool = True,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        """Start ``python -m otus daemon --config ...`` (after ``prefix``: ``ip netns exec``)."""
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        full_env.pop("OTUS_SOCKET", None)
        with self.stdout.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(prefix or []),
                    sys.executable,
                    "-m",
                    "otus",
                    "daemon",
                    "--config",
                    str(self.config_path),
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=ROOT,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Poll ``daemon.status`` until ready; fail with the daemon's output if it exits."""

        def ready() -> Any:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            try:
                st = self.rpc("daemon.status")
            except Exception:
                return None
            return st if st.get("ready") else None

        return wait_for(ready, timeout, "the daemon to be ready", every=0.2)  # type: ignore[no-any-return]

    def output(self) -> str:
        """What the daemon printed."""
        return self.stdout.read_text(errors="replace") if self.stdout.exists() else ""

    def client(self, timeout: float = 60.0) -> UdsClient:
        """A client of this daemon's socket."""
        return UdsClient(self.socket, timeout=timeout)

    def rpc(self, method: str, params: Any = None) -> Any:
        """Call a method."""
        return self.client().call(method, params)

    def raw(self, line: bytes, timeout: float = 30.0) -> bytes:
        """Send one raw line, return the raw reply."""
        return self.client(timeout).exchange(line)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``otus ARGS --socket SOCK``."""
        return run_otus(*args, "--socket", str(self.socket), stdin=input)

    def metrics(self) -> str:
        """One scrape of /metrics."""
        url = self.rpc("daemon.status")["metrics_url"]
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())

    def send_signal(self, sig: int) -> None:
        """Send a signal to the daemon."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> float:
        """Signal and wait; return the seconds until the process exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"daemon did not exit within {timeout} s:\n{self.output()[-3000:]}")
        return time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL the daemon (its workers follow through PR_SET_PDEATHSIG)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON lines of the log file."""
        import json

        if not self.log_file.exists():
            return []
        out = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """``make(name="d", **config_overrides) -> DaemonProc``; every daemon is killed at the end."""
    made: list[DaemonProc] = []

    def make(name: str = "d", **overrides: Any) -> DaemonProc:
        d = DaemonProc(tmp_path, name, **overrides)
        made.append(d)
        return d

    yield make
    for d in made:
        workers = children_of(d.proc.pid) if d.proc is not None else []
        d.kill()
        for pid in workers:  # they get SIGTERM from the kernel when the daemon dies; be sure
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
