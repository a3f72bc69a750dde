"""A fake Kubernetes API (kmock's emulator, with metadata bookkeeping) and a fake task manager.

``ApiEmulator`` adds what kmock's ``KubernetesEmulator`` leaves out and the operator and the
agent rely on: ``metadata.resourceVersion`` (a global counter; a merge patch carrying an older
one fails with 409, as on a real server), ``generation`` (bumped when ``spec`` changes), ``uid``
and ``creationTimestamp``; the status subresource's rule that ``/status`` writes change only
``status`` and main-resource writes never change it; and :meth:`ApiEmulator.hold`, a list that
does not answer yet (a slow or overloaded API server).

``FakeTaskManager`` implements the task-manager contract of ``otus.task.manager`` in memory.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import pytest
import pytest_asyncio
import yaml
from kmock._internal import enums

from otus.core.errors import TaskExistsError, TaskNotFoundError, TaskStartError
from otus.core.kube import KubeClient, KubeConfig
from otus.pipeline.spec import TaskSpec

__all__ = [
    "CT_RESOURCE",
    "ApiEmulator",
    "FakeTaskManager",
    "KubeApi",
    "ct_path",
    "eventually",
    "kube_api",
]

CT_RESOURCE = "otus.firestige.xyz/v1alpha1/capturetasks"
_RV = itertools.count(1000)


def ct_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    """URL path of CaptureTasks in a namespace, one of them, or its subresource."""
    path = f"/apis/otus.firestige.xyz/v1alpha1/namespaces/{namespace}/capturetasks"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


class _Conflict(kmock.KubernetesError):
    pass


class ApiEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator plus resourceVersion, generation, uid and status-subresource rules."""

    def hold(self, resource: str) -> asyncio.Event:
        """Keep lists of ``resource`` (``v1/pods``) unanswered until the returned event is set."""
        gate = asyncio.Event()
        self._gates = {**getattr(self, "_gates", {}), kmock.resource(resource): gate}
        return gate

    async def _handle(self, request: Any) -> Any:
        gate = getattr(self, "_gates", {}).get(request.resource)
        if gate is not None and request.action == enums.action.LIST:
            await gate.wait()
        if request.resource is not None and isinstance(request.data, (dict, list)):
            if request.action == enums.action.CREATE:
                self._on_create(request)
            elif request.action == enums.action.UPDATE and request.name:
                self._on_update(request)
        return await super()._handle(request)

    def _on_create(self, request: Any) -> None:
        meta = request.data.setdefault("metadata", {})
        if request.namespace:
            meta.setdefault("namespace", request.namespace)
        meta["resourceVersion"] = str(next(_RV))
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def _current(self, request: Any) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return dict(self.objects[key].raw)

    def _on_update(self, request: Any) -> None:
        current = self._current(request)
        if current is None:
            return  # kmock answers 404
        meta = current.get("metadata") or {}
        rv = str(next(_RV))
        data = request.data
        if isinstance(data, list):  # JSON patch (kopf): its rv test fails with 422, as for real
            tests = [o for o in data if o.get("op") == "test"]
            for op in tests:
                stale = str(op.get("value")) != str(meta.get("resourceVersion"))
                if op.get("path") == "/metadata/resourceVersion" and stale:
                    raise _Conflict(status=422, reason="Invalid", message="test failed")
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": rv})
            return
        wanted = (data.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and str(wanted) != str(meta.get("resourceVersion")):
            raise _Conflict(status=409, reason="Conflict", message="resourceVersion changed")
        status_only = request.subresource == "status"
        for key in list(data):
            if (key == "status") != status_only and key != "metadata":
                del data[key]  # the other half of the object is not writable here
        if status_only:
            data.pop("metadata", None)
        new_meta = data.setdefault("metadata", {})
        new_meta["resourceVersion"] = rv
        if "spec" in data and data["spec"] != current.get("spec"):
            new_meta["generation"] = int(meta.get("generation") or 1) + 1


@dataclass
class KubeApi:
    """A running emulator: its URL, credentials, and a client for the test's own requests."""

    emulator: ApiEmulator
    config: KubeConfig
    client: KubeClient
    kubeconfig: Path

    def obj(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object, or None."""
        try:
            obj = self.emulator.objects[resource, namespace, name]
        except KeyError:
            return None
        return None if obj.deleted else dict(obj.raw)

    def history(self, resource: str, namespace: str | None, name: str) -> list[dict[str, Any]]:
        """Every stored version of an object, oldest first."""
        versions = self.emulator.objects[resource, namespace, name].history
        return [dict(v.raw if hasattr(v, "raw") else v) for v in versions if v is not None]

    def events(self, namespace: str) -> list[dict[str, Any]]:
        """Kubernetes Events posted in a namespace."""
        return [
            dict(o.raw)
            for (res, ns, _), o in self.emulator.objects.items()
            if res == kmock.resource("v1/events") and ns == namespace and not o.deleted
        ]

    async def create_ct(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Create a CaptureTask."""
        body = {
            "apiVersion": "otus.firestige.xyz/v1alpha1",
            "kind": "CaptureTask",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        await self.client.create(ct_path(namespace), body)

    async def node(self, name: str, labels: dict[str, str | None]) -> None:
        """Create a Node, or replace its labels (None removes one)."""
        if self.obj("v1/nodes", None, name) is None:
            await self.client.create("/api/v1/nodes", {"metadata": {"name": name}})
        current = self.obj("v1/nodes", None, name) or {}
        old = (current.get("metadata") or {}).get("labels") or {}
        patch = {**dict.fromkeys(old), **labels}
        await self.client.merge_patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": patch}})

    async def agent_pod(
        self, namespace: str, node: str, *, ready: bool = True, labels: dict[str, str] | None = None
    ) -> None:
        """Create or update the agent pod of a node (``labels`` beside the agent's own)."""
        name = f"otus-agent-{node}"
        cond = [{"type": "Ready", "status": "True" if ready else "False"}]
        if self.obj("v1/pods", namespace, name) is None:
            await self.client.create(
                f"/api/v1/namespaces/{namespace}/pods",
                {
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": {"app.kubernetes.io/name": "otus-agent", **(labels or {})},
                    },
                    "spec": {"nodeName": node},
                    "status": {"conditions": cond},
                },
            )
        else:
            await self.client.merge_patch(
                f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                {"status": {"conditions": cond}},
            )


async def eventually(
    check: Callable[[], Any],
    within: float = 10.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "",
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``within`` s.

    ``what`` may be a callable, to describe the state at the failure rather than before the wait.
    """
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    told = what() if callable(what) else what
    pytest.fail(f"not within {within}s: {told or check}")


@pytest_asyncio.fixture
async def kube_api(tmp_path: Path) -> AsyncIterator[KubeApi]:
    """The emulator on a free port, with the resources the operator and agent use."""
    emulator = ApiEmulator()
    async with emulator, kmock.Server(emulator) as server:
        res = emulator.resources
        verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
        res[CT_RESOURCE] = kmock.ResourceInfo(
            kind="CaptureTask",
            namespaced=True,
            subresources={"status"},
            shortnames={"ct"},
            verbs=verbs,
        )
        for plural, kind, namespaced in (
            ("nodes", "Node", False),
            ("pods", "Pod", True),
            ("secrets", "Secret", True),
            ("events", "Event", True),
            ("namespaces", "Namespace", False),
        ):
            res[f"v1/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=verbs)
        url = str(server.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": url}}],
                    "users": [{"name": "test", "user": {"token": "test-token"}}],
                    "contexts": [
                        {
                            "name": "test",
                            "context": {"cluster": "kmock", "user": "test", "namespace": "otus"},
                        }
                    ],
                    "current-context": "test",
                }
            )
        )
        config = KubeConfig.from_kubeconfig(kubeconfig)
        async with KubeClient(config) as client:
            yield KubeApi(emulator, config, client, kubeconfig)


@dataclass
class FakeInfo:
    """A TaskInfo of the contract."""

    id: str
    spec: TaskSpec
    state: str = "running"
    reason: str | None = None
    stats: dict[str, int] = field(default_factory=dict)


class FakeTaskManager:
    """The task-manager contract, in memory; records every call."""

    def __init__(self, stats: dict[str, int] | None = None) -> None:
        self.tasks: dict[str, FakeInfo] = {}
        self.calls: list[tuple[str, str]] = []
        self.flushed: list[str] = []
        self.fail_start: set[str] = set()
        self.stats = stats or {
            "capture.packets": 100,
            "parse.messages": 40,
            "capture.drop.kernel": 2,
        }
        self._subscribers: list[Callable[[Any], None]] = []

    def _notify(self, info: FakeInfo) -> None:
        for cb in self._subscribers:
            cb(info)

    async def create(self, spec: TaskSpec) -> FakeInfo:
        """Start a task."""
        self.calls.append(("create", spec.id))
        if spec.id in self.tasks:
            raise TaskExistsError(spec.id)
        if spec.id in self.fail_start:
            raise TaskStartError(f"{spec.id}: cannot open eth9: no such device")
        await asyncio.sleep(0)
        info = self.tasks[spec.id] = FakeInfo(spec.id, spec, stats=dict(self.stats))
        self._notify(info)
        return info

    async def update(self, spec: TaskSpec) -> FakeInfo:
        """Replace a task's spec."""
        self.calls.append(("update", spec.id))
        if spec.id not in self.tasks:
            raise TaskNotFoundError(spec.id)
        info = self.tasks[spec.id]
        info.spec = spec
        self._notify(info)
        return info

    async def delete(self, task_id: str) -> FakeInfo:
        """Stop, flush, forget."""
        self.calls.append(("delete", task_id))
        info = self.tasks.pop(task_id, None)
        if info is None:
            raise TaskNotFoundError(task_id)
        await asyncio.sleep(0)
        self.flushed.append(task_id)
        info.state = "stopped"
        self._notify(info)
        return info

    def status(self, task_id: str) -> FakeInfo:
        """The task's info."""
        if task_id not in self.tasks:
            raise TaskNotFoundError(task_id)
        return self.tasks[task_id]

    def get(self, task_id: str) -> TaskSpec:
        """The task's spec."""
        return self.status(task_id).spec

    def list(self) -> list[FakeInfo]:
        """Every task."""
        return list(self.tasks.values())

    def subscribe(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call back on each state change; returns the unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)
