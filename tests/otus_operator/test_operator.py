"""The operator and agents together against the emulated API: the CaptureTask life cycle."""

from __future__ import annotations

import asyncio
from typing import Any

from otus.pipeline.spec import TaskSpec
from tests.infra.kube import CT_RESOURCE, FakeInfo, FakeTaskManager, ct_path, eventually
from tests.otus_operator.conftest import AGENT_NS, Cluster

NS = "voice"
SPEC: dict[str, Any] = {
    "nodeSelector": {"matchLabels": {"otus.firestige.xyz/capture": "sip"}},
    "capture": {"interfaces": ["eth0", "bond0"]},
    "processors": [{"type": "filter", "config": {"dropMethods": ["OPTIONS"]}}],
    "reporters": [{"type": "console"}],
}
SIP = {"otus.firestige.xyz/capture": "sip"}


def status(c: Cluster, name: str) -> dict[str, Any]:
    return dict((c.api.obj(CT_RESOURCE, NS, name) or {}).get("status") or {})


def condition(c: Cluster, name: str, ctype: str = "Ready") -> dict[str, Any]:
    for cond in status(c, name).get("conditions") or []:
        if cond["type"] == ctype:
            return dict(cond)
    return {}


def node_entry(c: Cluster, name: str, node: str) -> dict[str, Any]:
    return dict((status(c, name).get("nodes") or {}).get(node) or {})


def node_phase(c: Cluster, name: str, node: str) -> str | None:
    return node_entry(c, name, node).get("phase")


async def ready(c: Cluster, name: str, running: int, within: float = 10.0) -> dict[str, Any]:
    def check() -> bool:
        st = status(c, name)
        return condition(c, name).get("status") == "True" and st.get("runningNodes") == running

    await eventually(
        check, within, what=lambda: f"{name} Ready with {running} nodes: {status(c, name)}"
    )
    return status(c, name)


