"""The Kafka reporter's background work: its producers (replaced on request) and its tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from otus.core.aio import cancel_requested
from otus.plugins.base import PluginContext
from otus.plugins.reporter.kafka_config import KafkaConfig
from otus.plugins.reporter.kafka_producer import force_close, new_producer

__all__ = ["STOP_S", "Producers", "Tasks"]

log = logging.getLogger("otus.plugins.reporter.kafka")  # the reporter's logger: one name in logs

STOP_S = 5.0  # how long a close lets a producer stop before tearing it down

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Producers:
    """Keeps ``current`` started; each producer has a generation, and ``gone(gen)`` is called
    once a generation has stopped, so the reporter can settle the batches it held."""

    def __init__(
        self,
        config: KafkaConfig,
        ctx: PluginContext,
        *,
        idempotent: bool,
        ssl_ctx: ssl.SSLContext | None,
        password: str | None,
        spawn: Spawn,
        gone: Callable[[int], None],
    ) -> None:
        self._config = config
        self._ctx = ctx
        self._ssl = ssl_ctx
        self._password = password
        self._spawn = spawn
        self._gone = gone
        self.idempotent = idempotent
        self.current: Any = None
        self.gen = 0  # the current producer's generation; batches remember theirs
        self.live: dict[int, Any] = {}  # generations not fully stopped: current and retiring
        self.connect_failed = 0
        self.ready = asyncio.Event()
        self._reset = asyncio.Event()

    async def run(self) -> None:
        """Keep one started producer; replace it when asked (a failed idempotent batch)."""
        from aiokafka.errors import IncompatibleBrokerVersion, UnsupportedVersionError  # noqa: PLC0415

        cfg = self._config
        first = backoff = cfg.retry_backoff_ms / 1000
        cap = cfg.reconnect_backoff_max_ms / 1000
        while True:
            producer = new_producer(
                cfg,
                self._ctx,
                idempotent=self.idempotent,
                ssl_ctx=self._ssl,
                password=self._password,
            )
            try:
                await asyncio.wait_for(producer.start(), cfg.request_timeout_ms / 1000)
            except (IncompatibleBrokerVersion, UnsupportedVersionError) as e:
                await self.retire(producer, 0, STOP_S)
                if cancel_requested():
                    raise asyncio.CancelledError from e
                if cfg.enable_idempotence is None and self.idempotent:
                    log.warning("kafka: broker lacks idempotent producing (%s): off", e)
                    self.idempotent = False
                    continue
                self.connect_failed += 1
                log.error("kafka: broker refuses this producer: %r", e)
                backoff = cap
                await asyncio.sleep(backoff)
                continue
            except Exception as e:
                await self.retire(producer, 0, STOP_S)
                # On Python 3.11 wait_for() can swallow the cancel of close() as the connect
                # fails, raising the failure instead: retrying would outlive the reporter.
                if cancel_requested():
                    raise asyncio.CancelledError from e
                self.connect_failed += 1
                if self.connect_failed == 1 or self.connect_failed % 50 == 0:
                    brokers = ",".join(cfg.brokers)
                    log.warning(
                        "kafka: cannot reach %s (%d tries): %r", brokers, self.connect_failed, e
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, cap)
                continue
            except BaseException:
                await force_close(producer)
                raise
            backoff = first
            self.gen += 1
            gen = self.gen
            self.live[gen] = producer
            self.current = producer
            self._reset.clear()
            self.ready.set()
            log.info("kafka: producer %d connected to %s", gen, ",".join(cfg.brokers))
            await self._reset.wait()
            log.info("kafka: replacing producer %d", gen)
            self.ready.clear()
            self.current = None
            # The old producer keeps retrying what it holds under its producer id, so the broker
            # drops duplicates, while a new one takes the next batches. Forcing it closed could
            # send twice a batch the broker wrote but never acknowledged.
            self._spawn(self.retire(producer, gen, None))

    def request_reset(self, gen: int) -> None:
        """Replace the producer of generation ``gen`` (if it is still the current one)."""
        if gen == self.gen and self.current is not None:
            self._reset.set()

    async def retire(self, producer: Any, gen: int, limit_s: float | None) -> None:
        """Stop a producer (forcibly after ``limit_s``); then its generation is gone."""
        try:
            await asyncio.wait_for(producer.stop(), limit_s)
        except Exception as e:
            log.warning("kafka: producer %d did not stop cleanly: %r", gen, e)
            await force_close(producer)
        self._end(gen)

    async def stop_all(self, limit_s: float = STOP_S) -> None:
        """At close: stop every producer within ``limit_s`` (flush already waited), tear down."""
        self.current = None
        await asyncio.gather(*(self._stop(g, p, limit_s) for g, p in list(self.live.items())))

    async def _stop(self, gen: int, producer: Any, limit_s: float) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), limit_s)
        await force_close(producer)  # a retiring one was cancelled mid-stop: finish the job
        self._end(gen)

    def _end(self, gen: int) -> None:
        self.live.pop(gen, None)
        self._gone(gen)


class Tasks:
    """The reporter's background tasks: a failure is logged, and close() cancels them all."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as one of the reporter's tasks."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("kafka: reporter task failed", exc_info=task.exception())

    async def cancel_all(self) -> None:
        """Cancel every task; wait a bounded time, cancelling again what survives."""
        # A cancel can be lost inside aiokafka or wait_for() (Python 3.11): ask again.
        for _ in range(3):
            tasks = [t for t in self._tasks if not t.done()]
            if not tasks:
                return
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=STOP_S)
        left = [t for t in self._tasks if not t.done()]
        if left:
            log.warning("kafka: %d reporter task(s) did not stop; abandoning them", len(left))
