"""The task manager with real worker processes: lifecycle, failures, limits, persistence."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import uvloop

from otus.core.errors import TaskExistsError, TaskLimitError, TaskNotFoundError, TaskStartError
from otus.pipeline.spec import parse_task
from otus.task import manager as manager_module
from otus.task import runner as runner_module
from otus.task.manager import ShuttingDownError, TaskInfo, TaskManager, TaskState
from otus.task.state import SavedTask, StateFile

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sipp-uac-uas.pcap"

pytestmark = pytest.mark.slow


def spec(task_id: str, out: Path, *, loop: int = 0, path: Path = EXAMPLE, **capture: Any) -> Any:
    return parse_task(
        {
            "id": task_id,
            "capture": {
                "type": "pcap",
                "path": str(path),
                "loop": loop,
                "rate_pps": 200,
                **capture,
            },
            "reporters": [{"type": "console", "config": {"path": str(out)}}],
        }
    )


async def until(pred: Any, limit_s: float = 30.0) -> Any:
    async with asyncio.timeout(limit_s):
        while not (v := pred()):  # noqa: ASYNC110 - polling the manager's state
            await asyncio.sleep(0.05)
    return v


def workers_alive() -> list[Any]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("otus-")]


@pytest_asyncio.fixture
async def manager(tmp_path: Path) -> AsyncIterator[TaskManager]:
    m = TaskManager(agent_id="t", max_tasks=2, state_file=tmp_path / "state.json")
    yield m
    await m.shutdown(grace_s=5)


async def test_lifecycle_and_events(manager: TaskManager, tmp_path: Path) -> None:
    events: list[tuple[str, str]] = []
    unsubscribe = manager.subscribe(lambda i: events.append((i.id, i.state.value)))
    info = await manager.create(spec("a", tmp_path / "a.jsonl"))
    assert info.state == TaskState.RUNNING and info.started_at
    assert manager.get("a").id == "a"
    await until(lambda: manager.status("a").stats.get("report.records", 0) > 10)
    assert [i.id for i in manager.list()] == ["a"]
    final = await manager.delete("a")
    assert final.state == TaskState.STOPPED and final.stopped_at
    assert final.stats["report.records"] == len((tmp_path / "a.jsonl").read_text().splitlines())
    assert manager.list() == []
    assert events == [
        ("a", "created"),
        ("a", "starting"),
        ("a", "running"),
        ("a", "stopping"),
        ("a", "stopped"),
    ]
    unsubscribe()
    with pytest.raises(TaskNotFoundError):
        manager.status("a")
    with pytest.raises(TaskNotFoundError):
        await manager.delete("a")
    assert workers_alive() == []


async def test_refusals_and_failed_start_leaves_nothing(
    manager: TaskManager, tmp_path: Path
) -> None:
    with pytest.raises(TaskStartError, match="cannot open capture file"):
        await manager.create(spec("bad", tmp_path / "x", path=tmp_path / "missing.pcap"))
    assert manager.list() == [] and workers_alive() == []
    state = tmp_path / "state.json"
    assert not state.exists() or json.loads(state.read_text())["tasks"] == []
    await manager.create(spec("a", tmp_path / "a"))
    with pytest.raises(TaskExistsError):
        await manager.create(spec("a", tmp_path / "a"))
    await manager.create(spec("b", tmp_path / "b"))
    with pytest.raises(TaskLimitError):
        await manager.create(spec("c", tmp_path / "c"))
    manager.configure(max_tasks=3)
    await manager.create(spec("c", tmp_path / "c"))
    await manager.shutdown(grace_s=5)
    with pytest.raises(ShuttingDownError):
        await manager.create(spec("d", tmp_path / "d"))


async def test_task_ending_by_itself_is_saved_as_finished(
    manager: TaskManager, tmp_path: Path
) -> None:
    await manager.create(spec("file", tmp_path / "f", loop=1))
    info = await until(lambda: (i := manager.status("file")).state == TaskState.STOPPED and i)
    assert info.reason is None and info.stats["report.records"] == 12
    saved = json.loads((tmp_path / "state.json").read_text())["tasks"]
    assert saved[0]["desired"] == "stopped" and saved[0]["stats"]["report.records"] == 12


async def test_task_ending_while_its_start_is_answered_is_saved_as_finished(
    manager: TaskManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short file task can end before create() returns: a restart must not run it again."""
    start = runner_module.TaskRunner.start

    async def slow_start(self: runner_module.TaskRunner) -> None:
        await start(self)
        await until(lambda: self.done)  # the task ends before the manager hears it started

    monkeypatch.setattr(runner_module.TaskRunner, "start", slow_start)
    info = await manager.create(spec("file", tmp_path / "f", loop=1))
    assert info.state == TaskState.STOPPED
    saved = json.loads((tmp_path / "state.json").read_text())["tasks"]
    assert [(t["spec"]["id"], t["desired"]) for t in saved] == [("file", "stopped")]


