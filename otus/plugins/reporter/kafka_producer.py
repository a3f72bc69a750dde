"""The Kafka reporter's aiokafka glue: batches and lanes, making producers, resending, tearing down.

Every use of aiokafka internals lives here, each with the reason it is needed, so an aiokafka
upgrade has one place to check (the tests exercise each path against a real broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

from otus.plugins.base import PluginContext
from otus.plugins.reporter.kafka_config import KafkaConfig

__all__ = [
    "NO_HEADERS",
    "Batch",
    "Lane",
    "force_close",
    "metadata_error",
    "new_producer",
    "rebuild",
    "record_size",
    "records_of",
    "retriable",
    "set_record_count",
    "split",
    "too_large",
]

# Record headers when there are none: the record builder wants a list (it only reads it).
NO_HEADERS: list[tuple[str, bytes]] = []


def new_producer(
    cfg: KafkaConfig,
    ctx: PluginContext,
    *,
    idempotent: bool,
    ssl_ctx: ssl.SSLContext | None,
    password: str | None,
) -> Any:
    """An unstarted AIOKafkaProducer for ``cfg`` (batches come from the reporter's lanes)."""
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415 - aiokafka loads only when Kafka is used

    producer = AIOKafkaProducer(
        bootstrap_servers=list(cfg.brokers),
        client_id=cfg.client_id or f"otus-{ctx.agent_id or 'agent'}-{ctx.task_id}",
        acks="all" if cfg.acks == "all" else int(cfg.acks),
        enable_idempotence=idempotent,
        compression_type=None if cfg.compression == "none" else cfg.compression,
        max_batch_size=cfg.batch_size,
        max_request_size=cfg.max_request_size,
        retry_backoff_ms=cfg.retry_backoff_ms,
        request_timeout_ms=cfg.request_timeout_ms,
        metadata_max_age_ms=cfg.metadata_max_age_ms,
        security_protocol=cfg.security_protocol,
        ssl_context=ssl_ctx,
        sasl_mechanism=cfg.sasl_mechanism or "PLAIN",
        sasl_plain_username=cfg.username,
        sasl_plain_password=password,
    )
    if idempotent:
        # aiokafka fails a batch whose partition has had no leader for request_timeout_ms, as
        # during a broker restart, though an earlier attempt may have been written: resending
        # it would duplicate. Idempotent batches instead retry until the leader is back (same
        # producer id and sequence: the broker drops repeats); the reporter's buffer bounds them.
        accumulator = getattr(producer, "_message_accumulator", None)
        if accumulator is not None and hasattr(accumulator, "_batch_ttl"):
            accumulator._batch_ttl = float("inf")
    return producer


def records_of(builder: Any) -> Any:
    """The record builder inside an aiokafka BatchBuilder, to append to without the wrapper.

    ``BatchBuilder.append`` is a Python method taking keywords, which then calls this C method;
    calling it directly, positionally (``append(offset, timestamp, key, value, headers)``, the
    offset counted by the caller), halves the cost of a record. :func:`set_record_count` must
    follow before the batch is handed to aiokafka.
    """
    return builder._builder


def set_record_count(builder: Any, count: int) -> None:
    """Tell the wrapper how many records went in (aiokafka sizes sequence numbers by it)."""
    builder._relative_offset = count


def rebuild(old: Any, new_builder: Callable[[], Any]) -> Any:
    """A fresh builder holding a sent batch's records (aiokafka's cannot be submitted twice)."""
    from aiokafka.record.default_records import DefaultRecordBatch  # noqa: PLC0415

    builder = new_builder()
    # _build() returns the bytes aiokafka built and sent; reading them back costs nothing on
    # the hot path, where keeping every record twice until acknowledged would.
    for r in DefaultRecordBatch(bytes(old._build())):
        # The same records in the same order fit the same batch size.
        builder.append(timestamp=r.timestamp, key=r.key, value=r.value, headers=r.headers)
    return builder


def split(batch: Batch, new_builder: Callable[[], Any]) -> list[Batch]:
    """Two batches holding the first and the second half of a sent batch's records, in order."""
    from aiokafka.record.default_records import DefaultRecordBatch  # noqa: PLC0415

    records = list(DefaultRecordBatch(bytes(batch.builder._build())))
    half = len(records) // 2
    first = sum(record_size(r.key, r.value) for r in records[:half])
    out = []
    # The second half holds the rest of the batch's bytes: what was counted in is counted out.
    sizes = (first, batch.nbytes - first)
    for i, part in enumerate((records[:half], records[half:])):
        builder = new_builder()
        for r in part:  # a part of what fitted one batch fits one
            builder.append(timestamp=r.timestamp, key=r.key, value=r.value, headers=r.headers)
        out.append(Batch(batch.lane, builder, len(part), sizes[i], (*batch.seq, i)))
    return out


def record_size(key: bytes | None, value: bytes) -> int:
    """What a record weighs against ``buffer_max_bytes``: its value and key."""
    return len(value) if key is None else len(value) + len(key)


def too_large(exc: BaseException) -> bool:
    """The broker refused the batch for its size (``message.max.bytes``, ``max.message.bytes``)."""
    from aiokafka import errors as e  # noqa: PLC0415

    return isinstance(exc, (e.MessageSizeTooLargeError, e.RecordListTooLargeError))


def retriable(exc: BaseException) -> bool:
    """Whether resending can help: Kafka says so, or a fresh producer clears the error."""
    from aiokafka import errors as e  # noqa: PLC0415

    fresh = (
        e.KafkaTimeoutError,
        e.OutOfOrderSequenceNumber,
        e.InvalidProducerEpoch,
        e.ProducerFenced,
        e.ProducerClosed,
    )
    if getattr(exc, "retriable", False) or isinstance(exc, fresh):
        return True
    return type(exc) is e.KafkaError  # the sender task died: a new producer starts afresh


def metadata_error(exc: BaseException) -> bool:
    """A topic or partition problem, which a new producer would not fix."""
    from aiokafka import errors as e  # noqa: PLC0415

    # AssertionError: send_batch() asserts the partition is in the metadata.
    topic_errors = (e.UnknownTopicOrPartitionError, e.TopicAuthorizationFailedError)
    return isinstance(exc, (AssertionError, *topic_errors))


async def force_close(producer: Any) -> None:
    """Tear down a producer whose stop() hung (broker gone): fail its batches, cancel its sender."""
    from aiokafka.errors import ProducerClosed  # noqa: PLC0415

    # aiokafka has no public way to abandon undeliverable batches: its stop() waits for them.
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        pending = getattr(accumulator, "_pending_batches", None)
        if isinstance(pending, set):
            # aiokafka removes a batch from its pending set when the batch fails and again when
            # a request in flight re-queues it, and a batch re-queued earlier is in none: each
            # is a KeyError, in a callback or in the cancelled sender (a traceback on stderr).
            accumulator._pending_batches = pending = _Pending(pending)
            for queued in accumulator._batches.values():
                pending.update(queued)
            for batch in pending:
                # Nobody awaits a batch's drain waiter (send_batch): failed, it would be logged
                # as "never retrieved"; cancelled, failing skips it.
                batch._drain_waiter.cancel()
        accumulator.fail_all(ProducerClosed())
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.client.close(), 5.0)
    # Torn down by hand: what stop() would have marked (else __del__ warns "Unclosed").
    producer._closed = True


