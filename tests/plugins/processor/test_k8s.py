"""The k8s enrichment processor: pod index rules, labelling, and its background pod watch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from otus.core.packet import OutputPacket
from otus.plugins.base import PluginContext
from otus.plugins.processor import PROCESSORS
from otus.plugins.processor.k8s import K8sConfig, K8sEnricher, PodIndex, pod_addresses
from tests.infra.kube import KubeApi, eventually, kube_api

__all__ = ["kube_api"]


def pod(
    ns: str, name: str, *ips: str, host: bool = False, phase: str = "Running"
) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
        "spec": {"hostNetwork": host, "nodeName": "node-a"},
        "status": {
            "phase": phase,
            "podIP": ips[0] if ips else None,
            "podIPs": [{"ip": ip} for ip in ips],
        },
    }


def msg(src: str, dst: str) -> OutputPacket:
    return OutputPacket(0, src, dst, 5060, 5060, 17, "sip", {}, {"sip.method": "INVITE"})


def test_pod_addresses() -> None:
    assert pod_addresses(pod("a", "p", "10.0.0.1", "fd00::0001")) == (
        "a", "p", ("10.0.0.1", "fd00::1"),
    )  # fmt: skip
    assert pod_addresses(pod("a", "host", "192.168.1.5", host=True)) is None
    assert pod_addresses(pod("a", "done", "10.0.0.2", phase="Succeeded")) is None
    assert pod_addresses(pod("a", "pending")) is None


def test_index_follows_changes_and_reused_ips() -> None:
    idx = PodIndex()
    idx.apply("ADDED", "a/old", ("a", "old", ("10.0.0.1",)))
    idx.apply("ADDED", "b/new", ("b", "new", ("10.0.0.1", "fd00::1")))  # IP reused
    idx.apply("DELETED", "a/old", ("a", "old", ("10.0.0.1",)))  # must not drop new's
    assert idx.by_ip == {"10.0.0.1": ("b", "new"), "fd00::1": ("b", "new")}
    idx.apply("MODIFIED", "b/new", ("b", "new", ("10.0.0.9",)))
    assert idx.by_ip == {"10.0.0.9": ("b", "new")}


def test_process_labels_both_ends() -> None:
    proc = PROCESSORS["k8s"](K8sConfig(), PluginContext())
    proc._started = True  # no watch: the index is filled by hand
    proc.index.apply("ADDED", "voice/uac", ("voice", "uac", ("10.1.0.5",)))
    proc.index.apply("ADDED", "voice/uas", ("voice", "uas", ("fd00::7",)))
    batch = [msg("10.1.0.5", "fd00::7"), msg("10.9.9.9", "10.1.0.5"), msg("1.1.1.1", "2.2.2.2")]
    out = proc.process(batch)
    assert out is batch
    assert batch[0].labels == {
        "sip.method": "INVITE",
        "k8s.src_namespace": "voice", "k8s.src_pod": "uac",
        "k8s.dst_namespace": "voice", "k8s.dst_pod": "uas",
    }  # fmt: skip
    assert batch[1].labels["k8s.dst_pod"] == "uac" and "k8s.src_pod" not in batch[1].labels
    assert batch[2].labels == {"sip.method": "INVITE"}
    assert proc.stats() == {
        "process.k8s.labelled": 2, "process.k8s.unmatched": 1, "process.k8s.watch_failed": 0,
    }  # fmt: skip


async def test_watch_starts_in_the_running_loop(kube_api: KubeApi) -> None:
    await kube_api.client.create("/api/v1/namespaces/voice/pods", pod("voice", "uac", "10.1.0.5"))
    proc = K8sEnricher(K8sConfig(kubeconfig=str(kube_api.kubeconfig)), PluginContext())
    try:
        proc.process([msg("10.1.0.5", "10.1.0.6")])  # starts the watch; not yet synced
        await eventually(lambda: "10.1.0.5" in proc.index.by_ip, what="initial list")
        await kube_api.client.create(
            "/api/v1/namespaces/voice/pods", pod("voice", "uas", "10.1.0.6")
        )
        await kube_api.client.create(
            "/api/v1/namespaces/kube-system/pods", pod("kube-system", "cni", "10.1.0.7", host=True)
        )
        await eventually(lambda: "10.1.0.6" in proc.index.by_ip, what="watched pod")
        batch = proc.process([msg("10.1.0.5", "10.1.0.6"), msg("10.1.0.7", "10.1.0.5")])
        assert batch[0].labels["k8s.dst_pod"] == "uas"
        assert "k8s.src_pod" not in batch[1].labels  # host-network pods are not owners
        await kube_api.client.delete("/api/v1/namespaces/voice/pods/uas")
        await eventually(lambda: "10.1.0.6" not in proc.index.by_ip, what="deletion")
    finally:
        await proc.close()


async def test_no_credentials_leaves_records_alone(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    proc = K8sEnricher(K8sConfig(), PluginContext())
    batch = proc.process([msg("10.0.0.1", "10.0.0.2")])
    await asyncio.sleep(0.1)
    assert proc.stats()["process.k8s.watch_failed"] == 1
    assert batch[0].labels == {"sip.method": "INVITE"}
    await proc.close()


def test_without_a_loop_it_only_counts() -> None:
    proc = K8sEnricher(K8sConfig(), PluginContext())
    proc.process([msg("10.0.0.1", "10.0.0.2")])
    assert proc.stats()["process.k8s.watch_failed"] == 1