async def test_create_assigns_runs_and_aggregates(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.add_node("node-b", SIP)
    await cluster.add_node("node-c", {"otus.firestige.xyz/capture": "none"})
    await cluster.api.create_ct(NS, "calls", SPEC)
    st = await ready(cluster, "calls", 2)
    assert st["assignedNodes"] == ["node-a", "node-b"] and st["targetedNodes"] == 2
    assert st["totals"] == {"packets": 200, "sipMessages": 80, "drops": 4}
    assert st["observedGeneration"] == 1
    assert condition(cluster, "calls", "Degraded")["status"] == "False"
    assert set(cluster.managers["node-a"].tasks) == {"voice.calls"}
    assert cluster.managers["node-c"].tasks == {}
    obj = cluster.api.obj(CT_RESOURCE, NS, "calls") or {}
    assert "otus.firestige.xyz/finalizer" in obj["metadata"]["finalizers"]


async def test_node_labels_move_the_assignment(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.add_node("node-b", {})
    await cluster.api.create_ct(NS, "calls", SPEC)
    await ready(cluster, "calls", 1)
    await cluster.api.node("node-a", {"otus.firestige.xyz/capture": None})
    await cluster.api.node("node-b", SIP)
    await eventually(lambda: status(cluster, "calls").get("assignedNodes") == ["node-b"])
    await ready(cluster, "calls", 1)
    await eventually(lambda: "voice.calls" not in cluster.managers["node-a"].tasks)
    assert cluster.managers["node-a"].flushed == ["voice.calls"]
    # node-a's entry says Stopped, then the operator drops it.
    await eventually(lambda: node_phase(cluster, "calls", "node-a") is None, what="pruned")


async def test_new_agent_pod_joins(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.add_node("node-b", SIP, agent=False)  # no agent yet
    await cluster.api.create_ct(NS, "calls", SPEC)
    st = await ready(cluster, "calls", 1)
    assert st["assignedNodes"] == ["node-a"]
    await cluster.api.agent_pod(AGENT_NS, "node-b", ready=False)
    await asyncio.sleep(0.6)
    assert status(cluster, "calls")["assignedNodes"] == ["node-a"]  # not ready: not yet
    cluster.start_agent("node-b")
    await cluster.api.agent_pod(AGENT_NS, "node-b", ready=True)
    st = await ready(cluster, "calls", 2)
    assert st["assignedNodes"] == ["node-a", "node-b"]


async def test_silent_agent_turns_unknown_then_recovers(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.add_node("node-b", SIP)
    await cluster.api.create_ct(NS, "calls", SPEC)
    await ready(cluster, "calls", 2)
    await cluster.kill_agent("node-b")
    await eventually(
        lambda: node_phase(cluster, "calls", "node-b") == "Unknown", 10, what="node-b Unknown"
    )
    ready_cond = condition(cluster, "calls")
    assert ready_cond["status"] == "False" and ready_cond["reason"] == "NodesNotRunning"
    assert "node-b: Unknown" in ready_cond["message"]
    degraded = condition(cluster, "calls", "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "NodesUnknown"
    assert status(cluster, "calls")["runningNodes"] == 1
    cluster.start_agent("node-b")  # restarted: takes its task over and reports again
    await ready(cluster, "calls", 2)
    assert condition(cluster, "calls", "Degraded")["status"] == "False"


async def test_heartbeat_from_the_future_still_turns_unknown(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP, agent=False)  # a pod, but the agent is not ours
    await cluster.api.agent_pod(AGENT_NS, "node-a")
    await cluster.api.create_ct(NS, "calls", SPEC)
    await eventually(lambda: status(cluster, "calls").get("assignedNodes") == ["node-a"])
    entry = {"phase": "Running", "lastHeartbeat": "2099-01-01T00:00:00Z", "taskId": "voice.calls"}
    await cluster.api.client.merge_patch(
        ct_path(NS, "calls", "status"), {"status": {"nodes": {"node-a": entry}}}
    )  # its clock is far ahead, then it goes silent
    await eventually(lambda: node_phase(cluster, "calls", "node-a") == "Unknown", 10,
                     what="node-a Unknown")  # fmt: skip
    assert condition(cluster, "calls", "Degraded")["reason"] == "NodesUnknown"


async def test_pause_stops_agents(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.api.create_ct(NS, "calls", SPEC)
    await ready(cluster, "calls", 1)
    await cluster.api.client.merge_patch(ct_path(NS, "calls"), {"spec": {"paused": True}})
    await eventually(lambda: condition(cluster, "calls").get("reason") == "Paused")
    await eventually(lambda: node_phase(cluster, "calls", "node-a") == "Paused")
    assert cluster.managers["node-a"].tasks == {}
    assert status(cluster, "calls")["observedGeneration"] == 2
    await cluster.api.client.merge_patch(ct_path(NS, "calls"), {"spec": {"paused": False}})
    await ready(cluster, "calls", 1)


async def test_update_reaches_the_agents(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.api.create_ct(NS, "calls", SPEC)
    await ready(cluster, "calls", 1)
    spec = {**SPEC, "capture": {"interfaces": ["eth0"], "bpfFilter": "udp port 5080"}}
    await cluster.api.client.merge_patch(ct_path(NS, "calls"), {"spec": spec})
    manager = cluster.managers["node-a"]
    await eventually(lambda: ("update", "voice.calls") in manager.calls)
    assert manager.tasks["voice.calls"].spec.capture.model_dump()["bpf_filter"] == "udp port 5080"
    await eventually(lambda: status(cluster, "calls").get("observedGeneration") == 2)


async def test_invalid_spec_is_rejected_with_condition_and_event(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    bad = {**SPEC, "capture": {"interfaces": ["any", "eth0"]}, "reporters": []}
    await cluster.api.create_ct(NS, "broken", bad)
    cond = await eventually(lambda: condition(cluster, "broken").get("reason") == "InvalidSpec"
                            and condition(cluster, "broken"))  # fmt: skip
    assert cond["status"] == "False"
    assert "'any' captures every interface" in cond["message"]
    assert "reporters" in cond["message"]
    assert status(cluster, "broken")["assignedNodes"] == []
    events = await eventually(
        lambda: [e for e in cluster.api.events(NS) if e.get("reason") == "InvalidSpec"]
    )
    assert events[0]["type"] == "Warning"
    assert events[0]["involvedObject"]["name"] == "broken"
    await asyncio.sleep(0.5)
    assert cluster.managers["node-a"].calls == []
    # Fixed: it runs.
    await cluster.api.client.merge_patch(ct_path(NS, "broken"), {"spec": SPEC})
    await ready(cluster, "broken", 1)


async def test_delete_waits_for_agents_to_stop(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.add_node("node-b", SIP)
    await cluster.api.create_ct(NS, "calls", SPEC)
    await ready(cluster, "calls", 2)
    await cluster.api.client.delete(ct_path(NS, "calls"))
    await eventually(lambda: cluster.api.obj(CT_RESOURCE, NS, "calls") is None, what="gone")
    for node in ("node-a", "node-b"):
        assert cluster.managers[node].flushed == ["voice.calls"]
    history = cluster.api.history(CT_RESOURCE, NS, "calls")
    last = history[-1]["status"]["nodes"]
    assert {n: e["phase"] for n, e in last.items()} == {"node-a": "Stopped", "node-b": "Stopped"}
    await eventually(lambda: any(e.get("reason") == "Drained" for e in cluster.api.events(NS)))


async def test_delete_is_released_after_the_bounded_wait(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.api.create_ct(NS, "calls", SPEC)
    await ready(cluster, "calls", 1)
    await cluster.kill_agent("node-a")  # nobody will confirm; its pod still looks ready
    await cluster.api.client.delete(ct_path(NS, "calls"))
    await eventually(lambda: cluster.api.obj(CT_RESOURCE, NS, "calls") is None, 15, what="gone")
    await eventually(
        lambda: {e.get("reason") for e in cluster.api.events(NS)} & {"DrainTimeout", "Drained"}
    )


async def test_operator_restart_does_not_stop_captures_before_agents_are_listed(
    cluster: Cluster,
) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.add_node("node-b", SIP)
    await cluster.api.create_ct(NS, "calls", SPEC)
    await ready(cluster, "calls", 2)
    listed = cluster.api.emulator.hold("v1/pods")  # a slow API server: the pod list hangs
    try:
        await cluster.restart_operator()
        await asyncio.sleep(1.5)  # several resyncs of the new operator
        assert status(cluster, "calls")["assignedNodes"] == ["node-a", "node-b"]
        for node in ("node-a", "node-b"):
            assert cluster.managers[node].calls == [("create", "voice.calls")]  # never stopped
    finally:
        listed.set()
    await ready(cluster, "calls", 2)
    assert cluster.managers["node-a"].calls == [("create", "voice.calls")]


BAD_FILTER = [{"type": "filter", "config": {"keepIf": "sip.method =="}}]


async def test_invalid_edit_keeps_the_capture_running_and_says_so(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.api.create_ct(NS, "calls", SPEC)
    await ready(cluster, "calls", 1)
    # Passes the CRD schema (an expression is a string there); only the model refuses it.
    await cluster.api.client.merge_patch(ct_path(NS, "calls"), {"spec": {"processors": BAD_FILTER}})
    cond = await eventually(lambda: condition(cluster, "calls").get("reason") == "InvalidSpec"
                            and condition(cluster, "calls"))  # fmt: skip
    assert "keep_if" in cond["message"] and "keep the last valid spec" in cond["message"]
    assert cond["observedGeneration"] == 2
    await eventually(lambda: "previous spec" in node_entry(cluster, "calls", "node-a").get(
        "message", ""), what="the node says it goes on")  # fmt: skip
    entry = node_entry(cluster, "calls", "node-a")
    assert entry["phase"] == "Running" and "keep_if" in entry["message"]
    assert status(cluster, "calls")["assignedNodes"] == ["node-a"]
    manager = cluster.managers["node-a"]
    assert manager.calls == [("create", "voice.calls")]  # neither stopped nor changed
    assert manager.tasks["voice.calls"].spec.processors[0].config.drop_methods == ["OPTIONS"]
    events = await eventually(
        lambda: [e for e in cluster.api.events(NS) if e.get("reason") == "InvalidSpec"]
    )
    assert "keep_if" in events[0]["message"]
    # Pausing still stops it; the fixed spec runs.
    await cluster.api.client.merge_patch(ct_path(NS, "calls"), {"spec": {"paused": True}})
    await eventually(lambda: node_phase(cluster, "calls", "node-a") == "Paused")
    assert manager.tasks == {}
    await cluster.api.client.merge_patch(ct_path(NS, "calls"), {"spec": {**SPEC, "paused": False}})
    await ready(cluster, "calls", 1)


class SlowUpdates(FakeTaskManager):
    """Its updates wait for ``done``: a task restarting with a new spec."""

    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()
        self.done.set()

    async def update(self, spec: TaskSpec) -> FakeInfo:
        """Replace the spec once ``done`` is set."""
        await self.done.wait()
        return await super().update(spec)


async def test_ready_waits_for_the_agents_to_apply_an_edit(cluster: Cluster) -> None:
    manager = cluster.managers["node-a"] = SlowUpdates()
    await cluster.add_node("node-a", SIP)
    await cluster.api.create_ct(NS, "calls", SPEC)
    await ready(cluster, "calls", 1)
    manager.done.clear()
    spec = {**SPEC, "capture": {"interfaces": ["eth0"], "bpfFilter": "udp port 5080"}}
    await cluster.api.client.merge_patch(ct_path(NS, "calls"), {"spec": spec})
    await eventually(lambda: condition(cluster, "calls").get("observedGeneration") == 2)
    await asyncio.sleep(1.0)  # heartbeats (0.3 s) and resyncs, the update still running
    cond = condition(cluster, "calls")
    assert (cond["status"], cond["reason"]) == ("False", "NodesUpdating"), cond
    assert "node-a: Running generation 1" in cond["message"]
    assert status(cluster, "calls")["runningNodes"] == 0
    manager.done.set()
    await ready(cluster, "calls", 1)
    assert status(cluster, "calls")["nodes"]["node-a"]["observedGeneration"] == 2
