"""The daemon's logging: structlog on top of the standard library, outputs behind a queue.

- Every log call (structlog's, and plain ``logging`` from libraries and plugins) is rendered
  once, as JSON or console text, by a ``ProcessorFormatter`` on a queue handler; the line goes
  on a bounded queue (full: dropped and counted, never waited for) to a listener thread that
  writes it to the outputs: stdout, a size-rotated file (gzipped backups), Loki (its own
  bounded queue, pushed from the loop). So no output can block the event loop.
- Worker processes forward their records over their pipe (rate-limited, see
  ``otus.task.worker``); the daemon re-emits them here with ``task`` and ``worker`` fields.
- :meth:`LogRuntime.configure` is called again on reload: level, format and outputs change
  without a restart; the workers' threshold follows.
"""

from __future__ import annotations

import gzip
import logging
import logging.handlers
import os
import queue
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from otus.daemon.config import FileOutput, LogSection, LokiOutput, StdoutOutput
from otus.daemon.loki import LokiWriter
from otus.task.runner import set_worker_log_level

__all__ = ["LogRuntime", "RotatingGzipHandler"]

_QUEUE_SIZE = 10_000
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _timestamp(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """RFC 3339 UTC with microseconds; a forwarded record keeps its own creation time."""
    record = event.get("_record")
    ts = record.created if record is not None else time.time()
    event["timestamp"] = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return event


def _json(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=repr).decode()


class RotatingGzipHandler(logging.handlers.RotatingFileHandler):
    """Size-rotated file: ``otus.log`` → ``otus.log.1.gz`` → ... up to ``backupCount``."""

    def __init__(self, path: str, max_bytes: int, backups: int, compress: bool) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        if compress:
            self.namer = lambda name: name + ".gz"
            self.rotator = _gzip_rotate


def _gzip_rotate(source: str, dest: str) -> None:
    with open(source, "rb") as src, gzip.open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.remove(source)


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Renders the record, then enqueues without waiting (full queue: counted drop)."""

    def __init__(self, q: queue.Queue[Any]) -> None:
        super().__init__(q)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class LogRuntime:
    """Owns the logging configuration of the daemon process."""

    def __init__(self) -> None:
        self.loki = LokiWriter()
        self._queue: queue.Queue[Any] = queue.Queue(_QUEUE_SIZE)
        self._qh = _DroppingQueueHandler(self._queue)
        self._listener: logging.handlers.QueueListener | None = None
        self._handlers: list[logging.Handler] = []
        self.section: LogSection | None = None
        self.level = logging.INFO

    @property
    def dropped(self) -> int:
        """Records dropped because the output queue was full."""
        return self._qh.dropped

    def configure(self, section: LogSection, agent_id: str = "") -> None:
        """Apply a log section (first call, and each reload)."""
        shared: list[Any] = [
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            _timestamp,
        ]
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                *shared,
                structlog.stdlib.PositionalArgumentsFormatter(),
                structlog.processors.StackInfoRenderer(),
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
        renderer: Any
        tail: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
        if section.format == "json":
            tail.append(structlog.processors.format_exc_info)
            renderer = structlog.processors.JSONRenderer(serializer=_json)
        else:
            renderer = structlog.dev.ConsoleRenderer(colors=False)
        self._qh.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
                processors=[*tail, renderer],
            )
        )
        handlers: list[logging.Handler] = []
        loki: LokiOutput | None = None
        plain = logging.Formatter("%(message)s")
        for out in section.outputs:
            h: logging.Handler
            if isinstance(out, StdoutOutput):
                h = logging.StreamHandler(sys.stdout)
            elif isinstance(out, FileOutput):
                h = RotatingGzipHandler(
                    out.path, out.max_size_mb << 20, out.max_backups, out.compress
                )
            else:
                loki = out
                continue
            h.setFormatter(plain)
            handlers.append(h)
        self.loki.configure(loki, agent_id)
        if loki is not None:
            handlers.append(self.loki)
        old, self._listener = self._listener, None
        if old is not None:
            old.stop()  # writes what is queued with the old outputs
        for h in self._handlers:
            if h is not self.loki:
                h.close()
        self._handlers = handlers
        self._listener = logging.handlers.QueueListener(self._queue, *handlers)
        self._listener.start()
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(self._qh)
        self.level = _LEVELS[section.level]
        root.setLevel(self.level)
        set_worker_log_level(self.level)
        logging.captureWarnings(True)
        self.section = section

    def close(self) -> None:
        """Write what is queued and close the outputs (the last thing the daemon does)."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        for h in self._handlers:
            if h is not self.loki:
                h.close()
        self._handlers = []
        logging.getLogger().removeHandler(self._qh)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and ``daemon.status``."""
        return {"level": logging.getLevelName(self.level).lower(), "queue_dropped": self.dropped}