async def test_dead_worker_and_memory_limit_fail_tasks(
    manager: TaskManager, tmp_path: Path
) -> None:
    info = await manager.create(spec("victim", tmp_path / "v"))
    os.kill(info.processes[0]["pid"], signal.SIGKILL)
    info = await until(lambda: (i := manager.status("victim")).state == TaskState.FAILED and i)
    assert info.reason == "worker 0 killed by signal SIGKILL"

    await manager.create(spec("fat", tmp_path / "f"))
    manager.configure(memory_limit_mb=1)
    manager.check()
    assert manager.status("fat").state == TaskState.STOPPING
    info = await until(lambda: (i := manager.status("fat")).state == TaskState.FAILED and i)
    assert info.reason is not None and info.reason.startswith("memory limit exceeded")
    assert workers_alive() == []


async def test_a_stopped_worker_fails_its_task_instead_of_capturing_nothing(
    manager: TaskManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "STALL_S", 1.5)
    info = await manager.create(spec("frozen", tmp_path / "z", loop=1000))
    pid = info.processes[0]["pid"]
    os.kill(pid, signal.SIGSTOP)  # as a debugger would, or a hang: it reports nothing more
    try:
        info = await until(lambda: (i := manager.status("frozen")).state == TaskState.FAILED and i)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert info.reason is not None
    assert info.reason.startswith(f"worker 0 (pid {pid}) stopped responding: nothing heard for")
    assert workers_alive() == []


async def test_records_a_killed_worker_held_are_counted_lost(
    manager: TaskManager, tmp_path: Path
) -> None:
    """Kafka down: records wait in the worker; killed, they become a drop, not a stale gauge."""
    s = spec("held", tmp_path / "h", loop=1000)
    s = parse_task(
        {
            **s.model_dump(mode="json", exclude_unset=True),
            "reporters": [{"type": "kafka", "config": {"brokers": ["127.0.0.1:1"], "topic": "t"}}],
        }
    )
    info = await manager.create(s)
    await until(lambda: manager.status("held").stats.get("report.buffered", 0) > 20)
    assert manager.status("held").stats["report.buffered_bytes"] > 0
    os.kill(info.processes[0]["pid"], signal.SIGKILL)
    info = await until(lambda: (i := manager.status("held")).state == TaskState.FAILED and i)
    st = info.stats
    assert (st["report.buffered"], st["report.buffered_bytes"]) == (0, 0)  # no stale gauge
    assert st["report.drop.worker_died"] > 20
    assert st["report.kafka.records"] == (
        st["report.kafka.sent"]
        + sum(
            v
            for k, v in st.items()
            if k.startswith("report.drop.") and k != "report.drop.reporter_error"
        )
    )


async def test_a_worker_reporting_every_second_is_left_alone(
    manager: TaskManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "STALL_S", 1.5)
    await manager.create(spec("steady", tmp_path / "s", loop=1000))
    await asyncio.sleep(4)
    assert manager.status("steady").state == TaskState.RUNNING


