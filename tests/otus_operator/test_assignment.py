"""Which nodes a CaptureTask gets: the agent selector, the node cap, agents that never report."""

from __future__ import annotations

from tests.infra.kube import eventually
from tests.otus_operator.conftest import AGENT_NS, Cluster
from tests.otus_operator.test_operator import (
    NS,
    SIP,
    SPEC,
    condition,
    node_entry,
    node_phase,
    ready,
    status,
)


async def test_a_node_whose_agent_never_reports_turns_unknown(cluster: Cluster) -> None:
    await cluster.add_node("node-a", SIP)
    await cluster.add_node("node-b", SIP, agent=False)
    await cluster.api.agent_pod(AGENT_NS, "node-b")  # a ready agent pod...
    cluster.start_agent("node-b", namespace="elsewhere")  # ...that watches another namespace
    await cluster.api.create_ct(NS, "calls", SPEC)
    await eventually(lambda: status(cluster, "calls").get("assignedNodes") == ["node-a", "node-b"])
    assert node_entry(cluster, "calls", "node-b") == {}  # just assigned: not judged yet
    entry = await eventually(lambda: node_phase(cluster, "calls", "node-b") == "Unknown"
                             and node_entry(cluster, "calls", "node-b"), 10)  # fmt: skip
    assert entry["message"].startswith("assigned, but no report from the agent for ")
    degraded = condition(cluster, "calls", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "NodesUnknown")
    assert degraded["message"] == "not reporting: node-b"
    assert "node-b: Unknown" in condition(cluster, "calls")["message"]
    assert cluster.managers["node-b"].calls == []


async def test_a_task_takes_at_most_max_nodes_and_says_so(cluster: Cluster) -> None:
    cluster.state.config.max_nodes = 2
    for node in ("node-b", "node-c", "node-d"):
        await cluster.add_node(node, SIP)
    await cluster.api.create_ct(NS, "calls", SPEC)
    st = await ready(cluster, "calls", 2)
    assert st["assignedNodes"] == ["node-b", "node-c"] and st["targetedNodes"] == 2
    degraded = condition(cluster, "calls", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "TooManyNodes")
    assert degraded["message"].startswith("3 nodes match; 2 are assigned")
    events = await eventually(
        lambda: [e for e in cluster.api.events(NS) if e.get("reason") == "TooManyNodes"]
    )
    assert events[0]["type"] == "Warning" and events[0]["message"] == degraded["message"]
    assert cluster.managers["node-d"].tasks == {}
    # A new node that sorts first does not displace one that captures.
    await cluster.add_node("node-a", SIP)
    await eventually(lambda: condition(cluster, "calls", "Degraded")["message"].startswith(
        "4 nodes match"), what="node-a counted")  # fmt: skip
    assert status(cluster, "calls")["assignedNodes"] == ["node-b", "node-c"]
    assert cluster.managers["node-a"].tasks == {}


async def test_a_set_based_agent_selector_finds_the_agents(cluster: Cluster) -> None:
    cluster.state.config.agent_selector = "app.kubernetes.io/name in (otus-agent), !canary"
    await cluster.restart_operator()
    await cluster.add_node("node-a", SIP)
    await cluster.add_node("node-b", SIP, agent=False)
    await cluster.api.agent_pod(AGENT_NS, "node-b", labels={"canary": "true"})
    cluster.start_agent("node-b")
    await cluster.api.create_ct(NS, "calls", SPEC)
    st = await ready(cluster, "calls", 1)
    assert st["assignedNodes"] == ["node-a"]
    assert cluster.managers["node-b"].tasks == {}
