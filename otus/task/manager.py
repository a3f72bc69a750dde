"""The task manager: every control plane (socket, Kafka, Kubernetes) goes through this one.

API contract (keep these names and shapes):

- ``TaskState``: ``created → starting → running → stopping → stopped | failed``.
- ``TaskInfo``: ``id``, ``state``, ``reason`` (failure reason or ``None``), ``created_at``,
  ``started_at``, ``stopped_at`` (Unix seconds or ``None``), ``spec`` (the task as a JSON dict),
  ``stats`` (aggregated counters), ``workers`` (per-worker counters); ``to_dict()`` is JSON-ready.
- ``TaskManager(agent_id=..., max_tasks=..., state_file=Path | None)``:
  ``await create(spec) -> TaskInfo`` (raises TaskExistsError, TaskLimitError, TaskStartError;
  a task that fails to start leaves nothing behind), ``await delete(task_id) -> TaskInfo``
  (stops, flushes reporters, forgets; TaskNotFoundError), ``await update(spec) -> TaskInfo``
  (replace a task's spec: stop + start), ``list() -> list[TaskInfo]``,
  ``status(task_id) -> TaskInfo``, ``get(task_id) -> TaskSpec``, ``await restore()`` (start the
  tasks saved in the state file), ``await shutdown()`` (stop every task, keep the state file so a
  restart restores them), ``subscribe(callback)`` (called with a TaskInfo on each state change).

Beyond the contract: ``await run()`` is the manager's watchdog (memory limit, kill of workers
that ignore a stop), run by the daemon inside its task group; ``configure()`` applies reloaded
limits; ``kill_all()`` is the last resort of a shutdown that ran out of time.

Rules:

- ``max_tasks`` bounds the tasks not yet stopped or failed (updating a finished task starts
  it: refused like a create when full); finished tasks stay listed (with their last counters)
  until deleted, at most ``MAX_FINISHED`` of them (oldest forgotten first).
- Workers are always separate processes here (``TaskRunner(inline=False)``): a CPU-bound
  pipeline must never run on the daemon's loop.
- A task whose worker dies, or whose workers' summed RSS exceeds ``memory_limit_mb``, is
  stopped and ends ``failed`` with the reason.
- Persistence: see :mod:`otus.task.state`. A task that stopped by itself (end of a capture
  file, a limit) or failed is not restarted by a restore; one that the daemon stopped on
  shutdown is. A restored task starts a new incarnation: its counters start from zero. A task
  whose create has not succeeded is not saved. A restore starts only what is still waiting for
  it: a task deleted or updated meanwhile is left as the command left it.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from otus.core.errors import (
    ConfigError,
    SpecError,
    TaskError,
    TaskExistsError,
    TaskLimitError,
    TaskNotFoundError,
    TaskStartError,
)
from otus.core.stats import Stats
from otus.pipeline.latency import Histogram
from otus.pipeline.spec import TaskSpec, parse_task, task_data
from otus.task.info import (
    TERMINAL,
    ShuttingDownError,
    TaskEntry,
    TaskInfo,
    TaskState,
    clip_reason,
)
from otus.task.runner import TaskRunner
from otus.task.state import SavedTask, StateFile

__all__ = [
    "MAX_FINISHED",
    "TERMINAL",
    "ShuttingDownError",
    "TaskInfo",
    "TaskManager",
    "TaskState",
]

log = structlog.stdlib.get_logger("otus.task")

MAX_FINISHED = 256
_MiB = 1 << 20
_RESTORE_PARALLEL = 4


class TaskManager:
    """Creates, runs, watches, persists and stops tasks."""

    def __init__(
        self,
        *,
        agent_id: str = "",
        max_tasks: int = 16,
        state_file: Path | str | None = None,
        memory_limit_mb: int = 0,
        stop_grace_s: float = 10.0,
        watch_interval_s: float = 2.0,
    ) -> None:
        self.agent_id = agent_id
        self.max_tasks = max_tasks
        self.memory_limit_mb = memory_limit_mb
        self.stop_grace_s = stop_grace_s
        self.watch_interval_s = watch_interval_s
        self._state = StateFile(state_file) if state_file is not None else None
        self._tasks: dict[str, TaskEntry] = {}
        self._subs: list[Callable[[TaskInfo], None]] = []
        self._closing = False
        self.restored = False

    # -- configuration -------------------------------------------------------------------

    def configure(
        self, *, max_tasks: int | None = None, memory_limit_mb: int | None = None
    ) -> None:
        """Apply reloaded limits (running tasks keep running; a lower max only refuses new)."""
        if max_tasks is not None:
            self.max_tasks = max_tasks
        if memory_limit_mb is not None:
            self.memory_limit_mb = memory_limit_mb

    def subscribe(self, callback: Callable[[TaskInfo], None]) -> Callable[[], None]:
        """Call ``callback(TaskInfo)`` on each state change; returns an unsubscribe function."""
        self._subs.append(callback)

        def unsubscribe() -> None:
            if callback in self._subs:
                self._subs.remove(callback)

        return unsubscribe

    # -- lifecycle -----------------------------------------------------------------------

    async def create(self, spec: TaskSpec) -> TaskInfo:
        """Start a new task; on any failure nothing of it is left (no process, no entry)."""
        self._check_open()
        if spec.id in self._tasks:
            raise TaskExistsError(f"task {spec.id!r} already exists")
        if self._live_count() >= self.max_tasks:
            raise TaskLimitError(f"task limit reached: {self.max_tasks} tasks running")
        t = TaskEntry(spec, time.time())
        t.pending = True  # not saved until started: a shutdown may kill it mid-start
        self._tasks[spec.id] = t
        self._notify(t)
        async with t.lock:
            try:
                await self._start(t)
            except BaseException as e:
                if self._tasks.get(spec.id) is t:
                    del self._tasks[spec.id]
                t.state, t.reason = TaskState.FAILED, clip_reason(str(e) or repr(e))
                t.stopped_at = time.time()
                self._notify(t)
                log.warning("task start failed", task=spec.id, reason=t.reason)
                if isinstance(e, TaskStartError | asyncio.CancelledError) or not isinstance(
                    e, Exception
                ):
                    raise
                raise TaskStartError(f"task {spec.id}: {e}") from None
            # desired is left as is: a task that ended while starting (a short file) cleared
            # it, and a restart must not run that task again.
            t.pending = False
            self._evict_finished()
            self._save()
        log.info("task created", task=spec.id, workers=len(t.runner.workers) if t.runner else 0)
        return t.info()

    async def delete(self, task_id: str) -> TaskInfo:
        """Stop the task (its reporters flush), forget it, return its final state."""
        t = self._get(task_id)
        async with t.lock:
            if self._tasks.get(task_id) is not t:
                raise TaskNotFoundError(f"no task {task_id!r}")
            await self._stop(t, self.stop_grace_s)
            del self._tasks[task_id]
            self._save()
        info = t.info()
        log.info("task deleted", task=task_id, state=info.state.value)
        return info

    async def update(self, spec: TaskSpec) -> TaskInfo:
        """Replace a task's spec: stop the old workers (flushing), start new ones."""
        self._check_open()
        t = self._get(spec.id)
        async with t.lock:
            if self._tasks.get(spec.id) is not t:
                raise TaskNotFoundError(f"no task {spec.id!r}")
            if t.state in TERMINAL and self._live_count() >= self.max_tasks:
                # a finished task brought back counts against the limit like a new one
                raise TaskLimitError(f"task limit reached: {self.max_tasks} tasks running")
            await self._stop(t, self.stop_grace_s)
            t.spec, t.saved_stats = spec, {}
            t.desired = True
            try:
                await self._start(t)
            except BaseException as e:
                t.state, t.reason = TaskState.FAILED, clip_reason(str(e) or repr(e))
                t.stopped_at = time.time()
                self._notify(t)
                self._save()
                if isinstance(e, Exception) and not isinstance(e, TaskStartError):
                    raise TaskStartError(f"task {spec.id}: {e}") from None
                raise
            self._save()
        log.info("task updated", task=spec.id)
        return t.info()

    def list(self) -> list[TaskInfo]:
        """Every task, oldest first."""
        return [t.info() for t in sorted(self._tasks.values(), key=lambda t: t.created_at)]

    def status(self, task_id: str) -> TaskInfo:
        """One task's state and counters."""
        return self._get(task_id).info()

    def get(self, task_id: str) -> TaskSpec:
        """One task's spec."""
        return self._get(task_id).spec

    def latency(self, task_id: str) -> dict[str, Histogram]:
        """A task's per-stage latency histograms (summed over workers)."""
        r = self._get(task_id).runner
        return r.latency() if r is not None else {}

    def log_dropped(self) -> int:
        """Worker log records not forwarded (rate limit), over every task held."""
        return sum(t.runner.log_dropped() for t in self._tasks.values() if t.runner is not None)

    async def restore(self) -> builtins.list[TaskInfo]:
        """Load the state file: restart the tasks that were running, list the finished ones."""
        if self._state is None:
            self.restored = True
            return []
        try:
            saved, problems = self._state.load()
        except ConfigError as e:
            log.error("state file unreadable", error=str(e))
            saved, problems = [], []
        for p in problems:
            log.error("state file entry skipped", problem=p)
        to_start: builtins.list[TaskEntry] = []
        for s in saved:
            try:
                spec = parse_task(s.spec, "state file")
            except SpecError as e:
                log.error("saved task is no longer valid; dropped", error=str(e), spec=s.spec)
                continue
            if spec.id in self._tasks:
                continue
            t = TaskEntry(spec, s.created_at or time.time())
            if s.desired == "running":
                to_start.append(t)
            else:
                t.desired = False
                t.state = TaskState.FAILED if s.state == "failed" else TaskState.STOPPED
                t.reason, t.stopped_at, t.saved_stats = s.reason, s.stopped_at, s.stats
            self._tasks[spec.id] = t

        sem = asyncio.Semaphore(_RESTORE_PARALLEL)

        async def start_one(t: TaskEntry) -> None:
            async with sem, t.lock:
                # While it waited, a command may have deleted it (perhaps created another of
                # the same id) or updated it (it runs): starting it now would leave workers
                # that nobody tracks.
                if self._closing or self._tasks.get(t.spec.id) is not t:
                    return
                if t.state != TaskState.CREATED:
                    return
                try:
                    active = (TaskState.STARTING, TaskState.RUNNING, TaskState.STOPPING)
                    if sum(1 for x in self._tasks.values() if x.state in active) >= self.max_tasks:
                        raise TaskLimitError(f"task limit reached: {self.max_tasks} tasks running")
                    await self._start(t)
                    log.info("task restored", task=t.spec.id)
                except (TaskError, OSError) as e:
                    # _start leaves no runner behind when it fails (its workers are gone)
                    t.state, t.reason = TaskState.FAILED, clip_reason(f"restore failed: {e}")
                    t.stopped_at = time.time()
                    self._notify(t)
                    log.error("task restore failed", task=t.spec.id, reason=str(e))

        async with asyncio.TaskGroup() as tg:
            for t in to_start:
                tg.create_task(start_one(t), name=f"restore-{t.spec.id}")
        self._save()
        self.restored = True
        return [t.info() for t in self._tasks.values()]

    def begin_shutdown(self) -> None:
        """Refuse new tasks from now on; tasks ending from now on are restored by a restart."""
        self._closing = True

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop every task (reporters flush), keeping the state file so a restart restores them."""
        self._closing = True
        grace = self.stop_grace_s if grace_s is None else grace_s
        live = [t for t in self._tasks.values() if t.state not in TERMINAL]

        async def stop_one(t: TaskEntry) -> None:
            async with t.lock:
                await self._stop(t, grace)

        try:
            async with asyncio.timeout(grace + 2.0), asyncio.TaskGroup() as tg:
                for t in live:
                    tg.create_task(stop_one(t), name=f"stop-{t.spec.id}")
        except TimeoutError:
            log.error("tasks did not stop in time; killing their workers", grace_s=grace)
            self.kill_all()
        self._save()

    def kill_all(self) -> None:
        """SIGKILL every worker of every task (a shutdown out of time)."""
        for t in self._tasks.values():
            if t.runner is not None:
                t.runner.kill()

    async def run(self) -> None:
        """Watchdog, until cancelled: memory limit, and workers that ignore a stop."""
        while True:
            await asyncio.sleep(self.watch_interval_s)
            try:
                self.check()
            except Exception:  # a bug here must not end the daemon's task group
                log.exception("task watchdog failed")

    def check(self) -> None:
        """One watchdog pass."""
        now = time.monotonic()
        limit = self.memory_limit_mb * _MiB
        for t in list(self._tasks.values()):
            r = t.runner
            if r is None:
                continue
            if limit and t.state == TaskState.RUNNING:
                rss = r.rss_bytes()
                if rss > limit:
                    self._fail(
                        t,
                        f"memory limit exceeded: workers use {rss / _MiB:.0f} MiB, "
                        f"limit {self.memory_limit_mb} MiB",
                    )
            if t.kill_at is not None and now >= t.kill_at and not r.done:
                log.warning("workers ignored the stop; killing them", task=t.spec.id)
                r.kill()
                t.kill_at = None

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDownError("the daemon is shutting down")

    def _get(self, task_id: str) -> TaskEntry:
        t = self._tasks.get(task_id)
        if t is None:
            raise TaskNotFoundError(f"no task {task_id!r}")
        return t

    def _live_count(self) -> int:
        return sum(1 for t in self._tasks.values() if t.state not in TERMINAL)

    def _evict_finished(self) -> None:
        done = sorted(
            (t for t in self._tasks.values() if t.state in TERMINAL),
            key=lambda t: t.stopped_at or 0.0,
        )
        for t in done[: max(0, len(done) - MAX_FINISHED)]:
            del self._tasks[t.spec.id]
            log.info("finished task forgotten (too many kept)", task=t.spec.id)

    async def _start(self, t: TaskEntry) -> None:
        t.state, t.reason, t.pending_reason = TaskState.STARTING, None, None
        t.managed_stop, t.kill_at = False, None
        t.started_at = t.stopped_at = None
        self._notify(t)
        runner = TaskRunner(
            t.spec,
            agent_id=self.agent_id,
            inline=False,
            on_change=lambda r: self._on_runner(t, r),
        )
        t.runner = runner
        try:
            await runner.start()
        except BaseException:
            t.runner = None
            raise
        t.started_at = runner.started_at
        t.state = TaskState.RUNNING
        self._notify(t)
        self._on_runner(t, runner)  # it may have ended (or failed) while starting

    async def _stop(self, t: TaskEntry, grace: float) -> None:
        r = t.runner
        if r is None or t.state in TERMINAL:
            return
        t.managed_stop = True
        if t.state != TaskState.STOPPING:
            t.state = TaskState.STOPPING
            self._notify(t)
        await r.stop(grace)
        self._settle(t)

    def _on_runner(self, t: TaskEntry, r: TaskRunner) -> None:
        """A worker reported something: notice failures and tasks that ended by themselves."""
        if r is not t.runner or t.managed_stop:
            return
        if t.state not in (TaskState.RUNNING, TaskState.STOPPING):
            return
        err = r.error
        if err and t.state == TaskState.RUNNING:
            self._fail(t, err)
        if r.done:
            self._settle(t)
            if not self._closing:  # during a shutdown, workers may see the signal first
                t.desired = False  # ended by itself or failed: a restart does not run it again
            self._save()

    def _fail(self, t: TaskEntry, reason: str) -> None:
        if t.state != TaskState.RUNNING or t.runner is None:
            return
        t.pending_reason = clip_reason(reason)
        t.state = TaskState.STOPPING
        log.error("task failed; stopping it", task=t.spec.id, reason=t.pending_reason)
        self._notify(t)
        t.runner.request_stop()
        t.kill_at = time.monotonic() + self.stop_grace_s

    def _settle(self, t: TaskEntry) -> None:
        if t.state in TERMINAL:
            return
        r = t.runner
        reason = t.pending_reason or (r.error if r is not None else None)
        t.state = TaskState.FAILED if reason else TaskState.STOPPED
        t.reason = clip_reason(reason) if reason else None
        t.stopped_at = time.time()
        t.kill_at = None
        log.info("task ended", task=t.spec.id, state=t.state.value, reason=t.reason)
        self._notify(t)

    def _notify(self, t: TaskEntry) -> None:
        if not self._subs:
            return
        info = t.info()
        for cb in list(self._subs):
            try:
                cb(info)
            except Exception:
                log.exception("task subscriber failed", task=t.spec.id)

    def _save(self) -> None:
        if self._state is None:
            return
        records = []
        for t in sorted(self._tasks.values(), key=lambda t: t.created_at):
            if t.pending:  # a create not yet answered must not come back after a restart
                continue
            finished = not t.desired and t.state in TERMINAL
            stats: Stats = {}
            if finished:
                stats = t.runner.stats() if t.runner is not None else dict(t.saved_stats)
            records.append(
                SavedTask(
                    # With its secrets (the file is 0600): a restored task must log in again.
                    spec=task_data(t.spec),
                    desired="stopped" if finished else "running",
                    state=t.state.value,
                    reason=t.reason,
                    created_at=t.created_at,
                    stopped_at=t.stopped_at,
                    stats=stats,
                )
            )
        try:
            self._state.save(records)
        except OSError as e:
            log.error("cannot save the state file", path=str(self._state.path), error=str(e))
