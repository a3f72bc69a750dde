"""Agent Kubernetes mode: run the CaptureTasks assigned to this node through the task manager.

``otus daemon --kubernetes`` runs ``await KubernetesAgent(manager, node_name=...).run()``. It
watches CaptureTasks (one namespace or all) and, for each whose ``status.assignedNodes`` (set by
the operator) holds this node:

- creates the task (id from :func:`~otus.control.kubernetes.model.task_id_for`), updates it
  when the resulting :class:`TaskSpec` changes (spec edit, rotated Secret), deletes it when the
  task is paused, unassigned or being deleted (``deletionTimestamp``: delete flushes the
  reporters, then ``phase: Stopped`` tells the operator it may release its finalizer);
- retries a failed start with a backoff (``retry_min_s`` doubling up to ``retry_max_s``), and
  on each resync re-derives the phase from the task manager, restarting a task that failed;
- keeps a running task when its spec can no longer be built (a Secret deleted): it goes on with
  the files it has, reported ``Running`` with a message saying why; so does an edit that makes
  the spec invalid (not applied; ``paused`` still stops the task);
- reports ``observedGeneration`` once it has acted on that generation (Ready waits for it);
- after the first full list (and the manager's restore), deletes tasks restored from the state
  file whose id has the agent's form but that no CaptureTask assigned to this node claims;
- reads the Secrets named by reporters' ``secretRef``s into private files
  (:mod:`otus.control.kubernetes.secrets`) under ``runtime_dir``;
- writes only its own entry ``status.nodes.<node>`` with a JSON merge patch on ``/status`` (maps
  merge key by key, so agents never overwrite each other): at once on a phase change, otherwise
  a heartbeat at most every ``heartbeat_s`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from otus.control.kubernetes.model import (
    API_VERSION,
    PLURAL,
    CaptureTaskSpec,
    is_agent_task_id,
    node_message,
    parse_capture_task,
    task_id_for,
)
from otus.control.kubernetes.secrets import prune_secret_dirs, resolve_secrets
from otus.control.kubernetes.tasks import TaskManagerLike, phase_of, reason_of, state_of
from otus.core.aio import cancel_requested
from otus.core.errors import OtusError, SpecError, TaskError, TaskExistsError, TaskNotFoundError
from otus.core.kube import ApiError, KubeClient, KubeConfig, Reflector
from otus.core.stats import drops
from otus.pipeline.spec import TaskSpec

__all__ = ["KubernetesAgent", "TaskManagerLike", "now_rfc3339"]

log = logging.getLogger(__name__)


def now_rfc3339() -> str:
    """The current time as a ``metav1.Time``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Entry:
    """What the agent knows and last reported about one CaptureTask."""

    namespace: str
    name: str
    task_id: str
    generation: int | None = None  # of the CaptureTask as last seen
    decided: int | None = None  # the generation the reported phase is about
    spec: TaskSpec | None = None  # the task running now, if any
    failed_key: tuple[Any, ...] | None = None  # the input whose start failed
    retry_at: float = 0.0  # monotonic time to retry that start; 0: no retry pending
    retry_s: float = 0.0  # the current backoff
    warning: str = ""  # why the running task is not what the CaptureTask asks for now
    phase: str = ""
    message: str = ""
    reported_phase: str = ""
    reported_generation: int | None = None
    reported_at: float = 0.0
    secret_dir: Path | None = None
    done: bool = False  # final report written; nothing more to say
    extra: dict[str, Any] = field(default_factory=dict)


