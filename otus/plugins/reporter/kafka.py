"""Kafka reporter: records as JSON values keyed by Call-ID, batched per partition, bounded buffer.

Every record handed to :meth:`KafkaReporter.report` ends in exactly one bucket::

    report.kafka.records == report.kafka.sent + report.drop.{backpressure, kafka_failed,
                            kafka_too_large, kafka_closed} + report.buffered

- ``report.kafka.records``        records handed to ``report()``
- ``report.kafka.sent``           acknowledged by the broker (``acks=0``: written to the socket)
- ``report.drop.backpressure``    the buffer stayed full for ``block_ms``: the newest records (the
                                  tail of the batch that did not fit) are dropped, never older ones
- ``report.drop.kafka_failed``    a non-retriable error, or still failing after ``retries`` resends
- ``report.drop.kafka_too_large`` one record larger than ``max_request_size`` (its value) or than
                                  ``buffer_max_bytes`` (value and key: it could never fit), or
                                  refused as too large by the broker (a refused batch of several
                                  is split)
- ``report.drop.kafka_closed``    undelivered when ``close()`` gave up after ``flush_timeout_ms``,
                                  or handed to ``report()`` after ``close()``
- ``report.buffered`` (gauge)     accepted, not yet acknowledged: batching, queued or in flight
                                  (a worker's parent counts it as ``report.drop.worker_died`` if
                                  the worker is killed)
- ``report.buffered_bytes`` (gauge) the same records' values and keys, in bytes

Health counters outside that sum: ``report.kafka.failed`` (records in failed delivery attempts,
once per attempt), ``report.kafka.retried`` (records resent), ``report.kafka.connect_failed``.

While the broker is slow or gone, records wait in the buffer (at most ``buffer_max_records``, and
``buffer_max_bytes`` of values and keys) and ``report()`` blocks up to ``block_ms`` for room under
both bounds: that is the pipeline's backpressure. The idempotent producer (the default) retries
until the broker answers, under one producer id so the broker drops repeats; a buffered record is
lost only when ``close()`` gives up.

Records go straight into one open aiokafka batch per partition (Java's partitioner picks it, so a
call stays in one partition, in order); full batches are sent at once, a partial one when the
partition has nothing in flight, so what gathers during a round trip is the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from otus.core.packet import OutputPacket
from otus.core.record import record_bytes
from otus.plugins.base import PluginContext
from otus.plugins.reporter.kafka_config import (
    CODECS,
    KafkaConfig,
    check_codec,
    murmur2,
    partition_for,
    read_password,
    ssl_context,
)
from otus.plugins.reporter.kafka_logs import quiet_aiokafka
from otus.plugins.reporter.kafka_producer import (
    NO_HEADERS,
    Batch,
    Lane,
    metadata_error,
    rebuild,
    records_of,
    retriable,
    split,
    too_large,
)
from otus.plugins.reporter.kafka_supervisor import STOP_S, Producers, Tasks

__all__ = ["KafkaConfig", "KafkaReporter", "murmur2", "partition_for"]

log = logging.getLogger(__name__)

_KEYS_MAX = 65_536  # cached Call-ID hashes; calls end and their Call-IDs go stale


class KafkaReporter:
    """Sends each output packet's record to Kafka (see the module docstring for the policy)."""

    Config = KafkaConfig

    def __init__(self, config: KafkaConfig, ctx: PluginContext) -> None:
        check_codec(config.compression)
        quiet_aiokafka()
        from aiokafka.producer.message_accumulator import BatchBuilder  # noqa: PLC0415

        self.config = config
        self._ctx = ctx
        self._tasks = Tasks()
        self._spawn = self._tasks.spawn
        idem = config.enable_idempotence
        self._producers = Producers(
            config,
            ctx,
            idempotent=config.acks == "all" if idem is None else idem,
            ssl_ctx=ssl_context(config),
            password=read_password(config),
            spawn=self._spawn,
            gone=self._settle_generation,
        )
        self._new_builder = partial(BatchBuilder, config.batch_size, CODECS[config.compression])
        self._max = config.buffer_max_records
        self._max_bytes = config.buffer_max_bytes
        self._linger = config.linger_ms / 1000
        self._backoff = config.retry_backoff_ms / 1000
        self._headers: list[tuple[str, bytes]] = NO_HEADERS
        if config.headers:
            self._headers = [("task_id", ctx.task_id.encode()), ("agent_id", ctx.agent_id.encode())]
        # counters: see the module docstring
        self._records = self._sent = self._failed = self._retried = 0
        self._drop_backpressure = self._drop_failed = self._drop_too_large = self._drop_closed = 0
        self._buffered = self._buffered_bytes = 0
        self._keys: dict[str, tuple[bytes | None, int]] = {}  # Call-ID -> (key, positive murmur2)
        self._lanes: dict[str, list[Lane]] = {}
        self._staged: dict[str, list[tuple[bytes | None, bytes]]] = {}  # partitions unknown yet
        self._inflight: set[Batch] = set()
        self._rr = 0
        self._room = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._started = self._closed = self._flushing = False
        self._split_warned = False
        self._full_logged = float("-inf")

    # -- the pipeline's side ---------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; records wait in the buffer until Kafka answers."""
        if not self._started:
            self._started = True
            self._spawn(self._producers.run())

    async def report(self, batch: list[OutputPacket]) -> None:
        """Buffer the batch's records; wait up to ``block_ms`` for room, then drop the rest."""
        n = len(batch)
        if not n:
            return
        self._records += n
        if self._closed:
            self._drop_closed += n
            return
        if not self._started:
            await self.start()
        done = self._accept(batch)
        if done == n:
            await asyncio.sleep(0)  # let the lanes ship while a busy caller keeps reporting
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.block_ms / 1000
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closed:
                break
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), remaining)
            if self._closed:
                break
            done += self._accept(batch[done:])
            if done == n:
                return
        self._drop_backpressure += n - done
        if loop.time() >= self._full_logged + 10.0:  # an outage drops at every batch: 1 line/10 s
            self._full_logged = loop.time()
            log.warning(
                "kafka: buffer full (%d records, %d bytes) for block_ms: %d records dropped so "
                "far (report.drop.backpressure)",
                *(self._buffered, self._buffered_bytes, self._drop_backpressure),
            )

    async def flush(self) -> None:
        """Wait until everything buffered is acknowledged or dropped, at most flush_timeout_ms."""
        if self._buffered == 0:
            return
        await self.start()
        self._flushing = True  # no lingering now
        for lanes in self._lanes.values():
            for lane in lanes:
                lane.wake.set()
        try:
            await asyncio.wait_for(self._drained.wait(), self.config.flush_timeout_ms / 1000)
        except TimeoutError:
            log.warning("kafka: flush timed out with %d records undelivered", self._buffered)
        finally:
            self._flushing = False

    async def close(self) -> None:
        """Flush, stop the producer; what is still undelivered counts as dropped."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        await self._tasks.cancel_all()
        # After a flush that gave up, aiokafka's stop() would wait for the same batches again,
        # past flush_timeout_ms: a daemon stopping the task kills it first, counters and all.
        await self._producers.stop_all(STOP_S if self._buffered == 0 else 0.0)
        self._inflight.clear()
        if self._buffered:
            log.warning("kafka: closing with %d records undelivered", self._buffered)
            self._drop_closed += self._buffered
            self._buffered = self._buffered_bytes = 0
        self._lanes.clear()
        self._staged.clear()

    def stats(self) -> Mapping[str, int]:
        """Counters and the buffered gauges (names in the module docstring)."""
        return {
            "report.kafka.records": self._records,
            "report.kafka.sent": self._sent,
            "report.kafka.failed": self._failed,
            "report.kafka.retried": self._retried,
            "report.kafka.connect_failed": self._producers.connect_failed,
            "report.drop.backpressure": self._drop_backpressure,
            "report.drop.kafka_failed": self._drop_failed,
            "report.drop.kafka_too_large": self._drop_too_large,
            "report.drop.kafka_closed": self._drop_closed,
            "report.buffered": self._buffered,
            "report.buffered_bytes": self._buffered_bytes,
        }

    # -- the hot path ----------------------------------------------------------------------

    def _accept(self, batch: list[OutputPacket]) -> int:
        """Serialize records into their partitions' open batches (or stage them by topic) while
        both bounds have room; return how many of the batch were taken (or dropped as too large).
        """
        task_id, agent_id = self._ctx.task_id, self._ctx.agent_id
        fixed_topic, prefix = self.config.topic, self.config.topic_prefix
        limit = self.config.max_request_size
        room = self._max - self._buffered
        byte_room = bytes_free = self._max_bytes - self._buffered_bytes
        keys, headers, new_builder = self._keys, self._headers, self._new_builder
        encode = record_bytes
        ts, now = int(time.time() * 1000), time.monotonic()  # one clock read per call
        ptype: str | None = None
        lanes: list[Lane] = []
        staged: list[tuple[bytes | None, bytes]] | None = None
        touched: list[list[Lane]] = []
        nparts = sticky = accepted = too_large = 0
        self._rr += 1
        for out in batch:
            if accepted >= room:
                break
            if out.payload_type != ptype:
                ptype = out.payload_type
                topic = fixed_topic or f"{prefix}-{ptype}"
                known = self._lanes.get(topic)
                if known is None:
                    staged = self._stage(topic)
                else:
                    staged = None
                    lanes = known
                    touched.append(lanes)
                    nparts = len(lanes)
                    sticky = self._rr % nparts  # keyless records: one partition per call
            value = encode(out, task_id, agent_id)
            if len(value) > limit:
                too_large += 1
                continue
            cid = out.payload.get("call_id")
            kh = keys.get(cid) if cid.__class__ is str else None
            if kh is None:
                kh = self._key(cid)
            key = kh[0]
            size = len(value) if key is None else len(value) + len(key)  # record_size()
            if size > byte_room:
                if size <= self._max_bytes:
                    break  # it waits for room, or report() drops it with the rest of the batch
                too_large += 1  # it could never fit: too large, as in Java's producer
                continue
            byte_room -= size
            accepted += 1
            if staged is not None:
                staged.append((key, value))
                continue
            lane = lanes[sticky] if key is None else lanes[kh[1] % nparts]
            r = lane.records
            if r is None:
                lane.builder = b = new_builder()
                lane.records = r = records_of(b)
                lane.since = now
            # The record builder itself, positionally: aiokafka's wrapper costs as much again.
            if r.append(lane.count, ts, key, value, headers) is None:
                lane.seal()
                lane.builder = b = new_builder()
                lane.records = r = records_of(b)
                lane.since = now
                # An empty batch takes any record: oversized ones were dropped above.
                r.append(0, ts, key, value, headers)
            lane.count += 1
            lane.nbytes += size
        self._drop_too_large += too_large
        if accepted:
            self._buffered += accepted
            self._buffered_bytes += bytes_free - byte_room
            self._drained.clear()
        for ls in touched:
            for lane in ls:
                if lane.count or lane.batches:
                    lane.wake.set()
        return accepted + too_large

    def _key(self, cid: object) -> tuple[bytes | None, int]:
        """The Kafka key of a Call-ID and its hash, cached: a call sends several messages."""
        if not isinstance(cid, str) or not cid:
            return (None, 0)
        if len(self._keys) >= _KEYS_MAX:
            self._keys.clear()
        key = cid.encode()
        kh = self._keys[cid] = (key, murmur2(key) & 0x7FFFFFFF)
        return kh

    def _stage(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        """Hold a new topic's records until its partition count is known."""
        staged = self._staged.get(topic)
        if staged is None:
            staged = self._staged[topic] = []
            self._spawn(self._resolve(topic))
        return staged

    # -- producers -------------------------------------------------------------------------

    def _settle_generation(self, gen: int) -> None:
        """A producer is gone: settle its batches now (unanswered ones fail, to be resent)."""
        for batch in [b for b in self._inflight if b.gen == gen]:
            if batch.future is not None:
                self._settle(batch, batch.future)

    def _pause(self, tries: int) -> float:
        """Exponential backoff from retry_backoff_ms up to reconnect_backoff_max_ms."""
        return float(
            min(self._backoff * 2 ** min(tries, 16), self.config.reconnect_backoff_max_ms / 1000)
        )

    # -- topics and lanes ------------------------------------------------------------------

    async def _resolve(self, topic: str) -> None:
        """Learn a topic's partition count (auto-creating it if the broker does), then route."""
        tries = 0
        while True:
            producer = self._producers.current
            if producer is None:
                await self._producers.ready.wait()
                continue
            try:
                parts = await producer.partitions_for(topic)
            except Exception as e:
                parts, tries = None, tries + 1
                if tries == 1 or tries % 20 == 0:
                    log.warning("kafka: no metadata for topic %s (%d tries): %r", topic, tries, e)
            if parts:
                break
            await asyncio.sleep(self._pause(tries))
        lanes = self._grow([], topic, len(parts))
        ts, now, sticky = int(time.time() * 1000), time.monotonic(), self._rr % len(lanes)
        for key, value in self._staged.pop(topic, []):
            lane = lanes[sticky if key is None else partition_for(key, len(lanes))]
            lane.add(self._new_builder, now, (ts, key, value, self._headers))
        self._lanes[topic] = lanes
        for lane in lanes:
            lane.wake.set()

    def _grow(self, lanes: list[Lane], topic: str, n: int) -> list[Lane]:
        """Add lanes (and their tasks) up to ``n`` partitions; Kafka never shrinks a topic."""
        while len(lanes) < n:
            lane = Lane(topic, len(lanes))
            lanes.append(lane)
            lane.task = self._spawn(self._run_lane(lane))
        return lanes

    async def _run_lane(self, lane: Lane) -> None:
        """Send the lane's batches in order: full ones at once, the open one when idle."""
        from aiokafka.errors import KafkaTimeoutError, ProducerClosed  # noqa: PLC0415

        errors = 0
        while True:
            if not lane.batches:
                if not lane.count or lane.inflight:
                    lane.wake.clear()
                    await lane.wake.wait()
                    continue
                wait = lane.since + self._linger - time.monotonic()
                if wait > 0 and not self._flushing:
                    await asyncio.sleep(wait)  # let a lone record gather company
                    continue
            producers = self._producers
            producer, gen = producers.current, producers.gen
            if producer is None:
                await producers.ready.wait()
                continue
            if not lane.batches:
                lane.seal()
            batch = lane.batches[0]
            if batch.used:
                batch.builder, batch.used = rebuild(batch.builder, self._new_builder), False
            try:
                future = await producer.send_batch(
                    batch.builder, lane.topic, partition=lane.partition
                )
            except KafkaTimeoutError:
                continue  # aiokafka still holds this partition's previous batch: the broker is slow
            except ProducerClosed:
                if producer is producers.current:  # not replaced yet: do not spin
                    await asyncio.sleep(self._backoff)
                continue  # replaced while we waited: the next turn takes the new one
            except Exception as e:
                errors += 1
                if errors == 1 or errors % 20 == 0:
                    log.warning("kafka: cannot queue for %s-%d: %r", lane.topic, lane.partition, e)
                if not metadata_error(e):
                    producers.request_reset(gen)  # a producer whose sender died refuses everything
                await asyncio.sleep(self._pause(errors))
                continue
            errors = 0
            # Not popleft(): a failed batch may have been put back in front while we waited.
            lane.batches.remove(batch)
            batch.used = True
            batch.attempts += 1
            batch.token += 1
            batch.gen = gen
            batch.future = future
            lane.inflight += 1
            self._inflight.add(batch)
            future.add_done_callback(partial(self._on_done, batch, batch.token))
            if gen not in producers.live:
                # Queued into a producer stopped while we waited: its sender is gone, resend.
                self._settle(batch, future)
            if lane.partition == 0:
                await self._refresh_partitions(producer, lane.topic)

    async def _refresh_partitions(self, producer: Any, topic: str) -> None:
        """Grow a topic's lanes when metadata shows new partitions (keys then move, as in Java)."""
        try:
            parts = await producer.partitions_for(topic)
        except Exception:
            return
        lanes = self._lanes.get(topic)
        if lanes is not None and len(parts) > len(lanes):
            log.info("kafka: topic %s grew to %d partitions", topic, len(parts))
            self._grow(lanes, topic, len(parts))

    # -- outcomes --------------------------------------------------------------------------

    def _on_done(self, batch: Batch, token: int, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # read, even when stale: else asyncio logs it as never retrieved
        if token == batch.token:
            self._settle(batch, future)

    def _settle(self, batch: Batch, future: asyncio.Future[Any]) -> None:
        """Count an acknowledged batch, or put a failed one back in its lane (or drop it)."""
        batch.token += 1
        self._inflight.discard(batch)
        lane, n = batch.lane, batch.count
        lane.inflight -= 1
        lane.wake.set()  # its open batch may go now
        if future.done() and not future.cancelled() and future.exception() is None:
            self._sent += n
            self._release(batch)
            return
        if future.done() and not future.cancelled():
            exc: BaseException = future.exception() or RuntimeError("no result")
        else:
            from aiokafka.errors import ProducerClosed  # noqa: PLC0415

            exc = ProducerClosed()  # retired before the broker answered: resend
        self._failed += n
        if self._producers.idempotent:
            # aiokafka leaves a sequence gap behind a failed batch: only a new producer id heals it.
            self._producers.request_reset(batch.gen)
        if self._closed:
            self._drop_closed += n
            self._release(batch)
            return
        if too_large(exc):
            self._split(batch, exc)
            return
        if batch.attempts > self.config.retries or not retriable(exc):
            log.warning(
                "kafka: dropping %d records for %s-%d after %d attempt(s): %r",
                *(n, lane.topic, lane.partition, batch.attempts, exc),
            )
            self._drop_failed += n
            self._release(batch)
            return
        self._retried += n
        log.info("kafka: resending %d records for %s-%d: %r", n, lane.topic, lane.partition, exc)
        lane.put_back(batch)

    def _split(self, batch: Batch, exc: BaseException) -> None:
        """Resend a batch refused as too large in two halves (as Java does); drop a lone record."""
        lane, n = batch.lane, batch.count
        where = f"{lane.topic}-{lane.partition}"
        if n == 1:
            log.warning(
                "kafka: %s refuses a record as too large (max.message.bytes): %r", where, exc
            )
            self._drop_too_large += 1
            self._release(batch)
            return
        level = logging.INFO if self._split_warned else logging.WARNING  # once per reporter
        log.log(level, "kafka: %s refuses %d records as too large: splitting the batch", where, n)
        self._split_warned = True
        self._retried += n
        for half in split(batch, self._new_builder):
            lane.put_back(half)

    def _release(self, batch: Batch) -> None:
        """Give a batch's records and bytes back to the buffer: delivered or dropped."""
        self._buffered -= batch.count
        self._buffered_bytes -= batch.nbytes
        self._room.set()
        if self._buffered == 0:
            self._drained.set()
