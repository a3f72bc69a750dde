"""The kopf handlers: one daemon per CaptureTask, a node index, a finalizer that drains agents.

- ``nodes`` (index): node name -> labels.
- Agent pods are watched by :class:`AgentWatcher` (our own list+watch, namespaced with a
  server-side label selector) rather than a kopf index: kopf's namespace scope is global, and
  CaptureTasks live in every namespace, so a kopf pod index would watch every pod in the
  cluster and need cluster-wide pod RBAC. Its selector (any label selector string) is sent to
  the server and applied here too.
- ``reconcile`` (daemon, one per CaptureTask): validates the spec with the pydantic model,
  assigns nodes (at most ``max_nodes``; holding the assignment on an invalid edit, and until
  the agent pods are listed), marks silent or never-reporting nodes ``Unknown``, aggregates
  conditions and totals, and patches ``/status`` (JSON merge patch; the operator is the only
  writer of everything but ``status.nodes``). It runs at once on a change of the task, of a
  node or of an agent pod, and at least every ``resync_s``.
- ``drain`` (deletion, holds the finalizer): waits until every agent that ran the task wrote
  ``phase: Stopped`` (they flush their reporters first), at most ``delete_timeout_s``, then
  releases with an Event either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from otus.control.kubernetes.model import GROUP, MAX_NODES, PLURAL, VERSION, LabelSelector
from otus.core.errors import SpecError
from otus.core.kube import ApiError, KubeClient, KubeConfig, Reflector
from otus_operator.logic import (
    Silence,
    assign,
    cap,
    hold,
    merge_conditions,
    plan_status,
    rfc3339,
    waiting_nodes,
)
from otus_operator.selector import parse_selector

__all__ = ["AgentWatcher", "OperatorConfig", "State", "registry"]

log = logging.getLogger(__name__)

registry = kopf.OperatorRegistry()
CT = (GROUP, VERSION, PLURAL)


@dataclass
class OperatorConfig:
    """Settings from the command line (see ``otus_operator.__main__``)."""

    kubeconfig: str | None = None
    agent_namespace: str | None = None
    agent_selector: str = "app.kubernetes.io/name=otus-agent"
    heartbeat_timeout_s: float = 30.0
    resync_s: float = 5.0
    delete_timeout_s: float = 60.0
    max_nodes: int = MAX_NODES  # per CaptureTask; the CRD allows no more


@dataclass
class State:
    """The operator's memo: config, API client, agent watcher, wake-ups."""

    config: OperatorConfig = field(default_factory=OperatorConfig)
    kube: KubeConfig | None = None
    client: KubeClient | None = None
    agents: AgentWatcher | None = None
    wakers: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    last_event: dict[str, str] = field(default_factory=dict)
    silence: Silence = field(default_factory=Silence)  # when node entries last changed

    def wake_all(self) -> None:
        """Re-run every CaptureTask's reconcile now."""
        for ev in self.wakers.values():
            ev.set()