def test_a_parent_stalled_itself_does_not_kill_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon stopped (SIGSTOP, a frozen VM) finds its workers' news unread, not missing."""
    monkeypatch.setattr(runner_module, "STALL_S", 1.5)

    async def main() -> TaskState:
        m = TaskManager(agent_id="t", state_file=tmp_path / "state.json")
        try:
            await m.create(spec("patient", tmp_path / "p", loop=1000))
            time.sleep(3)  # noqa: ASYNC251 - the point: this loop blocked, its workers not
            await asyncio.sleep(2.5)
            return m.status("patient").state
        finally:
            await m.shutdown(grace_s=5)

    # uvloop, as the daemon runs: it fires due timers before reading ready pipes.
    assert uvloop.run(main()) == TaskState.RUNNING


async def test_update_restarts_with_the_new_spec(manager: TaskManager, tmp_path: Path) -> None:
    await manager.create(spec("u", tmp_path / "one"))
    await until(lambda: manager.status("u").stats.get("capture.packets", 0) > 0)
    old_pid = manager.status("u").processes[0]["pid"]
    info = await manager.update(spec("u", tmp_path / "two"))
    assert info.state == TaskState.RUNNING
    assert info.processes[0]["pid"] != old_pid
    assert info.spec["reporters"][0]["config"]["path"] == str(tmp_path / "two")
    with pytest.raises(TaskNotFoundError):
        await manager.update(spec("nope", tmp_path / "n"))


async def test_shutdown_then_restore(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    m = TaskManager(max_tasks=4, state_file=state)
    await m.create(spec("live", tmp_path / "live"))
    await m.create(spec("file", tmp_path / "file", loop=1))
    await until(lambda: m.status("file").state == TaskState.STOPPED)
    await m.shutdown(grace_s=5)
    assert m.status("live").state == TaskState.STOPPED
    assert workers_alive() == []
    doc = json.loads(state.read_text())
    doc["tasks"].append({"spec": {"id": "Invalid Id"}, "desired": "running"})
    doc["tasks"].append({"spec": dict(doc["tasks"][0]["spec"], id="gone")})
    doc["tasks"][-1]["spec"]["capture"] = {"type": "pcap", "path": str(tmp_path / "nope.pcap")}
    state.write_text(json.dumps(doc))

    m2 = TaskManager(max_tasks=4, state_file=state)
    infos: list[TaskInfo] = await m2.restore()
    by_id = {i.id: i for i in infos}
    assert set(by_id) == {"live", "file", "gone"}  # the invalid entry is dropped (logged)
    assert by_id["live"].state == TaskState.RUNNING
    assert by_id["file"].state == TaskState.STOPPED
    assert by_id["file"].stats["report.records"] == 12
    assert by_id["gone"].state == TaskState.FAILED
    assert by_id["gone"].reason is not None and "restore failed" in by_id["gone"].reason
    assert m2.restored
    await m2.shutdown(grace_s=5)
    assert {t["spec"]["id"]: t["desired"] for t in json.loads(state.read_text())["tasks"]} == {
        "live": "running",
        "file": "stopped",
        "gone": "running",  # retried by the next restart
    }


async def test_a_restored_task_keeps_its_kafka_password(tmp_path: Path) -> None:
    """The state file keeps the secret (it is 0600); status shows it masked."""
    state = tmp_path / "state.json"
    kafka = {"brokers": ["127.0.0.1:1"], "topic": "t", "username": "u", "password": "s3cret"}
    data = {
        **spec("sasl", tmp_path / "s", loop=1000).model_dump(mode="json", exclude_unset=True),
        "reporters": [
            {
                "type": "kafka",
                "config": {
                    **kafka,
                    "security_protocol": "SASL_PLAINTEXT",
                    "sasl_mechanism": "PLAIN",
                },
            }
        ],
    }
    m = TaskManager(state_file=state)
    info = await m.create(parse_task(data))
    assert "s3cret" not in json.dumps(info.spec)
    await m.shutdown(grace_s=5)
    assert oct(state.stat().st_mode & 0o777) == oct(0o600)
    m2 = TaskManager(state_file=state)
    (restored,) = await m2.restore()
    try:
        password = m2._get("sasl").spec.reporters[0].config.password  # type: ignore[union-attr]
        assert password is not None and password.get_secret_value() == "s3cret"
        assert "s3cret" not in json.dumps(restored.spec)
    finally:
        await m2.shutdown(grace_s=5)


@pytest.mark.parametrize("max_tasks", [4, 3])
async def test_commands_during_restore_leave_no_untracked_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_tasks: int
) -> None:
    # 4: the restore started the updated task a second time; 3: it failed it for the limit
    # and dropped its runner. Either way a worker ran that nobody tracked, as did the deleted.
    monkeypatch.setattr(manager_module, "_RESTORE_PARALLEL", 1)  # t2..t4 wait their turn
    state = tmp_path / "state.json"
    StateFile(state).save(
        SavedTask(spec=spec(f"t{i}", tmp_path / f"t{i}").model_dump(mode="json"), created_at=i)
        for i in range(1, 5)
    )
    m = TaskManager(max_tasks=max_tasks, state_file=state)
    try:
        restore = asyncio.create_task(m.restore())
        await until(lambda: any(i.state == TaskState.STARTING for i in m.list()))
        assert m.status("t3").state == m.status("t4").state == TaskState.CREATED
        await m.delete("t4")
        info = await m.update(spec("t3", tmp_path / "t3-new"))
        assert info.state == TaskState.RUNNING
        await restore
        assert {i.id: i.state for i in m.list()} == dict.fromkeys(
            ("t1", "t2", "t3"), TaskState.RUNNING
        )
        assert m.status("t3").spec["reporters"][0]["config"]["path"] == str(tmp_path / "t3-new")
        tracked = {p["pid"] for i in m.list() for p in i.processes}
        assert {p.pid for p in workers_alive()} == tracked
        await m.shutdown(grace_s=5)
        assert workers_alive() == []
    finally:
        for p in workers_alive():  # what a failure left behind must not run on
            p.kill()


