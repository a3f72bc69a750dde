"""The task manager with real worker processes: lifecycle, failures, limits, persistence."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from otus.core.errors import TaskExistsError, TaskLimitError, TaskNotFoundError, TaskStartError
from otus.pipeline.spec import parse_task
from otus.task.manager import ShuttingDownError, TaskInfo, TaskManager, TaskState

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
