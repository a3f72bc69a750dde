"""The product as a user meets it: chart, operator, agents on two nodes, SIP into Kafka.

A control plane of its own, bound to the hub address (see ``e2e.infra.hub``), so the agents in
the node namespaces reach it; Kafka with a SASL listener on the same address; the chart rendered
with ``helm template`` and applied; the operator and two agents as processes under the chart's
ServiceAccounts and RBAC; Pod objects for the agents (Ready, as a kubelet would report) and for
the SIP pods (their IPs, for the enrichment). Then ``manifests/examples/capturetask.yaml``,
adjusted to this cluster's broker and interfaces, goes through its life in steps: Ready, SIP in
Kafka equal to tshark's, the printer columns, a node relabelled away and back, an agent killed
and restarted, the BPF filter edited, and the CaptureTask deleted.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import Phases
from e2e.infra.cluster import Cluster
from e2e.infra.hub import HUB_IP, POD_IFACES, Hub, HubKafka, NodeHost, node_host
from e2e.infra.otus import (
    AgentProcess,
    OperatorProcess,
    apply_chart,
    find,
    put_pod,
    render_chart,
    set_pod_status,
)
from e2e.infra.sip import Round, TopicReader, assert_same, run_round
from tests.infra.daemon import children_of, pid_alive
from tests.infra.kafka import SASL_PASSWORD, SASL_USER
from tests.infra.skips import requires_root, requires_tool

pytestmark = [
    requires_root,
    requires_tool("sipp", "tcpdump", "tshark", "java"),
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "manifests" / "examples" / "capturetask.yaml"
NS = "otus-system"  # the release namespace, and the example CaptureTask's
PODS_NS = "voice"
NODES = ("node-a", "node-b")
CAPTURE_LABEL = "otus.firestige.xyz/capture"
HEARTBEAT_TIMEOUT_S = 20  # the agents report every 10 s
VALUES = {
    "image": {"pullPolicy": "Never"},  # nothing runs the pods: no image is ever pulled
    "operator": {"heartbeatTimeoutSeconds": HEARTBEAT_TIMEOUT_S, "resyncSeconds": 2},
}
READY_WITHIN_S = 60.0
KAFKA_WITHIN_S = 60.0


@dataclass
class Env:
    """Everything the steps share."""

    cluster: Cluster
    kafka: HubKafka
    hosts: dict[str, NodeHost]
    agents: dict[str, AgentProcess]
    operator: OperatorProcess
    agent_pods: dict[str, dict[str, Any]]
    topic: TopicReader
    ct: dict[str, Any]
    workdir: Path
    phases: Phases
    rounds: int = 0
    seen: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The CaptureTask's name."""
        return str(self.ct["metadata"]["name"])

    @property
    def task_id(self) -> str:
        """The agents' task id for it."""
        return f"{NS}.{self.name}"

    def get(self) -> dict[str, Any] | None:
        """The CaptureTask, or None once it is gone."""
        proc = self.cluster.kubectl_run("get", "ct", self.name, "-n", NS, "-o", "json")
        if proc.returncode != 0:
            assert "NotFound" in proc.stderr, proc.stderr
            return None
        return dict(json.loads(proc.stdout))

    def status(self) -> dict[str, Any]:
        """The CaptureTask's status ({} when missing)."""
        return dict((self.get() or {}).get("status") or {})

    def diagnose(self) -> str:
        """What to print when a step fails: the status and the processes' last words."""
        out = [f"status: {json.dumps(self.status(), indent=1)}"]
        out.append(f"--- operator ---\n{self.operator.log_tail(25)}")
        for name, agent in self.agents.items():
            out.append(f"--- agent {name} ---\n{agent.log_tail(15)}")
        return "\n".join(out)

    def wait(self, check: Callable[[], Any], within: float, what: str) -> float:
        """Poll ``check`` until truthy; the seconds it took (fails with diagnostics)."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            if check():
                return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(f"not within {within:.0f}s: {what}\n{self.diagnose()}")

    def round(self, *nodes: str) -> dict[str, Round]:
        """Calls on each node in turn, captured by tcpdump on the agents' interfaces."""
        self.rounds += 1
        return {n: run_round(self.hosts[n], self.workdir, f"r{self.rounds}") for n in nodes}

    def records(self, rnd: Round) -> list[dict[str, Any]]:
        """The round's records once all expected are in Kafka."""
        return self.topic.wait_for(rnd, KAFKA_WITHIN_S, self.diagnose)


