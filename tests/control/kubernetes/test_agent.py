"""The agent's Kubernetes mode against the emulated API: tasks follow the CaptureTasks."""

from __future__ import annotations

import asyncio
import base64
import stat
from pathlib import Path
from typing import Any

from tests.control.kubernetes.conftest import Agent
from tests.infra.kube import CT_RESOURCE, KubeApi, ct_path, eventually

NS = "sip"
SPEC: dict[str, Any] = {
    "capture": {"type": "afpacket", "interfaces": ["eth0"], "bpfFilter": "udp port 5060"},
    "processors": [{"type": "filter", "config": {"dropMethods": ["OPTIONS"]}}],
    "reporters": [{"type": "console"}],
}


async def assign(api: KubeApi, name: str, *nodes: str) -> None:
    """What the operator does: record the assignment in the status."""
    await api.client.merge_patch(
        ct_path(NS, name, "status"), {"status": {"assignedNodes": list(nodes)}}
    )


def node_status(api: KubeApi, name: str, node: str = "node-a") -> dict[str, Any]:
    obj = api.obj(CT_RESOURCE, NS, name) or {}
    return dict(((obj.get("status") or {}).get("nodes") or {}).get(node) or {})


async def test_create_runs_the_task_and_reports(kube_api: KubeApi, agent: Agent) -> None:
    await kube_api.create_ct(NS, "calls", SPEC)
    await assign(kube_api, "calls", "node-a")
    task = await eventually(lambda: agent.manager.tasks.get("sip.calls"), what="task created")
    assert task.spec.capture.model_dump()["interfaces"] == ["eth0"]
    assert task.spec.processors[0].type == "filter"
    st = await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Running"
                          and node_status(kube_api, "calls"))  # fmt: skip
    assert st["packets"] == 100 and st["sipMessages"] == 40 and st["drops"] == 2
    assert st["taskId"] == "sip.calls" and st["observedGeneration"] == 1
    assert st["lastHeartbeat"].endswith("Z")


async def test_unassigned_task_is_ignored(kube_api: KubeApi, agent: Agent) -> None:
    await kube_api.create_ct(NS, "elsewhere", SPEC)
    await assign(kube_api, "elsewhere", "node-b")
    await asyncio.sleep(0.5)
    assert agent.manager.calls == []
    assert node_status(kube_api, "elsewhere") == {}


async def test_spec_change_updates_the_task(kube_api: KubeApi, agent: Agent) -> None:
    await kube_api.create_ct(NS, "calls", SPEC)
    await assign(kube_api, "calls", "node-a")
    await eventually(lambda: "sip.calls" in agent.manager.tasks)
    spec = {**SPEC, "capture": {**SPEC["capture"], "bpfFilter": "udp port 5080"}}
    await kube_api.client.merge_patch(ct_path(NS, "calls"), {"spec": spec})
    await eventually(lambda: ("update", "sip.calls") in agent.manager.calls, what="update")
    assert agent.manager.tasks["sip.calls"].spec.capture.model_dump()["bpf_filter"] == (
        "udp port 5080"
    )
    await eventually(lambda: node_status(kube_api, "calls").get("observedGeneration") == 2)
    # A status write (by anyone) changes nothing: no second update.
    await kube_api.client.merge_patch(
        ct_path(NS, "calls", "status"), {"status": {"runningNodes": 1}}
    )
    await asyncio.sleep(0.4)
    assert agent.manager.calls.count(("update", "sip.calls")) == 1


async def test_pause_and_resume(kube_api: KubeApi, agent: Agent) -> None:
    await kube_api.create_ct(NS, "calls", SPEC)
    await assign(kube_api, "calls", "node-a")
    await eventually(lambda: "sip.calls" in agent.manager.tasks)
    await kube_api.client.merge_patch(ct_path(NS, "calls"), {"spec": {"paused": True}})
    await eventually(lambda: "sip.calls" not in agent.manager.tasks, what="task stopped")
    assert agent.manager.flushed == ["sip.calls"]
    await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Paused")
    await kube_api.client.merge_patch(ct_path(NS, "calls"), {"spec": {"paused": False}})
    await eventually(lambda: "sip.calls" in agent.manager.tasks, what="task restarted")
    await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Running")


async def test_unassign_stops_and_reports_stopped(kube_api: KubeApi, agent: Agent) -> None:
    await kube_api.create_ct(NS, "calls", SPEC)
    await assign(kube_api, "calls", "node-a")
    await eventually(lambda: "sip.calls" in agent.manager.tasks)
    await assign(kube_api, "calls", "node-b")
    await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Stopped")
    assert "sip.calls" not in agent.manager.tasks
    assert agent.manager.flushed == ["sip.calls"]


async def test_deletion_stops_flushes_and_reports(kube_api: KubeApi, agent: Agent) -> None:
    await kube_api.create_ct(NS, "calls", SPEC)
    # A finalizer keeps the object while the agent stops (the operator's role).
    await kube_api.client.merge_patch(
        ct_path(NS, "calls"), {"metadata": {"finalizers": ["otus.firestige.xyz/finalizer"]}}
    )
    await assign(kube_api, "calls", "node-a")
    await eventually(lambda: "sip.calls" in agent.manager.tasks)
    await kube_api.client.delete(ct_path(NS, "calls"))
    await eventually(lambda: node_status(kube_api, "calls").get("phase") == "Stopped")
    assert agent.manager.flushed == ["sip.calls"]
    assert "deleted" in node_status(kube_api, "calls")["message"]
    await kube_api.client.merge_patch(ct_path(NS, "calls"), {"metadata": {"finalizers": None}})
    await eventually(lambda: kube_api.obj(CT_RESOURCE, NS, "calls") is None)
    await eventually(lambda: not agent.agent.entries, what="entry forgotten")


