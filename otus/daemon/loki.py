"""Push log lines to Loki: batched, retried with exponential backoff, from a bounded queue.

``emit`` (any thread) only appends to a bounded deque: when it is full the oldest line is
dropped and counted, so logging never blocks the loop or a worker. ``run()`` (the daemon's
loop) sends a batch when ``batch_size`` lines wait or ``flush_interval`` has passed, as the push
API's JSON::

    {"streams": [{"stream": {"app": "otus", "agent": "<id>", "level": "info"},
                  "values": [["<unix ns>", "<line>"], ...]}]}

A failed push (connection error, timeout, 429, 5xx) is retried after 0.5 s, 1 s, 2 s, ... (at
most 30 s) up to ``max_retries`` times, then the batch is dropped and counted; other 4xx answers
drop it at once. Nothing here logs through the Loki output itself (no feedback loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import threading
import time
from collections import deque
from typing import Any

import aiohttp
import orjson

from otus.daemon.config import LokiOutput

__all__ = ["LokiWriter"]

_BACKOFF_MIN_S = 0.5
_BACKOFF_MAX_S = 30.0
_TICK_S = 0.1


class LokiWriter(logging.Handler):
    """A logging handler feeding a bounded queue, and the coroutine that pushes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.settings: LokiOutput | None = None
        self.agent_id = ""
        self._q: deque[tuple[int, str, str]] = deque()
        self._qlock = threading.Lock()
        self._last_flush = time.monotonic()
        self.sent = 0
        self.dropped_queue = 0
        self.dropped_send = 0
        self.batches = 0
        self.retries = 0
        self.failing = False

    def configure(self, settings: LokiOutput | None, agent_id: str = "") -> None:
        """Apply (or remove, with None) the Loki output; queued lines are kept."""
        self.settings, self.agent_id = settings, agent_id

    @property
    def queued(self) -> int:
        """Lines waiting to be pushed."""
        return len(self._q)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue one rendered line; never blocks."""
        s = self.settings
        if s is None:
            return
        item = (int(record.created * 1e9), record.levelname.lower(), record.getMessage())
        with self._qlock:
            if len(self._q) >= s.queue_size:
                self._q.popleft()
                self.dropped_queue += 1
            self._q.append(item)

    def _take(self, n: int) -> list[tuple[int, str, str]]:
        with self._qlock:
            return [self._q.popleft() for _ in range(min(n, len(self._q)))]

    def body(self, batch: list[tuple[int, str, str]]) -> bytes:
        """The push API's JSON for a batch: one stream per level, values in time order."""
        s = self.settings
        base = dict(s.labels) if s is not None else {}
        if self.agent_id:
            base.setdefault("agent", self.agent_id)
        streams: dict[str, list[list[str]]] = {}
        for ts, level, line in sorted(batch, key=lambda x: x[0]):
            streams.setdefault(level, []).append([str(ts), line])
        return orjson.dumps(
            {
                "streams": [
                    {"stream": {**base, "level": level}, "values": values}
                    for level, values in streams.items()
                ]
            }
        )

    async def run(self) -> None:
        """Push until cancelled."""
        async with aiohttp.ClientSession() as session:
            while True:
                await asyncio.sleep(_TICK_S)
                s = self.settings
                if s is None or not self._q:
                    self._last_flush = time.monotonic()
                    continue
                due = time.monotonic() - self._last_flush >= s.flush_interval
                if len(self._q) >= s.batch_size or due:
                    try:
                        await self.push_batch(session, s, retries=s.max_retries)
                    except Exception as e:  # a bug here must not end the daemon
                        print(f"otus: loki: {e!r}", file=sys.stderr, flush=True)
                    self._last_flush = time.monotonic()

    async def drain(self, timeout_s: float) -> None:
        """Last push at shutdown: what is queued, one try per batch, within ``timeout_s``."""
        s = self.settings
        if s is None or not self._q:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session:
                while self._q:
                    await self.push_batch(session, s, retries=0)

    async def push_batch(
        self, session: aiohttp.ClientSession, s: LokiOutput, *, retries: int
    ) -> bool:
        """Send one batch with retries; count it as sent or dropped."""
        batch = self._take(s.batch_size)
        if not batch:
            return True
        data = self.body(batch)
        headers = {"Content-Type": "application/json"}
        if s.tenant_id:
            headers["X-Scope-OrgID"] = s.tenant_id
        delay = _BACKOFF_MIN_S
        why = ""
        for attempt in range(retries + 1):
            if attempt:
                self.retries += 1
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311
                delay = min(delay * 2, _BACKOFF_MAX_S)
            try:
                timeout = aiohttp.ClientTimeout(total=s.timeout_s)
                async with session.post(
                    s.endpoint, data=data, headers=headers, timeout=timeout
                ) as resp:
                    if 200 <= resp.status < 300:
                        self.sent += len(batch)
                        self.batches += 1
                        self._state(ok=True, why="")
                        return True
                    why = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    if resp.status != 429 and resp.status < 500:
                        break  # the request itself is wrong: retrying will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                why = f"{type(e).__name__}: {e}"
        self.dropped_send += len(batch)
        self._state(ok=False, why=why)
        return False

    def _state(self, *, ok: bool, why: str) -> None:
        # Written to stderr, not logged: a log line about Loki must not be queued for Loki.
        if ok and self.failing:
            print("otus: loki: push recovered", file=sys.stderr, flush=True)
        elif not ok and not self.failing:
            print(f"otus: loki: push failing, lines dropped: {why}", file=sys.stderr, flush=True)
        self.failing = not ok

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and ``daemon.status``."""
        return {
            "sent": self.sent,
            "batches": self.batches,
            "retries": self.retries,
            "queued": self.queued,
            "dropped_queue_full": self.dropped_queue,
            "dropped_send_failed": self.dropped_send,
        }
