"""The agent recovers: a vanished Secret, restored tasks, failed starts, invalid edits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from otus.control.kubernetes.model import NODE_MESSAGE_MAX, parse_capture_task
from otus.pipeline.spec import TaskSpec
from tests.control.kubernetes.conftest import Agent
from tests.control.kubernetes.test_agent import NS, SPEC, assign, node_status
from tests.infra.kube import FakeInfo, FakeTaskManager, KubeApi, ct_path, eventually

KAFKA_SPEC: dict[str, Any] = {
    **SPEC,
    "reporters": [
        {
            "type": "kafka",
            "config": {"brokers": ["k:9092"], "topic": "sip", "securityProtocol": "SSL"},
            "secretRef": {"name": "creds", "caKey": "ca.crt"},
        }
    ],
}
SECRETS = f"/api/v1/namespaces/{NS}/secrets"


async def create_secret(api: KubeApi) -> None:
    data = {"ca.crt": base64.b64encode(b"PEM").decode()}
    await api.client.create(SECRETS, {"metadata": {"name": "creds", "namespace": NS}, "data": data})


def _text(path: Path) -> str:
    return path.read_text()


async def test_vanished_secret_keeps_the_capture_running_then_recovers(
    kube_api: KubeApi, agent: Agent
) -> None:
    await create_secret(kube_api)
    await kube_api.create_ct(NS, "kafka", KAFKA_SPEC)
    await assign(kube_api, "kafka", "node-a")
    await eventually(lambda: node_status(kube_api, "kafka").get("phase") == "Running")
    ca = Path(agent.manager.tasks["sip.kafka"].spec.reporters[0].config.ssl_cafile)
    await kube_api.client.delete(f"{SECRETS}/creds")
    agent.agent._mark(f"{NS}/kafka")  # what the periodic resync does
    st = await eventually(lambda: "creds" in node_status(kube_api, "kafka").get("message", "")
                          and node_status(kube_api, "kafka"), what="warning")  # fmt: skip
    assert st["phase"] == "Running" and "not found" in st["message"]
    assert "sip.kafka" in agent.manager.tasks and _text(ca) == "PEM"  # old files kept
    await asyncio.sleep(0.5)  # heartbeats go on saying Running
    assert node_status(kube_api, "kafka")["phase"] == "Running"
    await create_secret(kube_api)
    agent.agent._mark(f"{NS}/kafka")
    await eventually(lambda: node_status(kube_api, "kafka").get("message") == "", what="cleared")
    assert node_status(kube_api, "kafka")["phase"] == "Running"
    assert agent.manager.calls == [("create", "sip.kafka")]  # same content: no restart


async def test_missing_secret_fails_a_task_not_running_until_it_appears(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    a = Agent(kube_api, "node-a", tmp_path)
    a.agent.retry_min_s = 0.1
    a.start()
    try:
        await kube_api.create_ct(NS, "kafka", KAFKA_SPEC)
        await assign(kube_api, "kafka", "node-a")
        await eventually(lambda: node_status(kube_api, "kafka").get("phase") == "Failed")
        assert "not found" in node_status(kube_api, "kafka")["message"]
        await create_secret(kube_api)  # looked for again soon, not only at the resync
        await eventually(lambda: node_status(kube_api, "kafka").get("phase") == "Running")
    finally:
        await a.stop()


class RestartingManager(FakeTaskManager):
    """Its update restarts a failed task, as the real manager's does."""

    async def update(self, spec: TaskSpec) -> FakeInfo:
        """Replace the spec and run again."""
        info = await super().update(spec)
        info.state, info.reason = "running", None
        return info


async def test_task_failed_while_running_is_restarted_on_resync(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    a = Agent(kube_api, "node-a", tmp_path)
    a.manager = a.agent.manager = RestartingManager()
    a.start()
    try:
        await kube_api.create_ct(NS, "calls", SPEC)
        await assign(kube_api, "calls", "node-a")
        await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Running")
        info = a.manager.tasks["sip.calls"]
        info.state, info.reason = "failed", "worker died"
        a.manager._notify(info)
        st = await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Failed"
                              and node_status(kube_api, "calls"))  # fmt: skip
        assert st["message"] == "worker died"
        a.agent._mark(f"{NS}/calls")  # what the periodic resync does
        await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Running")
        assert a.manager.calls == [("create", "sip.calls"), ("update", "sip.calls")]
    finally:
        await a.stop()


async def test_failed_start_is_retried_with_backoff(kube_api: KubeApi, tmp_path: Path) -> None:
    a = Agent(kube_api, "node-a", tmp_path)
    a.agent.retry_min_s, a.agent.retry_max_s = 0.1, 0.4
    a.manager.fail_start.add("sip.nodev")
    a.start()
    try:
        await kube_api.create_ct(NS, "nodev", SPEC)
        await assign(kube_api, "nodev", "node-a")
        await eventually(lambda: node_status(kube_api, "nodev").get("phase") == "Failed")
        await asyncio.sleep(1.2)
        tries = a.manager.calls.count(("create", "sip.nodev"))
        assert 3 <= tries <= 7, tries  # 0.1, 0.2, 0.4, 0.4, ...: retried, not hot-looping
        a.manager.fail_start.clear()  # the interface appeared
        await eventually(lambda: node_status(kube_api, "nodev").get("phase") == "Running")
        assert node_status(kube_api, "nodev")["message"] == ""
    finally:
        await a.stop()