async def test_update_of_a_finished_task_respects_the_limit(
    manager: TaskManager, tmp_path: Path
) -> None:
    await manager.create(spec("done", tmp_path / "d", loop=1))
    await until(lambda: manager.status("done").state == TaskState.STOPPED)
    await manager.create(spec("a", tmp_path / "a"))
    await manager.create(spec("b", tmp_path / "b"))  # max_tasks=2: full
    with pytest.raises(TaskLimitError, match="task limit reached"):
        await manager.update(spec("done", tmp_path / "d2"))
    info = manager.status("done")
    assert info.state == TaskState.STOPPED
    assert info.spec["reporters"][0]["config"]["path"] == str(tmp_path / "d")
    assert len(workers_alive()) == 2
    # a live task is replaced in place: it takes no other slot
    assert (await manager.update(spec("a", tmp_path / "a2"))).state == TaskState.RUNNING
    await manager.delete("b")
    assert (await manager.update(spec("done", tmp_path / "d2"))).state == TaskState.RUNNING


async def test_create_cut_short_by_shutdown_is_not_saved(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody reads: the worker's open of its reporter blocks, the start hangs
    state = tmp_path / "state.json"
    m = TaskManager(max_tasks=2, state_file=state)
    await m.create(spec("keep", tmp_path / "keep"))
    create = asyncio.create_task(m.create(spec("fa", fifo)))
    await until(lambda: len(workers_alive()) == 2)
    await m.shutdown(grace_s=0.5)  # fa's start holds its lock: its workers are killed
    saved = json.loads(state.read_text())["tasks"]
    assert [t["spec"]["id"] for t in saved] == ["keep"]
    with pytest.raises(TaskStartError, match="SIGKILL"):
        await create
    assert [t["spec"]["id"] for t in json.loads(state.read_text())["tasks"]] == ["keep"]

    m2 = TaskManager(max_tasks=2, state_file=state)
    assert [i.id for i in await m2.restore()] == ["keep"]
    await m2.shutdown(grace_s=5)
    assert workers_alive() == []