def condition(status: dict[str, Any], ctype: str = "Ready") -> dict[str, Any]:
    """One condition of a status ({} when absent)."""
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def phase(status: dict[str, Any], node: str) -> str | None:
    """A node's phase in the status (None without an entry)."""
    return ((status.get("nodes") or {}).get(node) or {}).get("phase")


def ready_with(env: Env, nodes: tuple[str, ...]) -> bool:
    """Ready True, exactly ``nodes`` assigned, each Running."""
    st = env.status()
    return (
        condition(st).get("status") == "True"
        and st.get("assignedNodes") == list(nodes)
        and st.get("runningNodes") == len(nodes)
        and all(phase(st, n) == "Running" for n in nodes)
    )


def capturetask(kafka: HubKafka) -> dict[str, Any]:
    """The example CaptureTask with this cluster's broker and the nodes' pod interfaces."""
    ct = yaml.safe_load(EXAMPLE.read_text())
    spec = ct["spec"]
    spec["capture"]["interfaces"] = list(POD_IFACES)
    reporter = spec["reporters"][0]
    reporter["config"]["brokers"] = [kafka.node_bootstrap]
    reporter["config"]["securityProtocol"] = "SASL_PLAINTEXT"  # no TLS on the hub listener
    del reporter["secretRef"]["caKey"]
    return dict(ct)


def check_labels(records: list[dict[str, Any]], pods: dict[str, str]) -> None:
    """Each record names the pods at both ends (by IP), in their namespace."""
    by_ip = {ip: name for name, ip in pods.items()}
    bad = []
    for r in records:
        got = {k: v for k, v in r["labels"].items() if k.startswith("k8s.")}
        want = {
            "k8s.src_pod": by_ip[r["src_ip"]],
            "k8s.src_namespace": PODS_NS,
            "k8s.dst_pod": by_ip[r["dst_ip"]],
            "k8s.dst_namespace": PODS_NS,
        }
        if got != want:
            bad.append((r["ts"], r["src_ip"], r["dst_ip"], got))
    assert not bad, f"{len(bad)} of {len(records)} records without their pods: {bad[:5]}"


@contextlib.contextmanager
def _environment(tmp: Path, phases: Phases) -> Iterator[Env]:
    with contextlib.ExitStack() as stack:
        with phases.time("hub bridge, control plane on the hub address, Kafka"):
            hub = stack.enter_context(Hub())
            cluster = stack.enter_context(Cluster(bind_address=HUB_IP))
            kafka = HubKafka(tmp / "kafka")
            stack.callback(kafka.close)
            kafka.start()
        with phases.time("chart: helm template, kubectl apply, ServiceAccount tokens"):
            docs = render_chart(NS, VALUES, tmp)
            apply_chart(cluster, NS, docs)
            deployment, daemonset = find(docs, "Deployment"), find(docs, "DaemonSet")
            pod_template = daemonset["spec"]["template"]
            kubeconfigs = {
                who: cluster.create_service_account_kubeconfig(
                    NS, obj["spec"]["template"]["spec"]["serviceAccountName"]
                )
                for who, obj in (("operator", deployment), ("agent", daemonset))
            }
            cluster.kubectl(
                "create", "secret", "generic", "kafka-credentials", "-n", NS,
                f"--from-literal=username={SASL_USER}", f"--from-literal=password={SASL_PASSWORD}",
            )  # fmt: skip
        with phases.time("nodes: namespaces, Node and Pod objects, agents started"):
            cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PODS_NS}})
            hosts: dict[str, NodeHost] = {}
            agents: dict[str, AgentProcess] = {}
            agent_pods: dict[str, dict[str, Any]] = {}
            configmap = find(docs, "ConfigMap")
            for i, name in enumerate(NODES, 1):
                cluster.create_node(name, {CAPTURE_LABEL: "sip"})
                host = hosts[name] = stack.enter_context(node_host(hub, name, i))
                agent = AgentProcess(host, daemonset, configmap, kubeconfigs["agent"], tmp)
                stack.callback(agent.stop)
                agent.start()
                agents[name] = agent
                # The DaemonSet's pod on this node, reported Ready once the agent is.
                pod = {"name": f"otus-agent-{name}", "labels": pod_template["metadata"]["labels"]}
                agent_pods[name] = pod
                put_pod(
                    cluster, NS, pod["name"], node=name, ips=[host.address],
                    labels=pod["labels"], spec=pod_template["spec"],
                )  # fmt: skip
                for pod_name, ip in host.pod_ips.items():
                    put_pod(cluster, PODS_NS, pod_name, node=name, ips=[ip])
            # A host-network pod shares its node's address and must never label a message:
            # this one claims the UAS's address, and is newer and listed after it (the API
            # lists by name), so it would take the label over if it counted.
            uas_a = hosts["node-a"].topo.uas_ip4
            spec = {"hostNetwork": True, "containers": [{"name": "sbc", "image": "x.invalid/sbc"}]}
            put_pod(cluster, PODS_NS, "uas-a-hostnet", node="node-a", ips=[uas_a], spec=spec)
        with phases.time("operator started (kopf liveness up)"):
            operator = OperatorProcess(deployment, kubeconfigs["operator"], tmp)
            stack.callback(operator.stop)
            operator.start()
        ct = capturetask(kafka)
        topic = TopicReader(kafka.bootstrap, ct["spec"]["reporters"][0]["config"]["topic"])
        yield Env(cluster, kafka, hosts, agents, operator, agent_pods, topic, ct, tmp, phases)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, phases: Phases) -> Iterator[Env]:
    """The whole installation, torn down (processes by PID, namespaces, bridge) at the end."""
    tmp = tmp_path_factory.mktemp("ct")
    with _environment(tmp, phases) as e:
        yield e


