"""A real `otus daemon` process driven through its real socket: lifecycle, restart, signals."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from otus.core.errors import RpcError
from tests.infra.daemon import (
    EXAMPLE,
    children_of,
    looping_task,
    pid_alive,
    wait_for,
)

pytestmark = pytest.mark.slow


def finite_task(task_id: str, out: Path) -> dict[str, Any]:
    return {
        "id": task_id,
        "capture": {"type": "pcap", "path": str(EXAMPLE)},
        "reporters": [{"type": "console", "config": {"format": "json", "path": str(out)}}],
    }


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_task_lifecycle_and_ordered_shutdown(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    assert d.pid_file.read_text().strip() == str(d.pid)
    assert oct(d.socket.stat().st_mode & 0o777) == oct(0o660)
    out = tmp_path / "records.jsonl"

    info = d.rpc("task.create", looping_task("calls", out, rate=200))
    assert info["state"] == "running"
    assert [t["id"] for t in d.rpc("task.list")["tasks"]] == ["calls"]
    pids = [p["pid"] for p in info["processes"]]
    assert pids and all(p != d.pid for p in pids)  # workers are processes of their own

    first = d.rpc("task.status", {"id": "calls"})["stats"].get("capture.packets", 0)
    moved = wait_for(
        lambda: d.rpc("task.status", ["calls"])["stats"].get("capture.packets", 0) > first + 20,
        what="counters to move",
    )
    assert moved

    final = d.rpc("task.delete", {"id": "calls"})
    assert final["state"] == "stopped"
    # delete flushed the reporter: every record counted is in the file
    assert final["stats"]["report.records"] == lines(out) > 0
    assert d.rpc("task.list")["tasks"] == []
    assert not any(pid_alive(p) for p in pids)

    d.rpc("task.create", looping_task("again", tmp_path / "again.jsonl"))
    took = d.stop()
    assert d.proc.returncode == 0, d.output()
    assert took < 15.0  # the stated shutdown_timeout_s
    assert not d.pid_file.exists() and not d.socket.exists()
    messages = [r["event"] for r in d.log_records()]
    messages = messages[messages.index("shutting down") :]
    order = ["shutting down", "task ended", "daemon stopped"]
    assert [m for m in messages if m in order] == order
    stopped = next(r for r in d.log_records() if r["event"] == "daemon stopped")
    assert stopped["shutdown_s"] < 15.0
    print(f"shutdown with one running task: {stopped['shutdown_s']} s, exit after {took:.2f} s")


def test_restart_restores_tasks(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    d.rpc("task.create", looping_task("live", tmp_path / "live.jsonl"))
    d.rpc("task.create", finite_task("file", tmp_path / "file.jsonl"))
    wait_for(lambda: d.rpc("task.status", ["file"])["state"] == "stopped", what="file task end")
    file_stats = d.rpc("task.status", ["file"])["stats"]
    assert file_stats["report.records"] == 12
    d.stop()

    saved = json.loads(d.state_file.read_text())
    assert {t["spec"]["id"]: t["desired"] for t in saved["tasks"]} == {
        "live": "running",
        "file": "stopped",
    }

    d.start()
    tasks = {t["id"]: t for t in d.rpc("task.list")["tasks"]}
    assert tasks["live"]["state"] == "running"
    # the finished task is listed with its last counters and not run again
    assert tasks["file"]["state"] == "stopped"
    assert tasks["file"]["stats"]["report.records"] == 12
    time.sleep(1.0)
    assert lines(tmp_path / "file.jsonl") == 12
    d.stop()


def test_crash_leaves_stale_files_and_restart_restores(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    info = d.rpc("task.create", looping_task("live", tmp_path / "live.jsonl"))
    worker = info["processes"][0]["pid"]
    d.kill()  # SIGKILL: no cleanup at all
    assert d.pid_file.exists() and d.socket.exists()
    wait_for(lambda: not pid_alive(worker), 15, "the orphaned worker to exit (PDEATHSIG)")

    d.start()  # the stale PID file and socket do not block it
    assert d.rpc("task.status", ["live"])["state"] == "running"
    d.stop()


def test_worker_blocked_on_a_slow_reader_dies_with_the_daemon(
    daemon_factory: Any, tmp_path: Path
) -> None:
    fifo = tmp_path / "slow.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that never reads
    worker = 0
    try:
        d = daemon_factory()
        d.start()
        info = d.rpc("task.create", looping_task("slow", fifo, rate=5000))
        worker = info["processes"][0]["pid"]
        # the worker's loop is stuck in write(2), deaf to the SIGTERM its daemon's death sends
        wait_for(lambda: _stalled(reader), what="the FIFO to fill up")
        d.kill()
        wait_for(lambda: not pid_alive(worker), 15, "the blocked orphan worker to exit")
    finally:
        if worker and pid_alive(worker):  # a failure must not leave it blocked forever
            os.kill(worker, signal.SIGKILL)
        os.close(reader)


def _stalled(fd: int) -> bool:
    """The pipe holds data and nothing more comes in (a writer at 5000 records/s is blocked)."""

    def queued() -> int:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])

    before = queued()
    time.sleep(0.5)
    return before > 0 and queued() == before


def test_stale_pid_file_and_socket_from_elsewhere(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.pid_file.write_text("999999\n")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(d.socket))  # a socket file nobody accepts on
    s.close()
    d.start()
    assert d.rpc("daemon.status")["pid"] == d.pid
    d.stop()


def test_second_daemon_refused(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    same = daemon_factory("same")
    same.config = d.config
    same.write_config()
    same.start(wait=False)
    assert same.proc.wait(60) == 1
    assert f"another otus daemon is running (pid {d.pid}" in same.output()

    # same socket, other PID file: refused by the socket's lock
    other = daemon_factory("other")
    other.config["daemon"]["socket_path"] = str(d.socket)
    other.write_config()
    other.start(wait=False)
    assert other.proc.wait(60) == 1
    assert "another otus daemon is running" in other.output()
    assert "socket lock" in other.output()
    assert d.rpc("daemon.status")["ready"]  # the first one is untouched
    d.stop()


def test_sighup_reloads_log_level_without_stopping_tasks(
    daemon_factory: Any, tmp_path: Path
) -> None:
    d = daemon_factory()
    d.start()
    d.rpc("task.create", looping_task("live", tmp_path / "live.jsonl"))
    d.rpc("task.list")
    assert not [r for r in d.log_records() if r.get("level") == "debug"]

    d.config["log"]["level"] = "debug"
    d.config["limits"] = {"max_tasks": 3}
    d.write_config()
    d.send_signal(signal.SIGHUP)
    wait_for(lambda: d.rpc("daemon.status")["log"]["level"] == "debug", what="the new level")
    st = d.rpc("daemon.status")
    assert st["limits"]["max_tasks"] == 3
    d.rpc("task.list")
    wait_for(
        lambda: [r for r in d.log_records() if r.get("event") == "control request"],
        what="a debug line in the log file",
    )
    assert d.rpc("task.status", ["live"])["state"] == "running"  # not restarted
    assert any(r.get("event") == "config reloaded" for r in d.log_records())

    # an invalid config is refused; the running one stays
    d.config_path.write_text("log: {level: loud}\n")
    with pytest.raises(RpcError) as e:
        d.rpc("daemon.reload")
    assert e.value.code == -32006
    assert "log.level" in e.value.message
    assert d.rpc("daemon.status")["log"]["level"] == "debug"
    d.stop()


def test_two_clients_at_once(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    # an idle client holding a connection does not block the others
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(str(d.socket))
    errors: list[BaseException] = []
    results: list[str] = []

    def client(n: int) -> None:
        try:
            for _ in range(15):
                results.append(d.rpc("daemon.status")["agent_id"])
            d.rpc("task.list")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    idle.close()
    assert not errors
    assert results == ["test-d"] * 90

    # the same task id from two clients at once: exactly one wins
    outcomes: list[Any] = []

    def create() -> None:
        try:
            outcomes.append(d.rpc("task.create", looping_task("dup", tmp_path / "dup.jsonl")))
        except RpcError as e:
            outcomes.append(e.code)

    racers = [threading.Thread(target=create) for _ in range(2)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(120)
    assert sorted(str(o) if isinstance(o, int) else "ok" for o in outcomes) == ["-32002", "ok"]
    d.stop()


def test_start_failure_leaves_nothing_and_limits(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(limits={"max_tasks": 1})
    d.start()
    bad = finite_task("bad", tmp_path / "bad.jsonl")
    bad["capture"]["path"] = str(tmp_path / "missing.pcap")
    with pytest.raises(RpcError) as e:
        d.rpc("task.create", bad)
    assert e.value.code == -32004
    assert "missing.pcap" in e.value.message
    assert d.rpc("task.list")["tasks"] == []
    wait_for(lambda: children_of(d.pid) == [], 10, "no worker left behind")
    saved = json.loads(d.state_file.read_text()) if d.state_file.exists() else {"tasks": []}
    assert saved["tasks"] == []

    d.rpc("task.create", looping_task("one", tmp_path / "one.jsonl"))
    with pytest.raises(RpcError) as e:
        d.rpc("task.create", looping_task("two", tmp_path / "two.jsonl"))
    assert e.value.code == -32003
    with pytest.raises(RpcError) as e:
        d.rpc("task.create", looping_task("one", tmp_path / "one.jsonl"))
    assert e.value.code == -32002
    d.stop()


def test_dead_worker_fails_the_task(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    info = d.rpc("task.create", looping_task("victim", tmp_path / "v.jsonl"))
    os.kill(info["processes"][0]["pid"], signal.SIGKILL)
    st = wait_for(
        lambda: (s := d.rpc("task.status", ["victim"]))["state"] == "failed" and s, what="failed"
    )
    assert st["reason"] == "worker 0 killed by signal SIGKILL"
    d.stop()
    d.start()  # a failed task is listed after a restart, not run again
    st = d.rpc("task.status", ["victim"])
    assert st["state"] == "failed" and "SIGKILL" in st["reason"]
    d.stop()


def test_memory_limit_fails_the_task(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(limits={"memory_per_task_mb": 8})  # a Python worker alone is bigger
    d.start()
    d.rpc("task.create", looping_task("fat", tmp_path / "fat.jsonl"))
    st = wait_for(
        lambda: (s := d.rpc("task.status", ["fat"]))["state"] == "failed" and s,
        what="the memory limit",
    )
    assert st["reason"].startswith("memory limit exceeded")
    assert not any(p["alive"] for p in st["processes"])
    d.stop()


def test_shutdown_time_with_running_tasks(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(daemon={"shutdown_timeout_s": 5})
    d.start()
    for i in range(3):
        d.rpc("task.create", looping_task(f"t{i}", tmp_path / f"t{i}.jsonl", rate=1000))
    workers = children_of(d.pid)
    assert len(workers) >= 3
    took = d.stop(signal.SIGINT)
    assert d.proc.returncode == 0
    assert took < 5.0 + 3.0  # the budget, plus interpreter exit on a loaded machine
    assert not any(pid_alive(p) for p in workers)
    stopped = next(r for r in d.log_records() if r["event"] == "daemon stopped")
    assert stopped["shutdown_s"] < 5.0
    print(f"shutdown with 3 running tasks: {stopped['shutdown_s']} s, exit after {took:.2f} s")


def test_optional_planes_never_take_the_daemon_down(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(
        kafka={"brokers": ["127.0.0.1:1"]},
        kubernetes={"kubeconfig": str(tmp_path / "missing-kubeconfig")},
    )
    d.start("--kubernetes", env={"NODE_NAME": "node-a"})
    planes = d.rpc("daemon.status")["planes"]
    assert planes["uds"] == "running"
    assert set(planes) == {"uds", "kafka", "kubernetes"}
    # without a reachable API server the agent fails and is retried with a backoff
    wait_for(
        lambda: d.rpc("daemon.status")["planes"]["kubernetes"].startswith("failed"),
        what="the Kubernetes plane to report its failure",
    )
    d.rpc("task.create", looping_task("still", tmp_path / "s.jsonl"))
    took = d.stop()
    assert d.proc.returncode == 0 and took < 15.0


def test_later_task_events_are_not_tagged_with_the_client_that_created_it(
    daemon_factory: Any, tmp_path: Path
) -> None:
    """The creating client's peer_pid belongs to its request, not to the task's whole life."""
    d = daemon_factory()
    d.start()
    info = d.rpc("task.create", looping_task("tagged", tmp_path / "t.jsonl"))
    os.kill(info["processes"][0]["pid"], signal.SIGKILL)
    wait_for(lambda: d.rpc("task.status", ["tagged"])["state"] == "failed", what="the failure")
    records = d.log_records()
    created = next(r for r in records if r["event"] == "task created")
    failed = next(r for r in records if r["event"] == "task failed; stopping it")
    assert created["peer_pid"] == os.getpid()  # the request itself is attributed
    assert "peer_pid" not in failed, failed
