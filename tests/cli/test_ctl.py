"""`otus task ...`, `otus status|reload|stop`, `otus completion` against a real daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.cli import run_otus
from tests.infra.daemon import looping_task, pid_alive

pytestmark = pytest.mark.slow


def otus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_otus(*args, env=env)


def test_control_commands(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    task_file = tmp_path / "task.yaml"
    task_file.write_text(yaml.safe_dump(looping_task("cli-task", tmp_path / "out.jsonl")))

    r = d.cli("task", "create", "-f", str(task_file))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "task cli-task running"

    r = d.cli("task", "create", "-f", str(task_file))
    assert r.returncode == 1 and "already exists" in r.stderr

    r = d.cli("task", "list")
    assert r.returncode == 0
    header, row = r.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "AGE", "WORKERS", "PACKETS", "SIP", "DROPS", "REASON"]
    assert row.split()[:2] == ["cli-task", "running"]
    assert d.cli("task", "list", "-q").stdout.split() == ["cli-task"]
    tasks = json.loads(d.cli("task", "list", "-o", "json").stdout)
    assert tasks[0]["id"] == "cli-task"

    r = d.cli("task", "status", "cli-task")
    assert r.returncode == 0
    assert "state:    running" in r.stdout and "capture.packets" in r.stdout
    status = json.loads(d.cli("task", "status", "cli-task", "-o", "json").stdout)
    assert status["state"] == "running"

    r = d.cli("task", "status", "nope")
    assert r.returncode == 1 and "no task 'nope'" in r.stderr

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "x", "capture": {"type": "pcap"}}))
    r = d.cli("task", "create", "-f", str(bad))
    assert r.returncode == 2 and "capture.pcap.path" in r.stderr and "Traceback" not in r.stderr

    # a task on stdin, JSON
    r = d.cli("task", "create", "-f", "-", input=json.dumps(looping_task("stdin", tmp_path / "s")))
    assert r.returncode == 0, r.stderr

    r = d.cli("status")
    assert r.returncode == 0 and f"pid {d.pid}" in r.stdout and "ready" in r.stdout
    assert "running 2" in r.stdout
    st = json.loads(d.cli("status", "-o", "json").stdout)
    assert st["agent_id"] == "test-d"

    r = d.cli("reload")
    assert r.returncode == 0 and "config reloaded" in r.stdout

    r = d.cli("task", "delete", "stdin")
    assert r.returncode == 0 and r.stdout.startswith("task stdin deleted (stopped)")

    r = d.cli("stop")
    assert r.returncode == 0, r.stderr
    assert f"otus daemon (pid {d.pid}) stopped in" in r.stdout
    d.proc.wait(10)
    assert not pid_alive(d.pid)


def test_daemon_not_running(tmp_path: Path) -> None:
    sock = tmp_path / "none.sock"
    for args in (["task", "list"], ["status"], ["stop"], ["reload"]):
        r = otus(*args, "--socket", str(sock))
        assert r.returncode == 3, (args, r.stderr)
        assert r.stderr.strip() == f"otus: daemon not running (no socket at {sock})"
    r = otus("task", "list", env={"OTUS_SOCKET": str(sock)})
    assert r.returncode == 3
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"daemon": {"socket_path": str(tmp_path / "cfg.sock")}}))
    r = otus("status", "--config", str(cfg))
    assert r.returncode == 3 and "cfg.sock" in r.stderr


def test_daemon_config_errors_are_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("log: {level: loud}\n")
    r = otus("daemon", "--config", str(cfg))
    assert r.returncode == 2 and "log.level" in r.stderr and "Traceback" not in r.stderr
    r = otus("daemon", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "cannot read config file" in r.stderr
    cfg.write_text(yaml.safe_dump({"daemon": {"pid_file": str(tmp_path / "p")}}))
    r = otus("daemon", "--config", str(cfg), "--kubernetes", env={"NODE_NAME": ""})
    assert r.returncode == 2 and "node name" in r.stderr


def test_completion_scripts() -> None:
    r = otus("completion", "bash")
    assert r.returncode == 0
    script = r.stdout
    for word in ("task", "create", "delete", "daemon", "--kubernetes", "--socket", "table json"):
        assert word in script
    check = subprocess.run(["bash", "-n"], input=script, text=True, check=False)
    assert check.returncode == 0
    probe = (
        script + '\nCOMP_WORDS=(otus task de); COMP_CWORD=2; _otus_complete; echo "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=False)
    assert out.stdout.split() == ["delete"]
    zsh = otus("completion", "zsh").stdout
    assert "bashcompinit" in zsh and "complete -o default -F _otus_complete otus" in zsh
    if shutil.which("zsh"):
        assert subprocess.run(["zsh", "-n"], input=zsh, text=True, check=False).returncode == 0