@pytest.mark.incremental
class TestCaptureTask:
    """One CaptureTask's life, step by step."""

    def test_applied_example_becomes_ready_on_both_nodes(self, env: Env) -> None:
        started = time.monotonic()
        env.cluster.apply(env.ct)
        took = env.wait(lambda: ready_with(env, NODES), READY_WITHIN_S, "Ready on both nodes")
        env.phases.add(f"CaptureTask Ready, 2/2 nodes Running (bound {READY_WITHIN_S:.0f}s)", took)
        obj = env.get() or {}
        assert "otus.firestige.xyz/finalizer" in obj["metadata"]["finalizers"]
        assert condition(obj["status"], "Degraded")["status"] == "False"
        for agent in env.agents.values():
            assert agent.tasks()[env.task_id]["state"] == "running"
        assert time.monotonic() - started < READY_WITHIN_S

    def test_every_sip_message_reaches_kafka_with_pod_labels(self, env: Env) -> None:
        started = time.monotonic()
        rounds = env.round(*NODES)
        for node, rnd in rounds.items():
            records = env.records(rnd)
            assert_same(records, rnd)
            check_labels(records, env.hosts[node].pod_ips)
            assert {r["task_id"] for r in records} == {env.task_id}
            assert len(rnd.expected) < len(rnd.seen)  # the filter dropped OPTIONS
        env.seen["first"] = rounds
        env.phases.since("SIP calls on both nodes -> Kafka, equal to tshark", started)

    def test_kubectl_get_ct_shows_the_printer_columns(self, env: Env) -> None:
        rounds: dict[str, Round] = env.seen["first"]
        sip = sum(len(r.seen) for r in rounds.values())
        dropped = sum(len(r.seen) - len(r.expected) for r in rounds.values())
        rows: list[list[str]] = []

        def table() -> bool:
            nonlocal rows
            out = env.cluster.kubectl("get", "ct", "-n", NS)
            rows = [line.split() for line in out.splitlines()]
            # Totals follow the agents' reports (every 10 s at most).
            return len(rows) == 2 and int(rows[1][4]) >= sip and int(rows[1][5]) >= dropped

        env.wait(table, 30, f"SIP >= {sip} and DROPS >= {dropped} in kubectl get ct")
        assert rows[0] == ["NAME", "READY", "RUNNING", "TARGETED", "SIP", "DROPS", "AGE"]
        assert rows[1][:4] == [env.name, "True", "2", "2"]
        wide = env.cluster.kubectl("get", "capturetasks", "-n", NS, "-o", "wide").splitlines()
        assert wide[0].split() == [*rows[0][:6], "REASON", "PAUSED", "AGE"]
        assert wide[1].split()[6] == "Running"
        assert env.cluster.kubectl("get", "otus", "-n", NS, "-o", "name") == (
            f"capturetask.otus.firestige.xyz/{env.name}"
        )

    def test_relabelled_node_leaves_and_rejoins(self, env: Env) -> None:
        started = time.monotonic()
        env.cluster.kubectl("label", "node", "node-b", f"{CAPTURE_LABEL}-")

        def moved() -> bool:
            st = env.status()
            return (
                ready_with(env, ("node-a",))
                and phase(st, "node-b") in (None, "Stopped")
                and env.task_id not in env.agents["node-b"].tasks()
            )

        env.wait(moved, 60, "node-b unassigned and its task stopped, node-a still running")
        env.phases.since("node relabelled away: its agent stopped", started)
        rounds = env.round("node-b", "node-a")  # node-a's records come after node-b's would
        assert_same(env.records(rounds["node-a"]), rounds["node-a"])
        assert env.topic.of(rounds["node-b"]) == []
        started = time.monotonic()
        env.cluster.kubectl("label", "node", "node-b", f"{CAPTURE_LABEL}=sip")
        env.wait(lambda: ready_with(env, NODES), READY_WITHIN_S, "node-b back")
        env.phases.since("node relabelled back: Ready 2/2 again", started)
        assert env.agents["node-b"].tasks()[env.task_id]["state"] == "running"

    def test_killed_agent_turns_unknown_and_recovers_on_restart(self, env: Env) -> None:
        agent = env.agents["node-a"]
        assert agent.proc is not None
        workers = children_of(agent.proc.pid)
        assert workers, "the agent runs no worker processes"
        started = time.monotonic()
        agent.kill()
        pod = env.agent_pods["node-a"]["name"]
        set_pod_status(env.cluster, NS, pod, ready=False)  # the kubelet's view of a dead agent

        def unknown() -> bool:
            st = env.status()
            return (
                phase(st, "node-a") == "Unknown"
                and condition(st)["status"] == "False"
                and condition(st, "Degraded").get("reason") == "NodesUnknown"
                and phase(st, "node-b") == "Running"
            )

        env.wait(unknown, HEARTBEAT_TIMEOUT_S + 30, "node-a Unknown, Ready False")
        env.phases.since(
            f"agent SIGKILLed -> node Unknown (heartbeat timeout {HEARTBEAT_TIMEOUT_S}s)", started
        )
        env.wait(lambda: not any(pid_alive(p) for p in workers), 30, "orphan workers exited")
        started = time.monotonic()
        agent.start()  # same state file and runtime directory, as a restarted container
        set_pod_status(env.cluster, NS, pod, ready=True)
        env.wait(lambda: ready_with(env, NODES), READY_WITHIN_S, "node-a Running again")
        env.phases.since("agent restarted -> Running, Ready 2/2", started)
        rounds = env.round(*NODES)
        for rnd in rounds.values():
            assert_same(env.records(rnd), rnd)

    def test_edited_bpf_filter_reaches_the_agents(self, env: Env) -> None:
        started = time.monotonic()
        old = env.ct["spec"]["capture"]["bpfFilter"]
        uac_a = env.hosts["node-a"].topo.uac_ip4
        # node-a's calls all involve its UAC. First: after the example's `vlan`, libpcap reads
        # the rest of an expression at VLAN offsets, so an appended clause would test other bytes.
        new = f"not host {uac_a} and ({old})"
        env.cluster.kubectl(
            "patch", "ct", env.name, "-n", NS, "--type=merge",
            "-p", json.dumps({"spec": {"capture": {"bpfFilter": new}}}),
        )  # fmt: skip
        generation = (env.get() or {})["metadata"]["generation"]

        def applied() -> bool:
            st = env.status()
            for node, agent in env.agents.items():
                task = agent.tasks().get(env.task_id) or {}
                entry = (st.get("nodes") or {}).get(node) or {}
                if (task.get("spec") or {}).get("capture", {}).get("bpf_filter") != new:
                    return False
                if task.get("state") != "running" or entry.get("observedGeneration") != generation:
                    return False
            return st.get("observedGeneration") == generation and ready_with(env, NODES)

        env.wait(applied, READY_WITHIN_S, f"filter of generation {generation} running on both")
        env.phases.since("BPF filter edited -> both agents' tasks updated", started)
        rounds = env.round("node-a", "node-b")  # node-b's records come after node-a's would
        assert_same(env.records(rounds["node-b"]), rounds["node-b"])
        assert env.topic.of(rounds["node-a"]) == []

    def test_delete_stops_agents_flushes_and_releases_the_finalizer(self, env: Env) -> None:
        rnd = env.round("node-b")["node-b"]
        started = time.monotonic()
        env.cluster.kubectl("delete", "ct", env.name, "-n", NS, "--wait=false")
        took = env.wait(lambda: env.get() is None, 60, "the CaptureTask gone")
        env.phases.add("CaptureTask deleted -> agents stopped, finalizer released", took)
        for agent in env.agents.values():
            assert env.task_id not in agent.tasks()
        # Everything captured before the delete was flushed to Kafka.
        assert_same(env.records(rnd), rnd)
        selector = f"--field-selector=involvedObject.name={env.name}"
        out = env.cluster.kubectl("get", "events", "-n", NS, "-o", "json", selector)
        events = json.loads(out)["items"]
        reasons = {e["reason"] for e in events}
        assert "Drained" in reasons and "DrainTimeout" not in reasons, reasons
        assert time.monotonic() - started < 60