class _Pending(set[Any]):
    """aiokafka's set of batches in flight, tolerant of a batch removed twice (see force_close)."""

    def remove(self, element: Any) -> None:
        """Remove ``element`` if present."""
        self.discard(element)


class Batch:
    """A sealed batch for one partition, kept until acknowledged so it can be resent."""

    __slots__ = (
        "attempts",
        "builder",
        "count",
        "future",
        "gen",
        "lane",
        "nbytes",
        "seq",
        "token",
        "used",
    )

    def __init__(
        self, lane: Lane, builder: Any, count: int, nbytes: int, seq: tuple[int, ...]
    ) -> None:
        self.lane = lane
        self.builder = builder  # aiokafka BatchBuilder
        self.count = count
        self.nbytes = nbytes  # its records' record_size(), released with its count
        # Order within the lane, kept when a failed batch is put back; a split batch's halves
        # extend it ((7,) -> (7, 0), (7, 1)) so they sort between it and its successor.
        self.seq = seq
        self.used = False  # submitted once: a resend needs a new builder
        self.attempts = 0
        self.token = 0  # bumped on every submit and settle: stale callbacks are ignored
        self.gen = 0
        self.future: asyncio.Future[Any] | None = None


class Lane:
    """One topic-partition: the open batch, sealed batches in order, and the task sending them."""

    __slots__ = (
        "batches",
        "builder",
        "count",
        "inflight",
        "nbytes",
        "partition",
        "records",
        "seq",
        "since",
        "task",
        "topic",
        "wake",
    )

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.builder: Any = None  # the open batch
        self.records: Any = None  # its record builder, appended to directly (records_of)
        self.count = 0  # records in it
        self.nbytes = 0  # their record_size()
        self.since = 0.0  # monotonic time of its first record (linger)
        self.batches: deque[Batch] = deque()
        self.inflight = 0  # batches handed to aiokafka and not settled
        self.seq = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def seal(self) -> None:
        """Close the open batch and queue it for sending."""
        self.seq += 1
        set_record_count(self.builder, self.count)
        self.batches.append(Batch(self, self.builder, self.count, self.nbytes, (self.seq,)))
        self.builder = self.records = None
        self.count = self.nbytes = 0

    def add(self, new_builder: Callable[[], Any], now: float, record: tuple[Any, ...]) -> None:
        """Append ``(ts, key, value, headers)``, sealing a full batch first (not the hot path)."""
        size = record_size(record[1], record[2])
        if self.records is not None:
            if self.records.append(self.count, *record) is not None:
                self.count += 1
                self.nbytes += size
                return
            self.seal()  # full
        self.builder, self.since = new_builder(), now
        self.records = records_of(self.builder)
        self.records.append(0, *record)  # an empty batch takes any record: none is oversized
        self.count += 1
        self.nbytes += size

    def put_back(self, batch: Batch) -> None:
        """Queue a batch to be resent, in its place among the lane's batches."""
        i = 0
        while i < len(self.batches) and self.batches[i].seq < batch.seq:
            i += 1
        self.batches.insert(i, batch)