async def test_restored_tasks_without_their_capturetask_are_removed(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    for name in ("calls", "moved", "leaving"):
        await kube_api.create_ct(NS, name, SPEC)
    await assign(kube_api, "calls", "node-a")
    await assign(kube_api, "moved", "node-b")  # reassigned while node-a's agent was down
    await kube_api.client.merge_patch(
        ct_path(NS, "leaving"), {"metadata": {"finalizers": ["otus.firestige.xyz/finalizer"]}}
    )
    await assign(kube_api, "leaving", "node-a")
    await kube_api.client.delete(ct_path(NS, "leaving"))
    a = Agent(kube_api, "node-a", tmp_path)
    cts = parse_capture_task(SPEC)
    # What the state file restored: tasks of CaptureTasks, and one made through the socket.
    for task_id in ("sip.calls", "sip.moved", "sip.leaving", "sip.gone", "manual-capture"):
        await a.manager.create(cts.to_task_spec(task_id))
    a.start()
    try:
        await eventually(lambda: node_status(kube_api, "leaving").get("phase") == "Stopped")
        await eventually(lambda: node_status(kube_api, "moved").get("phase") == "Stopped")
        await eventually(lambda: "sip.gone" not in a.manager.tasks, what="orphan deleted")
        assert set(a.manager.tasks) == {"sip.calls", "manual-capture"}
        assert sorted(a.manager.flushed) == ["sip.gone", "sip.leaving", "sip.moved"]
        assert "deleted" in node_status(kube_api, "leaving")["message"]
        await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Running")
        assert ("update", "sip.calls") in a.manager.calls  # taken over
    finally:
        await a.stop()


@contextlib.asynccontextmanager
async def restored(kube_api: KubeApi, tmp_path: Path, ct_spec: Any) -> AsyncIterator[Agent]:
    """An agent whose state file restored ``sip.calls`` (as SPEC), ``calls`` now ``ct_spec``."""
    await kube_api.create_ct(NS, "calls", ct_spec)
    await assign(kube_api, "calls", "node-a")
    a = Agent(kube_api, "node-a", tmp_path)
    await a.manager.create(parse_capture_task(SPEC).to_task_spec("sip.calls"))
    a.start()
    try:
        yield a
    finally:
        await a.stop()


async def test_restored_task_of_a_paused_capturetask_is_stopped(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    async with restored(kube_api, tmp_path, {**SPEC, "paused": True}) as a:
        await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Paused")
        assert a.manager.tasks == {} and a.manager.flushed == ["sip.calls"]


BAD_FILTER = [{"type": "filter", "config": {"keepIf": "sip.method =="}}]


async def test_invalid_edit_is_not_applied(kube_api: KubeApi, agent: Agent) -> None:
    await kube_api.create_ct(NS, "calls", SPEC)
    await assign(kube_api, "calls", "node-a")
    await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Running")
    await kube_api.client.merge_patch(ct_path(NS, "calls"), {"spec": {"processors": BAD_FILTER}})
    st = await eventually(lambda: node_status(kube_api, "calls").get("observedGeneration") == 2
                          and node_status(kube_api, "calls"))  # fmt: skip
    assert st["phase"] == "Running"
    # What is wrong, in the little room every node's entry has (the Ready condition has it all).
    assert st["message"] == (
        "processors.0.filter.config.keep_if: Value error, expected a quoted value, "
        "found 'end of expression'; running the previous spec"
    )
    assert len(st["message"]) <= NODE_MESSAGE_MAX
    assert agent.manager.calls == [("create", "sip.calls")]
    await asyncio.sleep(0.5)  # heartbeats go on saying so
    assert "previous spec" in node_status(kube_api, "calls")["message"]
    # Pausing works whatever else is wrong.
    await kube_api.client.merge_patch(ct_path(NS, "calls"), {"spec": {"paused": True}})
    await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Paused")
    assert agent.manager.tasks == {} and agent.manager.flushed == ["sip.calls"]


async def test_invalid_spec_stops_a_restored_task(kube_api: KubeApi, tmp_path: Path) -> None:
    async with restored(kube_api, tmp_path, {**SPEC, "processors": BAD_FILTER}) as a:
        st = await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Failed"
                              and node_status(kube_api, "calls"))  # fmt: skip
        assert "keep_if" in st["message"] and a.manager.flushed == ["sip.calls"]


class SlowUpdates(FakeTaskManager):
    """Its updates wait for ``done``: a task restarting with a new spec."""

    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()

    async def update(self, spec: TaskSpec) -> FakeInfo:
        """Replace the spec once ``done`` is set."""
        await self.done.wait()
        return await super().update(spec)


async def test_generation_is_reported_once_applied(kube_api: KubeApi, tmp_path: Path) -> None:
    a = Agent(kube_api, "node-a", tmp_path)
    manager = a.manager = a.agent.manager = SlowUpdates()
    a.start()
    try:
        await kube_api.create_ct(NS, "calls", SPEC)
        await assign(kube_api, "calls", "node-a")
        await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Running")
        spec = {**SPEC, "capture": {**SPEC["capture"], "bpfFilter": "udp port 5080"}}
        await kube_api.client.merge_patch(ct_path(NS, "calls"), {"spec": spec})
        await asyncio.sleep(0.6)  # heartbeats (0.2 s) while the task restarts
        st = node_status(kube_api, "calls")
        assert (st["phase"], st["observedGeneration"]) == ("Running", 1)
        manager.done.set()
        await eventually(lambda: node_status(kube_api, "calls").get("observedGeneration") == 2)
        # An edit the task does not see (the node selector) is acknowledged at once too.
        a.agent.heartbeat_s = 60.0
        await kube_api.client.merge_patch(
            ct_path(NS, "calls"), {"spec": {"nodeSelector": {"matchLabels": {"a": "b"}}}}
        )
        await eventually(lambda: node_status(kube_api, "calls").get("observedGeneration") == 3,
                         1.0)  # fmt: skip
    finally:
        await a.stop()
