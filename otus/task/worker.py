"""A worker process: builds one pipeline from the task spec and reports its counters upward."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from otus.core.errors import OtusError
from otus.pipeline.builder import build_pipeline
from otus.pipeline.pipeline import Pipeline
from otus.pipeline.spec import parse_task
from otus.plugins.base import PluginContext

__all__ = ["LOG_BURST", "LOG_RATE", "Message", "PipeLogHandler", "run_worker", "worker_main"]

# Messages a worker sends on its pipe, as tuples:
#   ("started",)                       the pipeline is built and capturing
#   ("stats", stats, latency)          periodic snapshot (cumulative counters)
#   ("final", stats, latency)          last snapshot, after reporters are flushed
#   ("error", message)                 the pipeline could not be built or failed
#   ("log", record)                    a log record (dict: level, logger, event, ts, extras)
Message = tuple[Any, ...]

LOG_RATE = 100.0  # log records per second a worker forwards; more are counted, not sent
LOG_BURST = 200
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 0.5
_ORPHAN_GRACE_S = 3.0  # for reporters to flush after the parent died, when the loop can run
_STD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _send(conn: Connection, msg: Message) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):  # the parent is gone: finish quietly
        conn.send(msg)


class PipeLogHandler(logging.Handler):
    """Forwards log records to the parent over the worker's pipe, rate-limited, never raising.

    The parent re-emits them through its own logging (so every output, Loki included, gets
    worker logs with ``task`` and ``worker`` fields). The threshold is a shared value the
    parent updates on reload.
    """

    def __init__(self, conn: Connection, level: Any, lock: threading.Lock) -> None:
        super().__init__(logging.DEBUG)
        self._conn = conn
        self._level = level
        self._lock = lock
        self._tokens = float(LOG_BURST)
        self._last = time.monotonic()
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record, or count it when over the rate."""
        if record.levelno < (self._level.value if self._level is not None else logging.WARNING):
            return
        now = time.monotonic()
        self._tokens = min(float(LOG_BURST), self._tokens + (now - self._last) * LOG_RATE)
        self._last = now
        if self._tokens < 1.0:
            self.dropped += 1
            return
        self._tokens -= 1.0
        try:
            data: dict[str, Any] = {
                "level": record.levelno,
                "logger": record.name,
                "event": record.getMessage(),
                "ts": record.created,
            }
            if record.exc_info:
                data["exception"] = "".join(traceback.format_exception(*record.exc_info))
            for k, v in record.__dict__.items():
                if k not in _STD_ATTRS and not k.startswith("_"):
                    data[k] = v if isinstance(v, str | int | float | bool | None) else repr(v)
            if self.dropped:
                data["log_dropped"], self.dropped = self.dropped, 0
        except Exception:
            self.dropped += 1
            return
        with self._lock:
            _send(self._conn, ("log", data))


def _setup_logging(conn: Connection, level: Any, lock: threading.Lock) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(PipeLogHandler(conn, level, lock))
    root.setLevel(logging.DEBUG)  # the handler applies the parent's (reloadable) threshold
    with contextlib.suppress(ImportError):  # structlog, when a plugin uses it, goes the same way
        import structlog  # noqa: PLC0415

        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.render_to_log_kwargs,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )


def _die_with_parent() -> None:
    """Stop when the parent dies (even by SIGKILL), and exit soon after: no worker outlives it.

    SIGTERM (PR_SET_PDEATHSIG) asks for the graceful stop, so reporters still flush what they
    hold (a Kafka producer's queue). But that stop runs on the worker's event loop, which may be
    stuck in a blocking write to a reader that stopped reading (console to a full FIFO): then
    only the watcher thread ends the process, _ORPHAN_GRACE_S after it sees the parent gone. A
    thread, not a signal handler: it runs while the main thread sits in os.write (which releases
    the GIL), and it also covers systems where prctl is unavailable.
    """
    parent = mp.parent_process()
    ppid = parent.pid if parent is not None and parent.pid else os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != ppid:  # the parent died before prctl: nobody will read our counters
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(ppid,), name="parent-watch", daemon=True).start()


def _watch_parent(ppid: int) -> None:
    # Reparenting (to init or a subreaper) is how a child learns that its parent is gone.
    while os.getppid() == ppid:
        time.sleep(_PARENT_POLL_S)
    time.sleep(_ORPHAN_GRACE_S)  # the graceful stop, if the loop can run it, exits before this
    os._exit(1)


async def run_worker(
    spec_data: dict[str, Any],
    ctx: PluginContext,
    conn: Connection,
    lock: threading.Lock | None = None,
) -> int:
    """Build and run the pipeline; return the process exit code."""
    lock = lock or threading.Lock()

    def send(msg: Message) -> None:
        with lock:
            _send(conn, msg)

    try:
        spec = parse_task(spec_data)

        def publish(p: Pipeline) -> None:
            send(("stats", p.stats(), p.latency_wire()))

        pipeline = build_pipeline(spec, ctx, on_stats=publish)
    except OtusError as e:
        send(("error", str(e)))
        return 2
    loop = asyncio.get_running_loop()
    # SIGTERM is how the parent stops a worker; SIGINT stays ignored: a terminal's Ctrl-C
    # reaches the whole process group, and the parent decides what stops and when.
    loop.add_signal_handler(signal.SIGTERM, pipeline.stop)
    send(("started",))
    try:
        stats = await pipeline.run()
    except OtusError as e:
        send(("error", str(e)))
        return 1
    except Exception as e:  # report a bug as a failed task, not a silent death
        tb = "".join(traceback.format_exception(e))
        send(("error", f"internal error: {e!r}\n{tb}"))
        return 1
    send(("final", stats, pipeline.latency_wire()))
    return 0


def worker_main(
    spec_data: dict[str, Any], ctx: PluginContext, conn: Connection, log_level: Any = None
) -> None:
    """Entry point of a spawned worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    lock = threading.Lock()
    _setup_logging(conn, log_level, lock)
    try:
        import uvloop  # noqa: PLC0415 - only workers and the daemon need it

        code = uvloop.run(run_worker(spec_data, ctx, conn, lock))
    except KeyboardInterrupt:
        code = 130
    conn.close()
    sys.stdout.flush()
    os._exit(code)  # skip atexit handlers inherited from the parent's modules