class AgentWatcher:
    """Agent pods of one namespace: node name -> whether an agent pod there is ready."""

    def __init__(self, client: KubeClient, namespace: str, selector: str, state: State) -> None:
        self.selector = parse_selector(selector)
        self.state = state
        self.reflector: Reflector[tuple[str, bool]] = Reflector(
            client,
            f"/api/v1/namespaces/{namespace}/pods",
            label_selector=selector,
            transform=self._reduce,
            on_change=lambda *_: state.wake_all(),
        )

    def _reduce(self, pod: dict[str, Any]) -> tuple[str, bool] | None:
        meta = pod.get("metadata") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or not self.selector.matches(meta.get("labels") or {}):
            return None  # the selector is applied here too (some servers ignore it)
        conditions = (pod.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return (str(node), ready and not meta.get("deletionTimestamp"))

    @property
    def synced(self) -> bool:
        """Whether the agent pods were listed once (before that, ``nodes()`` proves nothing)."""
        return self.reflector.synced.is_set()

    def nodes(self) -> dict[str, bool]:
        """Node -> any ready agent pod there (a node listed with False has only unready ones)."""
        out: dict[str, bool] = {}
        for node, ready in self.reflector.store.values():
            out[node] = out.get(node, False) or ready
        return out


def _memo(memo: Any) -> State:
    state = memo.get("state") if isinstance(memo, Mapping) else getattr(memo, "state", None)
    if not isinstance(state, State):
        raise kopf.PermanentError("operator state missing from memo")
    return state


@kopf.on.startup(id="configure", registry=registry)
async def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Kopf settings, the API client and the agent pod watch."""
    state = _memo(memo)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # events are posted on purpose, not from logs
    settings.peering.standalone = True  # one replica (Deployment strategy Recreate)
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    state.kube = state.kube or KubeConfig.load(state.config.kubeconfig)
    state.client = KubeClient(state.kube)
    namespace = state.config.agent_namespace or state.kube.namespace
    state.agents = AgentWatcher(state.client, namespace, state.config.agent_selector, state)
    state.tasks.append(asyncio.create_task(state.agents.reflector.run(), name="agent-pods"))


@kopf.on.cleanup(id="shutdown", registry=registry)
async def shutdown(memo: Any, **_: Any) -> None:
    """Stop the agent watch and close the client."""
    state = _memo(memo)
    for task in state.tasks:
        task.cancel()
    for task in state.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    state.tasks.clear()
    if state.client is not None:
        await state.client.close()


@kopf.on.login(id="login", registry=registry)
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """The same credentials as our own client: kubeconfig, or the pod's service account."""
    state = _memo(memo)
    kube = state.kube = state.kube or KubeConfig.load(state.config.kubeconfig)
    token = kube.authorization()
    return kopf.ConnectionInfo(
        server=kube.server,
        ca_path=kube.ca_file,
        ca_data=kube.ca_data,
        insecure=kube.insecure,
        scheme="Bearer" if token else None,
        token=token.split(" ", 1)[1] if token else None,
        certificate_path=kube.cert_file,
        certificate_data=kube.cert_data,
        private_key_path=kube.key_file,
        private_key_data=kube.key_data,
        default_namespace=kube.namespace,
    )


@kopf.index("", "v1", "nodes", id="nodes", registry=registry)
def nodes_index(name: str, labels: Mapping[str, str], memo: Any, **_: Any) -> dict[str, Any]:
    """Node name -> labels; any change re-runs every task's reconcile."""
    _memo(memo).wake_all()
    return {name: dict(labels)}


@kopf.on.event(*CT, id="wake", registry=registry)
def wake(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """A change of the CaptureTask (spec, or an agent's report): reconcile it now."""
    ev = _memo(memo).wakers.get(f"{namespace}/{name}")
    if ev is not None:
        ev.set()


def _node_labels(nodes: Any) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name in nodes:
        for labels in nodes[name]:
            out[name] = dict(labels)
    return out


# The backoff lets the loop see `stopped` and return: cancelled at once, kopf logs a warning on
# every deletion ("is cancelled. Will escalate.").
@kopf.daemon(
    *CT, id="reconcile", registry=registry, cancellation_backoff=1.0, cancellation_timeout=5.0
)
async def reconcile(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: Any,
    stopped: kopf.DaemonStopped,
    **kwargs: Any,
) -> None:
    """Assign, aggregate and report, on every change and at least every ``resync_s``."""
    state = _memo(memo)
    nodes = kwargs["nodes"]  # the index of that id
    key = f"{namespace}/{name}"
    ev = state.wakers.setdefault(key, asyncio.Event())
    stop = asyncio.ensure_future(stopped.wait())  # exit at once on deletion or shutdown
    try:
        while not stopped:
            ev.clear()
            try:
                await _reconcile_once(state, body, _node_labels(nodes))
            except ApiError as e:
                log.warning("capturetask %s: %s", key, e)
            wake = asyncio.ensure_future(ev.wait())
            await asyncio.wait(
                {wake, stop}, timeout=state.config.resync_s, return_when="FIRST_COMPLETED"
            )
            wake.cancel()
            await asyncio.sleep(0.05)  # let a burst of changes (index, events) settle
    finally:
        stop.cancel()
        state.wakers.pop(key, None)
        if not body.get("metadata", {}).get("deletionTimestamp"):
            state.silence.forget(key)  # a deleted task's drain still times its nodes


async def _reconcile_once(
    state: State, body: kopf.Body, node_labels: dict[str, dict[str, str]]
) -> None:
    from otus.control.kubernetes.model import parse_capture_task  # noqa: PLC0415

    assert state.client is not None and state.agents is not None
    meta, raw_spec = body.get("metadata", {}), dict(body.get("spec", {}))
    if meta.get("deletionTimestamp"):
        return  # the drain handler owns a deleting task
    status: Mapping[str, Any] = body.get("status") or {}
    errors: list[str] | None = None
    selector, paused = LabelSelector(), bool(raw_spec.get("paused", False))
    try:
        cts = parse_capture_task(raw_spec)
        selector, paused = cts.node_selector, cts.paused
        cts.to_task_spec("validate")  # the task model has the last word
    except SpecError as e:
        errors = e.errors or [str(e)]
    agents = state.agents.nodes() if state.agents.synced else None
    current = list(status.get("assignedNodes") or [])
    if errors is None and agents is not None:
        eligible = assign(selector, node_labels, agents, current)
        assigned = cap(eligible, current, state.config.max_nodes)
    else:  # an invalid edit is not applied; unlisted agent pods are not absent ones
        eligible = assigned = hold(current, node_labels, agents)
    now = time.time()
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    plan = plan_status(
        spec_errors=errors,
        paused=paused,
        assigned=assigned,
        status=status,
        generation=meta.get("generation"),
        now=now,
        heartbeat_timeout=state.config.heartbeat_timeout_s,
        seen=state.silence.observe(key, status.get("nodes") or {}, now, assigned),
        matching=len(eligible),
    )
    new = dict(plan.status)
    new["conditions"] = merge_conditions(
        list(status.get("conditions") or []), new["conditions"], rfc3339(now)
    )
    changed = {k: v for k, v in new.items() if status.get(k) != v}
    if plan.node_patch:
        changed["nodes"] = plan.node_patch
    if plan.event is not None and state.last_event.get(key) != plan.event[2]:
        kopf.event(body, type=plan.event[0], reason=plan.event[1], message=plan.event[2])
        state.last_event[key] = plan.event[2]
    elif plan.event is None:
        state.last_event.pop(key, None)
    if not changed:
        return
    patch: dict[str, Any] = {"status": changed}
    if plan.node_patch and meta.get("resourceVersion"):
        # Marking Unknown must not overwrite a report that arrived since we read the object.
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{meta.get('namespace')}/{PLURAL}"
    try:
        await state.client.merge_patch(f"{path}/{meta.get('name')}/status", patch)
    except ApiError as e:
        if e.status not in (404, 409):
            raise


@kopf.on.delete(*CT, id="drain", registry=registry)
async def drain(body: kopf.Body, memo: Any, runtime: Any, **_: Any) -> None:
    """Hold the finalizer until the agents stopped and flushed, or the wait ran out."""
    state = _memo(memo)
    status: Mapping[str, Any] = body.get("status") or {}
    agents = state.agents.nodes() if state.agents is not None and state.agents.synced else None
    meta, now = body.get("metadata", {}), time.time()
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    seen = state.silence.observe(key, status.get("nodes") or {}, now)
    waiting = waiting_nodes(status, agents, now, state.config.heartbeat_timeout_s, seen)
    if not waiting:
        state.silence.forget(key)
        kopf.event(body, type="Normal", reason="Drained", message="all agents stopped and flushed")
        return
    elapsed = float(runtime.total_seconds())
    if elapsed >= state.config.delete_timeout_s:
        state.silence.forget(key)
        kopf.event(
            body,
            type="Warning",
            reason="DrainTimeout",
            message=f"released after {int(elapsed)}s; not confirmed stopped: {', '.join(waiting)}",
        )
        return
    raise kopf.TemporaryError(f"waiting for agents to stop: {', '.join(waiting)}", delay=1.0)
