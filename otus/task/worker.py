"""A worker process: builds one pipeline from the task spec and reports its counters upward."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from otus.core.errors import OtusError
from otus.pipeline.builder import build_pipeline
from otus.pipeline.pipeline import Pipeline
from otus.pipeline.spec import parse_task
from otus.plugins.base import PluginContext

__all__ = ["Message", "run_worker", "worker_main"]

# Messages a worker sends on its pipe, as tuples:
#   ("started",)                       the pipeline is built and capturing
#   ("stats", stats, latency)          periodic snapshot (cumulative counters)
#   ("final", stats, latency)          last snapshot, after reporters are flushed
#   ("error", message)                 the pipeline could not be built or failed
Message = tuple[Any, ...]


def _send(conn: Connection, msg: Message) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):  # the parent is gone: finish quietly
        conn.send(msg)


async def run_worker(spec_data: dict[str, Any], ctx: PluginContext, conn: Connection) -> int:
    """Build and run the pipeline; return the process exit code."""
    try:
        spec = parse_task(spec_data)

        def publish(p: Pipeline) -> None:
            _send(conn, ("stats", p.stats(), p.latency_wire()))

        pipeline = build_pipeline(spec, ctx, on_stats=publish)
    except OtusError as e:
        _send(conn, ("error", str(e)))
        return 2
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pipeline.stop)
    _send(conn, ("started",))
    try:
        stats = await pipeline.run()
    except OtusError as e:
        _send(conn, ("error", str(e)))
        return 1
    except Exception as e:  # report a bug as a failed task, not a silent death
        tb = "".join(traceback.format_exception(e))
        _send(conn, ("error", f"internal error: {e!r}\n{tb}"))
        return 1
    _send(conn, ("final", stats, pipeline.latency_wire()))
    return 0


def worker_main(spec_data: dict[str, Any], ctx: PluginContext, conn: Connection) -> None:
    """Entry point of a spawned worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the loop installs its own handlers
    try:
        import uvloop  # noqa: PLC0415 - only workers and the daemon need it

        code = uvloop.run(run_worker(spec_data, ctx, conn))
    except KeyboardInterrupt:
        code = 130
    conn.close()
    sys.stdout.flush()
    os._exit(code)  # skip atexit handlers inherited from the parent's modules