async def test_invalid_spec_and_failed_start_report_failed(kube_api: KubeApi, agent: Agent) -> None:
    await kube_api.create_ct(NS, "bad", {**SPEC, "capture": {"interfaces": ["any", "eth0"]}})
    await assign(kube_api, "bad", "node-a")
    st = await eventually(lambda: node_status(kube_api, "bad").get("phase") == "Failed"
                          and node_status(kube_api, "bad"))  # fmt: skip
    assert "'any'" in st["message"]
    agent.manager.fail_start.add("sip.nodev")
    await kube_api.create_ct(NS, "nodev", SPEC)
    await assign(kube_api, "nodev", "node-a")
    st = await eventually(lambda: node_status(kube_api, "nodev").get("phase") == "Failed"
                          and node_status(kube_api, "nodev"))  # fmt: skip
    assert "no such device" in st["message"]
    assert "sip.nodev" not in agent.manager.tasks


async def test_two_agents_never_overwrite_each_other(kube_api: KubeApi, tmp_path: Path) -> None:
    agents = [Agent(kube_api, n, tmp_path) for n in ("node-a", "node-b")]
    for a in agents:
        a.agent.heartbeat_s = 0.02  # many concurrent writes
        a.start()
    try:
        await kube_api.create_ct(NS, "calls", SPEC)
        await assign(kube_api, "calls", "node-a", "node-b")
        await eventually(lambda: node_status(kube_api, "calls", "node-a")
                         and node_status(kube_api, "calls", "node-b"))  # fmt: skip
        await asyncio.sleep(1.0)
    finally:
        for a in agents:
            await a.stop()
    versions = kube_api.history(CT_RESOURCE, NS, "calls")
    seen: set[str] = set()
    writes = 0
    for v in versions:
        nodes = set((v.get("status") or {}).get("nodes") or {})
        assert seen <= nodes, f"an entry was lost: had {seen}, then {nodes}"
        writes += bool(nodes)
        seen = nodes
    assert seen == {"node-a", "node-b"} and writes > 20


async def test_secret_ref_becomes_private_files(
    kube_api: KubeApi, agent: Agent, tmp_path: Path
) -> None:
    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    await kube_api.client.create(
        f"/api/v1/namespaces/{NS}/secrets",
        {
            "metadata": {"name": "kafka-creds", "namespace": NS},
            "data": {"user": b64("otus"), "pass": b64("s3cret\n"), "ca.crt": b64("PEM")},
        },
    )
    spec = {
        **SPEC,
        "reporters": [
            {
                "type": "kafka",
                "config": {
                    "brokers": ["kafka:9093"],
                    "topic": "sip",
                    "securityProtocol": "SASL_SSL",
                    "saslMechanism": "SCRAM-SHA-512",
                },
                "secretRef": {
                    "name": "kafka-creds",
                    "usernameKey": "user",
                    "passwordKey": "pass",
                    "caKey": "ca.crt",
                },
            }
        ],
    }
    await kube_api.create_ct(NS, "kafka", spec)
    await assign(kube_api, "kafka", "node-a")
    task = await eventually(lambda: agent.manager.tasks.get("sip.kafka"), what="task")
    config = task.spec.reporters[0].config
    assert config.username == "otus"
    password = Path(config.password_file)
    assert _read(password) == "s3cret\n" and _read(Path(config.ssl_cafile)) == "PEM"
    assert _mode(password) == 0o600 and _mode(password.parent) == 0o700
    assert str(password).startswith(str(tmp_path / "node-a"))
    # Rotation: new content, new files, the task restarted with them, old files gone.
    await kube_api.client.merge_patch(
        f"/api/v1/namespaces/{NS}/secrets/kafka-creds", {"data": {"pass": b64("rotated")}}
    )
    agent.agent._mark(f"{NS}/kafka")  # what the periodic resync does
    await eventually(lambda: ("update", "sip.kafka") in agent.manager.calls, what="update")
    new = Path(agent.manager.tasks["sip.kafka"].spec.reporters[0].config.password_file)
    assert _read(new) == "rotated" and _read(password) is None
    await kube_api.client.merge_patch(ct_path(NS, "kafka"), {"spec": {"paused": True}})
    await eventually(lambda: _read(new) is None, what="secret files removed")


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_missing_secret_reports_failed(kube_api: KubeApi, agent: Agent) -> None:
    spec = {
        **SPEC,
        "reporters": [
            {
                "type": "kafka",
                "config": {"brokers": ["k:9092"], "topic": "sip", "securityProtocol": "SSL"},
                "secretRef": {"name": "absent", "caKey": "ca.crt"},
            }
        ],
    }
    await kube_api.create_ct(NS, "nosecret", spec)
    await assign(kube_api, "nosecret", "node-a")
    st = await eventually(lambda: node_status(kube_api, "nosecret").get("phase") == "Failed"
                          and node_status(kube_api, "nosecret"))  # fmt: skip
    assert "absent" in st["message"]
