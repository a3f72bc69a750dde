"""Run a task: its fanout workers as processes (or inline), with their counters aggregated."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from otus.core.errors import TaskStartError
from otus.core.stats import Stats, merge
from otus.pipeline.builder import build_pipeline
from otus.pipeline.latency import Histogram
from otus.pipeline.pipeline import STAGES, Pipeline
from otus.pipeline.spec import TaskSpec, task_data
from otus.plugins.base import PluginContext
from otus.task.worker import worker_main

__all__ = ["TaskRunner", "WorkerState", "set_worker_log_level"]

_START_TIMEOUT_S = 30.0
_HELD = "report.buffered"  # records a worker's reporters accepted and not yet delivered
_HELD_BYTES = "report.buffered_bytes"  # their bytes
_DIED = "report.drop.worker_died"
_STOP_GRACE_S = 10.0
_REAP_TRIES = 100  # x 50 ms: how long a worker that closed its pipe may take to exit
# A worker reports every second, flushing included (Pipeline's housekeeping); one silent this
# long is stopped (SIGSTOP, a debugger) or hung: its share of the capture is not being read.
STALL_S = 30.0
_WATCH_S = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SPAWN = mp.get_context("spawn")
_worker_level: Any = None  # shared with every worker: their log threshold, changed on reload


def _shared_level() -> Any:
    global _worker_level  # noqa: PLW0603 - one shared value per parent process
    if _worker_level is None:
        _worker_level = _SPAWN.Value("i", logging.getLogger().getEffectiveLevel(), lock=False)
    return _worker_level


def set_worker_log_level(level: int) -> None:
    """Set the log threshold of every worker, running or future (the daemon's reload)."""
    _shared_level().value = level


def rss_of(pid: int) -> int:
    """Resident set size of a process in bytes (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def worker_count(spec: TaskSpec) -> int:
    """How many fanout workers a task runs."""
    return int(getattr(spec.capture, "fanout_size", 1) or 1)


@dataclass(slots=True)
class WorkerState:
    """What the parent knows about one worker."""

    index: int
    process: BaseProcess | None = None
    conn: Connection | None = None
    started: bool = False
    done: bool = False
    error: str | None = None
    exitcode: int | None = None
    stats: Stats = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    log_dropped: int = 0
    heard_at: float = 0.0  # monotonic time of its last message
    final: bool = False  # it sent its last counters, reporters flushed


class TaskRunner:
    """Starts, watches and stops the workers of one task; `stats()` sums their latest counters."""

    def __init__(
        self,
        spec: TaskSpec,
        *,
        agent_id: str = "",
        inline: bool | None = None,
        on_change: Callable[[TaskRunner], None] | None = None,
    ) -> None:
        self.spec = spec
        self.agent_id = agent_id
        self.workers = [WorkerState(i) for i in range(worker_count(spec))]
        # By default one worker (a file, or a live capture with fanout_size 1) runs in this
        # process and several get one process each; the daemon asks for processes always.
        self.inline = (len(self.workers) == 1) if inline is None else inline
        self.on_change = on_change
        self._pipeline: Pipeline | None = None
        self._done = asyncio.Event()
        self._stop_requested = False
        self.started_at = 0.0
        self.stall_s = STALL_S

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has built its pipeline; clean up on failure.

        Whatever goes wrong (a worker's error, a spawn failure, a timeout, cancellation), no
        worker process is left running when this raises.
        """
        self.started_at = time.time()
        if self.inline:
            self._start_inline()
            return
        try:
            await self._start_processes()
        except BaseException:
            self.request_stop()
            await asyncio.shield(self._kill_all())
            raise

    async def _start_processes(self) -> None:
        # Only what was set: the workers' specs then tell defaults from explicit values, as
        # this process's does (the snap_len warning depends on it).
        data = task_data(self.spec)  # with its secrets: the workers need the real password
        loop = asyncio.get_running_loop()
        # The workers' callbacks run in a context of their own: the caller's (a control
        # request, its client bound for logging) would tag every later event with that client.
        quiet = contextvars.Context()
        level = _shared_level()
        n = len(self.workers)
        lock = _SPAWN.Lock() if n > 1 else None
        for w in self.workers:
            parent, child = _SPAWN.Pipe(duplex=False)
            pctx = PluginContext(self.spec.id, self.agent_id, w.index, n, lock)
            proc = _SPAWN.Process(
                target=worker_main,
                args=(data, pctx, child, level),
                name=f"otus-{self.spec.id}-{w.index}",
            )
            proc.daemon = True
            w.conn = parent
            try:
                proc.start()
            except BaseException:
                parent.close()
                w.conn = None
                w.done = True
                raise
            finally:
                child.close()
            w.process = proc
            w.heard_at = time.monotonic()
            quiet.run(loop.add_reader, parent.fileno(), self._on_readable, w)
        # The clock restarts whenever a worker comes up: spawned interpreters start one after
        # another on a busy or small machine (~0.6 s each on 2 cores), so 64 take longer than
        # any fixed bound fit for one, while a stuck start still ends in _START_TIMEOUT_S.
        deadline = time.monotonic() + _START_TIMEOUT_S
        up = 0
        while (n := sum(1 for w in self.workers if w.started or w.done)) < len(self.workers):
            if n > up:
                up, deadline = n, time.monotonic() + _START_TIMEOUT_S
            elif time.monotonic() > deadline:
                raise TaskStartError(
                    f"task {self.spec.id}: {n} of {len(self.workers)} workers started; "
                    f"none more within {_START_TIMEOUT_S:.0f} s"
                )
            await asyncio.sleep(0.02)
        errors = [w.error for w in self.workers if w.error]
        if errors:
            raise TaskStartError(f"task {self.spec.id}: {errors[0]}")
        loop.call_later(_WATCH_S, self._watch, context=quiet)

    def _start_inline(self) -> None:
        w = self.workers[0]
        ctx = PluginContext(self.spec.id, self.agent_id, 0, 1)

        def publish(p: Pipeline) -> None:
            w.stats = p.stats()
            w.latency = dict(p.latency_wire())
            self._changed()

        try:
            self._pipeline = build_pipeline(self.spec, ctx, on_stats=publish)
        except Exception as e:
            raise TaskStartError(f"task {self.spec.id}: {e}") from None
        w.started = True
        self._inline_task = asyncio.get_running_loop().create_task(self._run_inline(w))

    async def _run_inline(self, w: WorkerState) -> None:
        assert self._pipeline is not None
        try:
            w.stats = await self._pipeline.run()
            w.exitcode = 0
        except Exception as e:
            w.error = str(e) or repr(e)
            w.exitcode = 1
        w.done = True
        self._check_done()

    def _on_readable(self, w: WorkerState) -> None:
        assert w.conn is not None
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            self._worker_gone(w)
            return
        except Exception as e:  # an unpicklable message must not kill the parent's loop
            w.error = w.error or f"worker {w.index}: bad message: {e!r}"
            return
        w.heard_at = time.monotonic()
        kind = msg[0]
        if kind == "log":
            self._forward_log(w, msg[1])
            return
        if kind == "started":
            w.started = True
        elif kind in ("stats", "final"):
            w.stats, w.latency = msg[1], msg[2]
            if kind == "final":
                w.exitcode = 0
                w.final = True
        elif kind == "error":
            w.error = msg[1]
        self._changed()
        self._check_limits()

    def _forward_log(self, w: WorkerState, data: dict[str, Any]) -> None:
        """Re-emit a worker's log record in this process, tagged with the task and worker."""
        try:
            extra = {k: v for k, v in data.items() if k not in ("level", "logger", "event", "ts")}
            lost = int(extra.pop("log_dropped", 0) or 0)
            w.log_dropped += lost
            record = logging.makeLogRecord(
                {
                    "name": str(data.get("logger") or "otus.worker"),
                    "levelno": int(data.get("level", logging.INFO)),
                    "levelname": logging.getLevelName(int(data.get("level", logging.INFO))),
                    "msg": str(data.get("event", "")),
                    "created": float(data.get("ts") or time.time()),
                    "task": self.spec.id,
                    "worker": w.index,
                    **{k: v for k, v in extra.items() if k not in ("task", "worker", "msg")},
                }
            )
            record.msecs = (record.created % 1) * 1000
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        except Exception:
            w.log_dropped += 1

    def _worker_gone(self, w: WorkerState) -> None:
        assert w.conn is not None and w.process is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(w.conn.fileno())
        w.conn.close()
        self._reap(w, 0)

    def _reap(self, w: WorkerState, tries: int) -> None:
        """Collect the exit code without blocking the loop; kill a worker that lingers."""
        assert w.process is not None
        code = w.process.exitcode
        if code is None:
            if tries == _REAP_TRIES:
                with contextlib.suppress(ProcessLookupError):
                    w.process.kill()
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, self._reap, w, tries + 1)
            return
        w.exitcode = code
        if not w.final and w.stats.get(_HELD, 0):
            # Killed (or crashed) holding records its reporters had not delivered: lost, and
            # counted as such rather than left in a gauge nobody reads as a loss.
            w.stats = dict(w.stats)
            w.stats[_DIED] = w.stats.get(_DIED, 0) + w.stats[_HELD]
            w.stats[_HELD] = 0
            if _HELD_BYTES in w.stats:
                w.stats[_HELD_BYTES] = 0
        requested_stop = self._stop_requested and code == -signal.SIGTERM
        if code != 0 and w.error is None and not requested_stop:
            w.error = f"worker {w.index} exited with code {code}"
            if code < 0:
                w.error = f"worker {w.index} killed by signal {signal.Signals(-code).name}"
        w.done = True
        self._changed()
        self._check_done()

    def _watch(self) -> None:
        """Kill a worker that has said nothing for ``stall_s``: a failure, never a silent gap."""
        if self.done:
            return
        # Both loops (asyncio, uvloop) read ready pipes before running a late timer, so a
        # parent that was itself stopped sees its workers' waiting messages first.
        loop = asyncio.get_running_loop()
        loop.call_later(_WATCH_S, self._watch)
        now = time.monotonic()
        for w in self.workers:
            p = w.process
            if p is None or not w.started or w.done or w.error or now - w.heard_at < self.stall_s:
                continue
            w.error = (
                f"worker {w.index} (pid {p.pid}) stopped responding: nothing heard for "
                f"{now - w.heard_at:.0f} s (stopped or hung); killed"
            )
            with contextlib.suppress(ProcessLookupError):
                p.kill()  # its pipe then closes, and _reap collects it as for any dead worker
            self._changed()

    def _check_done(self) -> None:
        if all(w.done for w in self.workers):
            self._done.set()
            self._changed()

    def _check_limits(self) -> None:
        # Each worker enforces max_packets on its own share; across workers the parent does.
        limit = self.spec.limits.max_packets
        if limit is None or len(self.workers) == 1 or self._stop_requested:
            return
        if sum(w.stats.get("capture.packets", 0) for w in self.workers) >= limit:
            self.request_stop()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def request_stop(self) -> None:
        """Ask every worker to stop (non-blocking)."""
        self._stop_requested = True
        if self._pipeline is not None:
            self._pipeline.stop()
        for w in self.workers:
            if w.process is not None and not w.done and w.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    w.process.terminate()

    async def stop(self, grace_s: float = _STOP_GRACE_S) -> None:
        """Stop the workers, waiting for them to flush; kill what does not stop in time."""
        self.request_stop()
        try:
            await asyncio.wait_for(self._done.wait(), grace_s)
        except TimeoutError:
            await self._kill_all()

    def kill(self) -> None:
        """SIGKILL every worker still alive (non-blocking; exits are collected as usual)."""
        self._stop_requested = True
        for w in self.workers:
            if w.process is not None and w.process.exitcode is None and w.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    w.process.kill()

    async def _kill_all(self) -> None:
        self.kill()
        for _ in range(_REAP_TRIES + 20):
            if all(w.done for w in self.workers if w.process is not None):
                break
            await asyncio.sleep(0.05)

    async def wait(self) -> Stats:
        """Wait until every worker has finished; return the aggregated counters."""
        await self._done.wait()
        return self.stats()

    # -- observation ---------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Every worker has finished."""
        return self._done.is_set()

    @property
    def stop_requested(self) -> bool:
        """request_stop() (or kill()) was called."""
        return self._stop_requested

    @property
    def error(self) -> str | None:
        """The first worker failure, if any."""
        for w in self.workers:
            if w.error:
                return w.error
        return None

    def stats(self) -> Stats:
        """Counters summed over workers (latest snapshot of each; inline: read now)."""
        if self._pipeline is not None:
            # Read live: a signal handler asking while the loop is blocked (a quiet pipe, a
            # full stdout) would get the snapshot of the last second the loop ran.
            return self._pipeline.stats()
        return merge(w.stats for w in self.workers)

    def per_worker(self) -> list[Stats]:
        """Each worker's latest counters."""
        return [dict(w.stats) for w in self.workers]

    def pids(self) -> list[int]:
        """Process ids of the workers still running."""
        return [
            w.process.pid
            for w in self.workers
            if w.process is not None and w.process.pid and not w.done
        ]

    def rss_bytes(self) -> int:
        """Resident memory of the task's running workers, summed."""
        return sum(rss_of(pid) for pid in self.pids())

    def processes(self) -> list[dict[str, Any]]:
        """What the parent knows of each worker process (JSON-ready)."""
        out = []
        for w in self.workers:
            pid = w.process.pid if w.process is not None else os.getpid() if self.inline else None
            out.append(
                {
                    "index": w.index,
                    "pid": pid,
                    "alive": w.started and not w.done,
                    "exitcode": w.exitcode,
                    "error": w.error,
                    "rss_bytes": rss_of(pid) if pid and not w.done and not self.inline else 0,
                }
            )
        return out

    def log_dropped(self) -> int:
        """Worker log records not forwarded (over the rate limit)."""
        return sum(w.log_dropped for w in self.workers)

    def latency(self) -> dict[str, Histogram]:
        """Latency histograms summed over workers."""
        out = {s: Histogram() for s in STAGES}
        for w in self.workers:
            for stage, wire in w.latency.items():
                if stage in out:
                    out[stage].merge(Histogram.from_wire(wire))
        return out
