"""Kubernetes enrichment: label each message with the pods that own its source and destination IPs.

Adds ``k8s.src_pod``/``k8s.src_namespace`` and ``k8s.dst_pod``/``k8s.dst_namespace`` when an
address belongs to a pod (``status.podIPs``, so both families of a dual-stack pod). Host-network
pods are left out: their address is the node's, shared by every such pod and the node itself.
Pods that have finished (``Succeeded``/``Failed``) are left out too: their IP may already be
another pod's.

Design: processors run in the task's worker processes with a synchronous ``process()``, inside
the worker's event loop. Construction (in the worker, whose loop runs while it builds the
pipeline; else the first ``process()`` call) starts a background task on that loop
(``asyncio.get_running_loop().create_task``) that lists and watches pods
(:class:`otus.core.kube.Reflector`: bookmarks, re-list on 410, backoff) and keeps a plain
``dict`` from IP to ``(namespace, name)``; ``process()`` only does two dict lookups a message
and never waits. Messages seen before the first list completes go out unlabelled (counted as
``process.k8s.unmatched``). Each worker keeps its own small index (IPs and names only, not pod
objects), which avoids any cross-process sharing on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import Annotated, Any

from pydantic import Field

from otus.core.labels import (
    LABEL_K8S_DST_NAMESPACE,
    LABEL_K8S_DST_POD,
    LABEL_K8S_SRC_NAMESPACE,
    LABEL_K8S_SRC_POD,
)
from otus.core.model import SpecModel
from otus.core.packet import OutputPacket
from otus.plugins.base import PluginContext

__all__ = ["K8sConfig", "K8sEnricher", "PodIndex", "pod_addresses"]

log = logging.getLogger(__name__)

Namespace = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]


class K8sConfig(SpecModel):
    """Where to find pods: the cluster the agent runs in, or a kubeconfig file."""

    kubeconfig: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="Kubeconfig file; by default the pod's service account (in-cluster).",
    )
    namespaces: list[Namespace] = Field(
        default_factory=list,
        max_length=64,
        description="Only pods of these namespaces; empty: every namespace.",
    )


Pod = tuple[str, str, tuple[str, ...]]  # namespace, name, IPs


def _canonical(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def pod_addresses(pod: dict[str, Any]) -> Pod | None:
    """A pod's namespace, name and IPs; ``None`` when it should not label anything."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    raw = [p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, dict)]
    if status.get("podIP"):
        raw.append(status["podIP"])
    ips = tuple(sorted({c for ip in raw if isinstance(ip, str) and (c := _canonical(ip))}))
    if not ips:
        return None
    meta = pod.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")), ips)


class PodIndex:
    """IP -> (namespace, pod), fed with reflector changes."""

    def __init__(self) -> None:
        self.by_ip: dict[str, tuple[str, str]] = {}
        self._ips: dict[str, tuple[str, ...]] = {}

    def apply(self, kind: str, key: str, pod: Pod) -> None:
        """Apply one ``ADDED``/``MODIFIED``/``DELETED`` change of the pod stored under ``key``."""
        for ip in self._ips.pop(key, ()):
            if self.by_ip.get(ip) == (pod[0], pod[1]):
                del self.by_ip[ip]
        if kind == "DELETED":
            return
        self._ips[key] = pod[2]
        for ip in pod[2]:
            self.by_ip[ip] = (pod[0], pod[1])  # a newer pod takes over a reused IP


class K8sEnricher:
    """Labels messages with the pods at both ends; never drops."""

    Config = K8sConfig

    def __init__(self, config: K8sConfig, ctx: PluginContext) -> None:
        self.config = config
        self.index = PodIndex()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._labelled = 0
        self._unmatched = 0
        self._watch_failed = 0
        # Workers build their pipeline inside the running loop: start the watch now, so the
        # index is filled before the first message instead of missing the first batches.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self._start()

    def process(self, batch: list[OutputPacket]) -> list[OutputPacket]:
        """Add the pod labels in place."""
        if not self._started:
            self._start()
        by_ip = self.index.by_ip
        labelled = 0
        for pkt in batch:
            src = by_ip.get(pkt.src_ip)
            dst = by_ip.get(pkt.dst_ip)
            if src is None and dst is None:
                continue
            labels = pkt.labels
            if src is not None:
                labels[LABEL_K8S_SRC_NAMESPACE], labels[LABEL_K8S_SRC_POD] = src
            if dst is not None:
                labels[LABEL_K8S_DST_NAMESPACE], labels[LABEL_K8S_DST_POD] = dst
            labelled += 1
        self._labelled += labelled
        self._unmatched += len(batch) - labelled
        return batch

    def _start(self) -> None:
        self._started = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("k8s enrichment: no event loop in this worker; records stay unlabelled")
            self._watch_failed = 1
            return
        self._task = loop.create_task(self._run(), name="k8s-pod-watch")

    async def _run(self) -> None:
        # Imported here: aiohttp loads only in workers of tasks that use this processor.
        from otus.core.errors import ConfigError  # noqa: PLC0415
        from otus.core.kube import KubeClient, KubeConfig, Reflector  # noqa: PLC0415

        try:
            kube = KubeConfig.load(self.config.kubeconfig)
        except (ConfigError, OSError, ValueError) as e:
            log.warning("k8s enrichment disabled: %s", e)
            self._watch_failed = 1
            return
        paths = [f"/api/v1/namespaces/{ns}/pods" for ns in self.config.namespaces] or [
            "/api/v1/pods"
        ]
        async with KubeClient(kube) as client:
            reflectors = [
                Reflector(client, p, transform=pod_addresses, on_change=self.index.apply)
                for p in paths
            ]
            await asyncio.gather(*(r.run() for r in reflectors))

    async def close(self) -> None:
        """Stop the pod watch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def stats(self) -> dict[str, int]:
        """``process.k8s.labelled`` / ``unmatched`` messages, ``watch_failed`` (0 or 1)."""
        return {
            "process.k8s.labelled": self._labelled,
            "process.k8s.unmatched": self._unmatched,
            "process.k8s.watch_failed": self._watch_failed,
        }