class KubernetesAgent:
    """Keeps this node's tasks in line with the CaptureTasks assigned to it."""

    def __init__(
        self,
        manager: TaskManagerLike,
        *,
        node_name: str,
        namespace: str | None = None,
        kubeconfig: str | Path | None = None,
        client: KubeClient | None = None,
        runtime_dir: Path | None = None,
        heartbeat_s: float = 10.0,
        resync_s: float = 300.0,
        retry_min_s: float = 5.0,
        retry_max_s: float = 300.0,
        goodbye: bool = True,
    ) -> None:
        if not node_name:
            raise OtusError("Kubernetes mode needs the node name (NODE_NAME from the downward API)")
        self.manager = manager
        self.node = node_name
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.client = client
        base = runtime_dir or Path(os.environ.get("OTUS_RUNTIME_DIR", "/run/otus"))
        self.secrets_dir = base / "secrets"
        self.heartbeat_s = heartbeat_s
        self.resync_s = resync_s
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.goodbye = goodbye  # on cancellation, report Stopped for each task
        self.objects: dict[str, dict[str, Any]] = {}  # key -> reduced CaptureTask
        self.entries: dict[str, _Entry] = {}
        self._by_task: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._report_now = asyncio.Event()
        self._synced = False  # first full list seen and the manager's restore done

    def _path(self, namespace: str | None = None) -> str:
        ns = namespace or self.namespace
        base = f"/apis/{API_VERSION}"
        return f"{base}/namespaces/{ns}/{PLURAL}" if ns else f"{base}/{PLURAL}"

    # -- main loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Watch and reconcile until cancelled."""
        client = self.client or KubeClient(KubeConfig.load(self.kubeconfig))
        self.client = client
        unsubscribe = self.manager.subscribe(self._on_task_change)
        reflector: Reflector[dict[str, Any]] = Reflector(
            client, self._path(), transform=self._reduce, on_change=self._on_change
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(reflector.run(), name="capturetask-watch")
                tg.create_task(self._await_sync(reflector.synced), name="capturetask-sync")
                tg.create_task(self._reconcile_loop(), name="capturetask-reconcile")
                tg.create_task(self._report_loop(), name="capturetask-status")
        finally:
            if callable(unsubscribe):  # a restarted run() must not be called back twice
                unsubscribe()
            if self.goodbye:
                await asyncio.shield(self._goodbye())
            await client.close()

    def _reduce(self, obj: dict[str, Any]) -> dict[str, Any]:
        # Only what decides this node's task: others' status writes then cause no event.
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        return {
            "namespace": meta.get("namespace", ""),
            "name": meta.get("name", ""),
            "generation": meta.get("generation"),
            "deleting": bool(meta.get("deletionTimestamp")),
            "assigned": self.node in (status.get("assignedNodes") or []),
            "spec": obj.get("spec") or {},
        }

    def _on_change(self, kind: str, key: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self._mark(key)

    def _mark(self, key: str) -> None:
        self._dirty.add(key)
        self._wake.set()

    def _on_task_change(self, info: Any) -> None:
        key = self._by_task.get(str(getattr(info, "id", "")))
        entry = self.entries.get(key) if key else None
        if entry is None or entry.spec is None:
            return
        phase = phase_of(info)
        if phase != entry.phase:
            entry.phase = phase
            entry.message = node_message(reason_of(info) or entry.warning)
            self._report_now.set()

    async def _await_sync(self, synced: asyncio.Event) -> None:
        await synced.wait()
        # Restored tasks appear in the manager as its restore begins, concurrently with us; the
        # manager has no event for that, only a flag.
        while not getattr(self.manager, "restored", True):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        self._synced = True
        self._wake.set()

    async def _reconcile_loop(self) -> None:
        next_resync = time.monotonic() + self.resync_s
        orphans_checked = False
        while True:
            retries = [e.retry_at for e in self.entries.values() if e.retry_at]
            timeout = min([next_resync, *retries]) - time.monotonic()
            await _wait(self._wake, max(0.0, timeout))
            self._wake.clear()
            now = time.monotonic()
            if now >= next_resync:
                next_resync = now + self.resync_s
                self._dirty.update(self.objects, self.entries)
            for key, e in self.entries.items():
                if e.retry_at and e.retry_at <= now:
                    e.retry_at = 0.0  # one try per backoff step, so never a hot loop
                    self._dirty.add(key)
            while self._dirty:
                key = self._dirty.pop()
                try:
                    await self._reconcile(key)
                except Exception as e:  # one bad object must not stop the others
                    if cancel_requested():
                        raise asyncio.CancelledError from e
                    log.exception("capturetask %s: reconcile failed", key)
            if self._synced and not orphans_checked:
                orphans_checked = True
                try:
                    await self._remove_orphans()
                except Exception as e:
                    if cancel_requested():
                        raise asyncio.CancelledError from e
                    log.exception("removing orphaned tasks failed")

    async def _remove_orphans(self) -> None:
        """Delete tasks of the agent's id form that no CaptureTask assigned here claims.

        They were restored from the state file, and their CaptureTask was deleted or moved to
        another node while this agent was down. Other ids (socket, Kafka) are not ours.
        """
        claimed = set(self._by_task)
        claimed.update(
            task_id_for(o["namespace"], o["name"])
            for o in self.objects.values()
            if o["assigned"] and not o["deleting"]
        )
        for info in list(self.manager.list()):
            task_id = str(getattr(info, "id", ""))
            if task_id in claimed or not is_agent_task_id(task_id, self.namespace):
                continue
            log.warning(
                "task %s: no CaptureTask assigned to %s claims it; deleting", task_id, self.node
            )
            with contextlib.suppress(TaskNotFoundError):
                await self.manager.delete(task_id)

    # -- reconcile one CaptureTask -------------------------------------------------------

    async def _reconcile(self, key: str) -> None:
        obj = self.objects.get(key)
        entry = self.entries.get(key)
        if obj is None:  # gone from the API: stop quietly, nobody to report to
            if entry is not None:
                await self._stop(entry)
                self._forget(key)
            return
        ours = obj["assigned"] and not obj["deleting"]
        if entry is None:
            task_id = task_id_for(obj["namespace"], obj["name"])
            if not ours and self._info(task_id) is None:
                return  # never ours, and nothing of it runs here (a restored task would)
            entry = _Entry(obj["namespace"], obj["name"], task_id)
            self.entries[key] = entry
            self._by_task[entry.task_id] = key
        entry.generation = obj["generation"]
        if entry.done and ours:
            entry.done = False  # assigned again
        if entry.done:
            return
        if not ours:
            await self._stop(entry)
            why = "CaptureTask deleted" if obj["deleting"] else "no longer assigned to this node"
            await self._set(entry, "Stopped", f"{why}; reporters flushed")
            entry.done = True
            return
        try:
            cts = parse_capture_task(obj["spec"])
        except SpecError as e:
            # Cut short (node_message): every node repeats it; the Ready condition has it all.
            await self._invalid(entry, obj["spec"], _why(e))
            return
        if cts.paused:
            await self._stop(entry)
            await self._set(entry, "Paused", "paused")
            return
        await self._run(entry, cts)

    async def _run(self, entry: _Entry, cts: CaptureTaskSpec) -> None:
        assert self.client is not None
        try:
            resolved, secret_dir = await resolve_secrets(
                self.client, self.secrets_dir, entry.namespace, entry.task_id, cts
            )
        except (OtusError, ApiError) as e:
            await self._cannot_build(entry, _why(e), "running with the Secret as it was")
            return
        try:
            spec = cts.to_task_spec(entry.task_id, resolved)
        except OtusError as e:
            await self._cannot_build(entry, _why(e), "running the previous spec")
            return
        entry.warning = ""
        info = self._info(entry.task_id) if entry.spec is not None else None
        if info is None:
            entry.spec = None  # not started, or removed behind our back: start it
        elif entry.spec == spec and state_of(info) != "failed":
            # Nothing to change: report what the task does (this also clears a warning).
            entry.retry_at, entry.retry_s = 0.0, 0.0
            await self._set(entry, phase_of(info), reason_of(info))
            return
        attempt = (entry.generation, spec.model_dump_json())
        if entry.failed_key == attempt and entry.retry_at:
            return  # its backoff has not run out
        try:
            if entry.spec is None:
                try:
                    info = await self.manager.create(spec)
                except TaskExistsError:  # restored from the state file: take it over
                    info = await self.manager.update(spec)
            else:
                info = await self.manager.update(spec)
        except TaskError as e:
            entry.spec = None
            entry.failed_key = attempt
            self._retry_later(entry)
            await self._set(entry, "Failed", str(e))
            return
        entry.failed_key, entry.retry_at, entry.retry_s = None, 0.0, 0.0
        entry.spec = spec
        self._swap_secrets(entry, secret_dir)
        await self._set(entry, phase_of(info), "")

    async def _invalid(self, entry: _Entry, raw: Any, error: str) -> None:
        """An invalid edit is not applied: what this agent runs goes on; ``paused`` stops it."""
        paused = isinstance(raw, Mapping) and raw.get("paused") is True
        info = self._info(entry.task_id) if entry.spec is not None and not paused else None
        if info is not None and state_of(info) not in ("failed", "stopped"):
            entry.warning = node_message(error, "; running the previous spec")
            await self._set(entry, phase_of(info), entry.warning)
            return
        await self._stop(entry)  # a restored task too: nothing says it ran the last valid spec
        await self._set(entry, *(("Paused", "paused") if paused else ("Failed", error)))

    async def _cannot_build(self, entry: _Entry, error: str, going_on: str) -> None:
        """The spec cannot be built now: a running task goes on as it is; else say why."""
        self._retry_later(entry)  # Secrets are not watched: look again soon
        info = self._info(entry.task_id) if entry.spec is not None else None
        if info is None or state_of(info) in ("failed", "stopped"):
            await self._set(entry, "Failed", error)
            return
        # A capture that runs must not be reported Failed; the message tells what is wrong.
        entry.warning = warning = node_message(error, f"; {going_on}")
        await self._set(entry, phase_of(info), warning)

    def _retry_later(self, entry: _Entry) -> None:
        entry.retry_s = min(max(2 * entry.retry_s, self.retry_min_s), self.retry_max_s)
        entry.retry_at = time.monotonic() + entry.retry_s

    def _info(self, task_id: str) -> Any | None:
        try:
            return self.manager.status(task_id)
        except TaskNotFoundError:
            return None

    async def _stop(self, entry: _Entry) -> None:
        # The manager may hold the task though we never started it: restored from its state.
        if entry.spec is not None or self._info(entry.task_id) is not None:
            entry.spec = None
            await self._set(entry, "Stopping", "", report=False)
            with contextlib.suppress(TaskNotFoundError):
                await self.manager.delete(entry.task_id)
        entry.failed_key, entry.retry_at, entry.retry_s, entry.warning = None, 0.0, 0.0, ""
        self._swap_secrets(entry, None)

    def _forget(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._by_task.pop(entry.task_id, None)

    def _swap_secrets(self, entry: _Entry, keep: Path | None) -> None:
        prune_secret_dirs(self.secrets_dir, entry.task_id, keep)
        entry.secret_dir = keep

    # -- status --------------------------------------------------------------------------

    async def _set(self, entry: _Entry, phase: str, message: str, *, report: bool = True) -> None:
        # The decision for this generation is made: from now on reports say they are about it.
        message = node_message(message)  # as reported, so an unchanged one is not rewritten
        entry.phase, entry.message, entry.decided = phase, message, entry.generation
        changed = phase != entry.reported_phase or message != entry.extra.get("message")
        if report and (changed or entry.decided != entry.reported_generation):
            await self._write(entry)

    def _report(self, entry: _Entry) -> dict[str, Any]:
        stats: Mapping[str, int] = {}
        if entry.spec is not None:
            with contextlib.suppress(TaskNotFoundError):
                stats = getattr(self.manager.status(entry.task_id), "stats", None) or {}
        return {
            "phase": entry.phase,
            "packets": int(stats.get("capture.packets", 0)),
            "sipMessages": int(stats.get("parse.messages", 0)),
            "drops": sum(drops(stats).values()),
            "lastHeartbeat": now_rfc3339(),
            "message": entry.message,  # cut to fit where it was set (_set, _on_change)
            "observedGeneration": entry.decided,
            "taskId": entry.task_id,
        }

    async def _write(self, entry: _Entry) -> None:
        assert self.client is not None
        report = self._report(entry)
        path = f"{self._path(entry.namespace)}/{entry.name}/status"
        try:
            await self.client.merge_patch(path, {"status": {"nodes": {self.node: report}}})
        except ApiError as e:
            if e.status == 404:
                return  # deleted meanwhile
            log.warning("capturetask %s/%s: status write: %s", entry.namespace, entry.name, e)
            return
        entry.reported_phase = report["phase"]
        entry.reported_generation = report["observedGeneration"]
        entry.extra["message"] = report["message"]
        entry.reported_at = time.monotonic()

    async def _report_loop(self) -> None:
        tick = min(1.0, self.heartbeat_s / 2)
        while True:
            await _wait(self._report_now, tick)
            self._report_now.clear()
            now = time.monotonic()
            for entry in list(self.entries.values()):
                if entry.done or not entry.phase:
                    continue
                changed = entry.phase != entry.reported_phase
                if changed or now - entry.reported_at >= self.heartbeat_s:
                    await self._write(entry)

    async def _goodbye(self) -> None:
        """On shutdown, tell the operator this node stopped capturing (best effort, bounded)."""
        live = [e for e in self.entries.values() if not e.done and e.phase]
        for e in live:
            e.phase, e.message = "Stopped", "agent shutting down"
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3.0):
                await asyncio.gather(*(self._write(e) for e in live))


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event`` at most ``seconds``.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow a cancellation that arrives as the
    event fires, and a loop built on it then never ends.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _why(e: BaseException) -> str:
    """What is wrong, without a SpecError's heading: a node message has little room."""
    return "; ".join(e.errors) if isinstance(e, SpecError) and e.errors else str(e)
