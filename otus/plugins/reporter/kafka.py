"""Kafka reporter: records as JSON values keyed by Call-ID, batched per partition, bounded buffer.

Every record handed to :meth:`KafkaReporter.report` ends in exactly one bucket::

    report.kafka.records == report.kafka.sent + report.drop.{backpressure, kafka_failed,
                            kafka_too_large, kafka_closed} + report.buffered

- ``report.kafka.records``        records handed to ``report()``
- ``report.kafka.sent``           acknowledged by the broker (``acks=0``: written to the socket)
- ``report.drop.backpressure``    the buffer stayed full for ``block_ms``: the newest records (the
                                  tail of the batch that did not fit) are dropped, never older ones
- ``report.drop.kafka_failed``    a non-retriable error, or still failing after ``retries`` resends
- ``report.drop.kafka_too_large`` one record (key + value) larger than ``max_request_size``
- ``report.drop.kafka_closed``    undelivered when ``close()`` gave up after ``flush_timeout_ms``,
                                  or handed to ``report()`` after ``close()``
- ``report.buffered`` (gauge)     accepted, not yet acknowledged: waiting, batched or in flight

Health counters outside that sum: ``report.kafka.failed`` (records in failed delivery attempts,
once per attempt), ``report.kafka.retried`` (records resent), ``report.kafka.connect_failed``.

While the broker is slow or gone, records wait in the buffer (at most ``buffer_max_records``) and
``report()`` blocks up to ``block_ms`` for room: that is the pipeline's backpressure. The
idempotent producer (the default) retries until the broker answers, so a buffered record is lost
only by ``close()`` giving up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections import deque
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from otus.core.errors import ReporterError
from otus.core.packet import OutputPacket
from otus.core.record import dumps, to_record
from otus.plugins.base import PluginContext

__all__ = ["KafkaConfig", "KafkaReporter", "murmur2", "partition_for"]

log = logging.getLogger(__name__)

_STOP_S = 5.0  # how long close() lets a producer stop before tearing it down

_TOPIC = r"^[A-Za-z0-9._-]+$"
TopicName = Annotated[str, StringConstraints(min_length=1, max_length=249, pattern=_TOPIC)]
TopicPrefix = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_TOPIC)]
BrokerAddress = Annotated[str, StringConstraints(min_length=1, max_length=261, pattern=r"^\S+$")]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class KafkaConfig(BaseModel):
    """Settings of the ``kafka`` reporter (every field bounded: the CRD schema comes from here)."""

    model_config = ConfigDict(extra="forbid")

    brokers: list[BrokerAddress] = Field(min_length=1, max_length=100)
    topic: TopicName | None = None
    topic_prefix: TopicPrefix | None = None
    client_id: Name | None = None
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    acks: Literal["0", "1", "all"] = "all"
    enable_idempotence: bool | None = None  # None: on when acks is "all"
    batch_size: int = Field(262_144, ge=1024, le=16 * 1024 * 1024)
    linger_ms: int = Field(5, ge=0, le=60_000)
    max_request_size: int = Field(1_048_576, ge=1024, le=64 * 1024 * 1024)
    buffer_max_records: int = Field(50_000, ge=1, le=10_000_000)
    block_ms: int = Field(1_000, ge=0, le=600_000)
    # Resends of a batch after a retriable failure; as in Java, by default no limit: while the
    # broker is away records wait in the bounded buffer instead of being given up.
    retries: int = Field(2_147_483_647, ge=0, le=2_147_483_647)
    retry_backoff_ms: int = Field(100, ge=1, le=60_000)
    reconnect_backoff_max_ms: int = Field(5_000, ge=1, le=300_000)
    request_timeout_ms: int = Field(30_000, ge=1_000, le=600_000)
    metadata_max_age_ms: int = Field(300_000, ge=1_000, le=86_400_000)
    flush_timeout_ms: int = Field(30_000, ge=0, le=3_600_000)
    headers: bool = False  # task_id and agent_id as Kafka headers
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: Name | None = None
    password: SecretStr | None = Field(None, min_length=1, max_length=1024)
    password_file: FilePath | None = None  # a mounted Kubernetes Secret
    ssl_cafile: FilePath | None = None
    ssl_certfile: FilePath | None = None
    ssl_keyfile: FilePath | None = None
    ssl_check_hostname: bool = True

    @field_validator("acks", mode="before")
    @classmethod
    def _acks_as_text(cls, v: object) -> object:
        """Accept YAML's ``acks: 1`` as well as ``"1"``."""
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _consistent(self) -> KafkaConfig:
        """Reject combinations that cannot work, with the fix in the message."""
        if (self.topic is None) == (self.topic_prefix is None):
            raise ValueError("set exactly one of topic and topic_prefix")
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None or self.username is None:
                raise ValueError(f"{self.security_protocol} needs sasl_mechanism and username")
            if (self.password is None) == (self.password_file is None):
                raise ValueError(f"{self.security_protocol} needs one of password, password_file")
        elif self.sasl_mechanism or self.username or self.password or self.password_file:
            raise ValueError("SASL settings need security_protocol SASL_PLAINTEXT or SASL_SSL")
        if self.security_protocol not in ("SSL", "SASL_SSL") and (
            self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile
        ):
            raise ValueError("ssl_* files need security_protocol SSL or SASL_SSL")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        if self.enable_idempotence and self.acks != "all":
            raise ValueError("enable_idempotence needs acks 'all'")
        return self


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``Utils.murmur2`` in the Java client), as an unsigned 32-bit int."""
    length = len(data)
    h = 0x9747B28C ^ length
    # Whole little-endian words at once: about twice as fast as aiokafka's byte-wise version.
    for w in struct.unpack_from(f"<{length >> 2}I", data):
        k = (w * 0x5BD1E995) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * 0x5BD1E995) & 0xFFFFFFFF) ^ ((k * 0x5BD1E995) & 0xFFFFFFFF)
    rem = length & 3
    if rem:
        base = length - rem
        if rem == 3:
            h ^= data[base + 2] << 16
        if rem >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * 0x5BD1E995) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0x5BD1E995) & 0xFFFFFFFF
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Java's default partitioner picks for a key: ``toPositive(murmur2) % n``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _retriable(exc: BaseException) -> bool:
    """Whether resending can help: Kafka says so, or a fresh producer clears the error."""
    from aiokafka import errors as e  # noqa: PLC0415 - aiokafka loads only when Kafka is used

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


class _Batch:
    """Records bound for one partition, kept until acknowledged so a failed batch can be resent."""

    __slots__ = ("attempts", "builder", "future", "gen", "lane", "records", "seq", "token")

    def __init__(
        self, lane: _Lane, records: list[tuple[bytes | None, bytes]], builder: Any, seq: int
    ) -> None:
        self.lane = lane
        self.records = records
        self.builder = builder  # aiokafka BatchBuilder; None once submitted (rebuilt to resend)
        self.seq = seq  # order within the lane, kept when a failed batch is put back
        self.attempts = 0
        self.token = 0  # bumped on every submit and settle: stale callbacks are ignored
        self.gen = 0
        self.future: asyncio.Future[Any] | None = None


class _Lane:
    """One topic-partition: records waiting, batches built, the task that submits them in order."""

    __slots__ = ("batches", "partition", "pending", "seq", "task", "topic", "wake")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.pending: list[tuple[bytes | None, bytes]] = []
        self.batches: deque[_Batch] = deque()
        self.seq = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


def _check_codec(name: str) -> None:
    """Fail at construction, not at the first batch, when a codec's library is missing."""
    from aiokafka import codec  # noqa: PLC0415

    available = {
        "none": True,
        "gzip": codec.has_gzip(),
        "snappy": codec.has_snappy(),
        "lz4": codec.has_lz4(),
        "zstd": codec.has_zstd(),
    }
    if not available[name]:
        raise ReporterError(
            f"kafka: compression {name!r} needs the cramjam package (aiokafka[{name}])"
        )


def _ssl_context(cfg: KafkaConfig) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL, built now so a bad path fails at construction."""
    if cfg.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ssl_cafile)
        ctx.check_hostname = cfg.ssl_check_hostname
        if cfg.ssl_certfile:
            ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    except (OSError, ssl.SSLError) as e:
        raise ReporterError(f"kafka: TLS files: {e}") from e
    return ctx


def _password(cfg: KafkaConfig) -> str | None:
    """The SASL password, from the config or the first line of ``password_file``."""
    if cfg.password is not None:
        return cfg.password.get_secret_value()
    if cfg.password_file is None:
        return None
    try:
        return Path(cfg.password_file).read_text().splitlines()[0]
    except (OSError, IndexError) as e:
        raise ReporterError(f"kafka: cannot read password_file {cfg.password_file}: {e}") from e


class KafkaReporter:
    """Sends each output packet's record to Kafka (see the module docstring for the policy)."""

    Config = KafkaConfig

    def __init__(self, config: KafkaConfig, ctx: PluginContext) -> None:
        _check_codec(config.compression)
        self.config = config
        self._ctx = ctx
        self._ssl = _ssl_context(config)
        self._password = _password(config)
        idem = config.enable_idempotence
        self._idempotent = config.acks == "all" if idem is None else idem
        self._max = config.buffer_max_records
        self._max_record = config.max_request_size
        self._linger = config.linger_ms / 1000
        self._backoff = config.retry_backoff_ms / 1000
        self._headers: list[tuple[str, bytes]] | None = None
        if config.headers:
            self._headers = [
                ("task_id", ctx.task_id.encode()),
                ("agent_id", ctx.agent_id.encode()),
            ]
        # counters: see the module docstring
        self._records = self._sent = self._failed = self._retried = self._connect_failed = 0
        self._drop_backpressure = self._drop_failed = self._drop_too_large = self._drop_closed = 0
        self._buffered = 0
        self._keys: dict[str, tuple[bytes | None, int]] = {}  # Call-ID -> (key, positive murmur2)
        self._lanes: dict[str, list[_Lane]] = {}
        self._staged: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self._inflight: set[_Batch] = set()
        self._rr = 0
        self._producer: Any = None
        self._gen = 0  # producer generation; batches remember theirs
        self._live: dict[int, Any] = {}  # generations not fully stopped: current and retiring
        self._ready = asyncio.Event()
        self._reset = asyncio.Event()
        self._room = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = self._closed = self._flushing = False

    # -- the pipeline's side ---------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background; records wait in the buffer until Kafka answers."""
        if not self._started:
            self._started = True
            self._spawn(self._supervise())

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
        if self._max - self._buffered >= n:
            self._accept(batch)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.block_ms / 1000
        done = 0
        while True:
            room = min(self._max - self._buffered, n - done)
            if room > 0:
                self._accept(batch[done : done + room])
                done += room
                if done == n:
                    return
            remaining = deadline - loop.time()
            if remaining <= 0 or self._closed:
                break
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), remaining)
        self._drop_backpressure += n - done

    async def flush(self) -> None:
        """Wait until everything buffered is acknowledged or dropped, at most flush_timeout_ms."""
        if self._buffered == 0:
            return
        await self.start()
        self._flushing = True
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
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._producer = None
        await asyncio.gather(*(self._stop(g, p) for g, p in list(self._live.items())))
        self._inflight.clear()
        if self._buffered:
            log.warning("kafka: closing with %d records undelivered", self._buffered)
            self._drop_closed += self._buffered
            self._buffered = 0
        self._lanes.clear()
        self._staged.clear()

    async def _stop(self, gen: int, producer: Any) -> None:
        """At close: stop a producer briefly (flush already waited), then tear it down."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), _STOP_S)
        await _force_close(producer)  # a retiring one was cancelled mid-stop: finish the job
        self._settle_generation(gen)

    def stats(self) -> Mapping[str, int]:
        """Counters and the buffered gauge (names in the module docstring)."""
        return {
            "report.kafka.records": self._records,
            "report.kafka.sent": self._sent,
            "report.kafka.failed": self._failed,
            "report.kafka.retried": self._retried,
            "report.kafka.connect_failed": self._connect_failed,
            "report.drop.backpressure": self._drop_backpressure,
            "report.drop.kafka_failed": self._drop_failed,
            "report.drop.kafka_too_large": self._drop_too_large,
            "report.drop.kafka_closed": self._drop_closed,
            "report.buffered": self._buffered,
        }

    # -- the hot path ----------------------------------------------------------------------

    def _accept(self, batch: list[OutputPacket]) -> None:
        """Serialize and route each record to its partition's lane (or stage it by topic)."""
        task_id, agent_id = self._ctx.task_id, self._ctx.agent_id
        fixed_topic, prefix = self.config.topic, self.config.topic_prefix
        limit = self._max_record
        keys = self._keys
        ptype: str | None = None
        lanes: list[_Lane] | None = None
        staged: list[tuple[bytes | None, bytes]] = []
        touched: list[list[_Lane]] = []
        nparts = sticky = 0
        self._rr += 1
        accepted = too_large = 0
        for out in batch:
            if out.payload_type != ptype:
                ptype = out.payload_type
                topic = fixed_topic or f"{prefix}-{ptype}"
                lanes = self._lanes.get(topic)
                if lanes is None:
                    staged = self._stage(topic)
                else:
                    touched.append(lanes)
                    nparts = len(lanes)
                    sticky = self._rr % nparts  # keyless records: one partition per call
            value = dumps(to_record(out, task_id, agent_id))
            if len(value) > limit:
                too_large += 1
                continue
            accepted += 1
            cid = out.payload.get("call_id")
            kh: tuple[bytes | None, int] | None = keys.get(cid) if cid.__class__ is str else None
            if kh is None:
                kh = self._key(cid)
            if lanes is None:
                staged.append((kh[0], value))
            elif kh[0] is None:
                lanes[sticky].pending.append((None, value))
            else:
                lanes[kh[1] % nparts].pending.append((kh[0], value))
        self._drop_too_large += too_large
        if accepted:
            self._buffered += accepted
            self._drained.clear()
        for lanes in touched:
            for lane in lanes:
                if lane.pending:
                    lane.wake.set()

    def _key(self, cid: object) -> tuple[bytes | None, int]:
        """The Kafka key of a Call-ID and its hash, cached: a call sends several messages."""
        if not isinstance(cid, str) or not cid:
            return (None, 0)
        keys = self._keys
        if len(keys) >= 65_536:  # bounded: calls end and their Call-IDs go stale
            keys.clear()
        key = cid.encode()
        kh = keys[cid] = (key, murmur2(key) & 0x7FFFFFFF)
        return kh

    def _stage(self, topic: str) -> list[tuple[bytes | None, bytes]]:
        """Hold a new topic's records until its partition count is known."""
        staged = self._staged.get(topic)
        if staged is None:
            staged = self._staged[topic] = []
            self._spawn(self._resolve(topic))
        return staged

    # -- background tasks ------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("kafka: reporter task failed", exc_info=task.exception())

    def _new_producer(self) -> Any:
        from aiokafka import AIOKafkaProducer  # noqa: PLC0415

        cfg = self.config
        ctx = self._ctx
        producer = AIOKafkaProducer(
            bootstrap_servers=list(cfg.brokers),
            client_id=cfg.client_id or f"otus-{ctx.agent_id or 'agent'}-{ctx.task_id}",
            acks="all" if cfg.acks == "all" else int(cfg.acks),
            enable_idempotence=self._idempotent,
            compression_type=None if cfg.compression == "none" else cfg.compression,
            max_batch_size=cfg.batch_size,
            max_request_size=cfg.max_request_size,
            linger_ms=0,  # lanes linger before building; aiokafka sends what it is handed
            retry_backoff_ms=cfg.retry_backoff_ms,
            request_timeout_ms=cfg.request_timeout_ms,
            metadata_max_age_ms=cfg.metadata_max_age_ms,
            security_protocol=cfg.security_protocol,
            ssl_context=self._ssl,
            sasl_mechanism=cfg.sasl_mechanism or "PLAIN",
            sasl_plain_username=cfg.username,
            sasl_plain_password=self._password,
        )
        if self._idempotent:
            # aiokafka fails a batch whose partition has had no leader for request_timeout_ms,
            # as during a broker restart, though an earlier attempt may have been written:
            # resending it would duplicate. Idempotent batches retry until the leader is back
            # (same producer id and sequence: the broker drops repeats); the buffer bounds them.
            accumulator = getattr(producer, "_message_accumulator", None)
            if accumulator is not None and hasattr(accumulator, "_batch_ttl"):
                accumulator._batch_ttl = float("inf")
        return producer

    async def _supervise(self) -> None:
        """Keep one started producer; replace it when asked (a failed idempotent batch)."""
        from aiokafka.errors import IncompatibleBrokerVersion, UnsupportedVersionError  # noqa: PLC0415

        backoff = self._backoff
        cap = self.config.reconnect_backoff_max_ms / 1000
        while True:
            producer = self._new_producer()
            try:
                await asyncio.wait_for(producer.start(), self.config.request_timeout_ms / 1000)
            except (IncompatibleBrokerVersion, UnsupportedVersionError) as e:
                await self._retire(producer, 0, _STOP_S)
                if self.config.enable_idempotence is None and self._idempotent:
                    log.warning(
                        "kafka: broker lacks idempotent producing (%s); going on without", e
                    )
                    self._idempotent = False
                    continue
                raise
            except Exception as e:
                await self._retire(producer, 0, _STOP_S)
                self._connect_failed += 1
                if self._connect_failed == 1 or self._connect_failed % 50 == 0:
                    log.warning(
                        "kafka: cannot reach %s (%s attempts): %r",
                        ",".join(self.config.brokers),
                        self._connect_failed,
                        e,
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, cap)
                continue
            except BaseException:
                await _force_close(producer)
                raise
            backoff = self._backoff
            self._gen += 1
            gen = self._gen
            self._live[gen] = producer
            self._producer = producer
            self._reset.clear()
            self._ready.set()
            log.info("kafka: producer %d connected to %s", gen, ",".join(self.config.brokers))
            await self._reset.wait()
            log.info("kafka: replacing producer %d", gen)
            self._ready.clear()
            self._producer = None
            # The old producer keeps retrying what it holds under its producer id, so the broker
            # drops duplicates, while a new one takes the next batches. Forcing it closed could
            # send twice a batch the broker wrote but never acknowledged.
            self._spawn(self._retire(producer, gen, None))

    async def _retire(self, producer: Any, gen: int, limit_s: float | None) -> None:
        """Stop a producer (forcibly after ``limit_s``); what it never resolved goes back."""
        try:
            await asyncio.wait_for(producer.stop(), limit_s)
        except Exception as e:
            log.warning("kafka: producer %d did not stop cleanly: %r", gen, e)
            await _force_close(producer)
        self._settle_generation(gen)

    def _settle_generation(self, gen: int) -> None:
        """A producer is gone: settle its batches now (unanswered ones fail, to be resent)."""
        self._live.pop(gen, None)
        for batch in [b for b in self._inflight if b.gen == gen]:
            if batch.future is not None:
                self._settle(batch, batch.future)

    def _request_reset(self, gen: int) -> None:
        if gen == self._gen and self._producer is not None:
            self._reset.set()

    async def _resolve(self, topic: str) -> None:
        """Learn a topic's partition count (auto-creating it if the broker does), then route."""
        while True:
            producer = self._producer
            if producer is None:
                await self._ready.wait()
                continue
            try:
                parts = await producer.partitions_for(topic)
            except Exception as e:
                log.warning("kafka: no metadata for topic %s yet: %r", topic, e)
                await asyncio.sleep(self._backoff)
                continue
            if parts:
                break
            await asyncio.sleep(self._backoff)
        lanes = self._grow([], topic, len(parts))
        staged = self._staged.pop(topic, [])
        n = len(lanes)
        sticky = self._rr % n
        for key, value in staged:
            p = sticky if key is None else (murmur2(key) & 0x7FFFFFFF) % n
            lanes[p].pending.append((key, value))
        self._lanes[topic] = lanes
        for lane in lanes:
            if lane.pending:
                lane.wake.set()

    def _grow(self, lanes: list[_Lane], topic: str, n: int) -> list[_Lane]:
        """Add lanes (and their tasks) up to ``n`` partitions; Kafka never shrinks a topic."""
        while len(lanes) < n:
            lane = _Lane(topic, len(lanes))
            lanes.append(lane)
            lane.task = self._spawn(self._run_lane(lane))
        return lanes

    async def _run_lane(self, lane: _Lane) -> None:
        """Build the lane's records into batches; hand them to aiokafka one at a time, in order."""
        from aiokafka.errors import KafkaTimeoutError  # noqa: PLC0415

        while True:
            if not lane.pending and not lane.batches:
                lane.wake.clear()
                await lane.wake.wait()
                if self._linger and not self._flushing:
                    await asyncio.sleep(self._linger)  # let a lone record gather company
            producer, gen = self._producer, self._gen
            if producer is None:
                await self._ready.wait()
                continue
            if lane.pending:
                self._build(lane, producer)
            batch = lane.batches[0]
            if batch.builder is None:
                batch.builder = self._rebuild(batch, producer)
            try:
                future = await producer.send_batch(
                    batch.builder, lane.topic, partition=lane.partition
                )
            except KafkaTimeoutError:
                continue  # aiokafka still holds this partition's previous batch: the broker is slow
            except Exception as e:
                # A producer whose sender died refuses everything: replace it.
                log.warning(
                    "kafka: cannot queue a batch for %s-%d: %r", lane.topic, lane.partition, e
                )
                self._request_reset(gen)
                await asyncio.sleep(self._backoff)
                continue
            # Not popleft(): a failed batch may have been put back in front while we waited.
            lane.batches.remove(batch)
            batch.builder = None
            batch.attempts += 1
            batch.token += 1
            batch.gen = gen
            batch.future = future
            self._inflight.add(batch)
            future.add_done_callback(partial(self._on_done, batch, batch.token))
            if gen not in self._live:
                # Queued into a producer stopped while we waited: its sender is gone, resend.
                self._settle(batch, future)
            if lane.partition == 0:
                await self._refresh_partitions(producer, lane.topic)

    def _build(self, lane: _Lane, producer: Any) -> None:
        """Move the lane's waiting records into as many full batches as they make."""
        records, lane.pending = lane.pending, []
        headers = self._headers
        ts = int(time.time() * 1000)  # one clock read per build, not per record
        builder = producer.create_batch()
        append = builder.append
        start = 0
        for i, (key, value) in enumerate(records):
            if append(timestamp=ts, key=key, value=value, headers=headers) is None:
                lane.seq += 1
                lane.batches.append(_Batch(lane, records[start:i], builder, lane.seq))
                builder = producer.create_batch()
                append = builder.append
                start = i
                # An empty builder takes any record: oversized ones were dropped in _accept.
                append(timestamp=ts, key=key, value=value, headers=headers)
        lane.seq += 1
        lane.batches.append(_Batch(lane, records[start:], builder, lane.seq))

    def _rebuild(self, batch: _Batch, producer: Any) -> Any:
        """A new builder with the same records (a submitted one cannot be reused)."""
        builder = producer.create_batch()
        headers = self._headers
        ts = int(time.time() * 1000)
        for key, value in batch.records:
            builder.append(timestamp=ts, key=key, value=value, headers=headers)
        return builder

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

    def _on_done(self, batch: _Batch, token: int, future: asyncio.Future[Any]) -> None:
        if token == batch.token:
            self._settle(batch, future)

    def _settle(self, batch: _Batch, future: asyncio.Future[Any]) -> None:
        """Count an acknowledged batch, or put a failed one back in its lane (or drop it)."""
        batch.token += 1
        self._inflight.discard(batch)
        n = len(batch.records)
        if future.done() and not future.cancelled() and future.exception() is None:
            self._sent += n
            self._release(n)
            return
        if future.done() and not future.cancelled():
            exc: BaseException = future.exception() or RuntimeError("no result")
        else:
            from aiokafka.errors import ProducerClosed  # noqa: PLC0415

            exc = ProducerClosed()  # retired before the broker answered: resend
        self._failed += n
        if self._idempotent:
            # aiokafka leaves a sequence gap behind a failed batch: only a new producer id heals it.
            self._request_reset(batch.gen)
        if self._closed:
            self._drop_closed += n
            self._release(n)
            return
        if batch.attempts > self.config.retries or not _retriable(exc):
            log.warning(
                "kafka: dropping %d records for %s-%d after %d attempt(s): %r",
                n,
                batch.lane.topic,
                batch.lane.partition,
                batch.attempts,
                exc,
            )
            self._drop_failed += n
            self._release(n)
            return
        self._retried += n
        lane = batch.lane
        log.info("kafka: resending %d records for %s-%d: %r", n, lane.topic, lane.partition, exc)
        i = 0
        while i < len(lane.batches) and lane.batches[i].seq < batch.seq:
            i += 1
        lane.batches.insert(i, batch)
        lane.wake.set()

    def _release(self, n: int) -> None:
        self._buffered -= n
        self._room.set()
        if self._buffered == 0:
            self._drained.set()


async def _force_close(producer: Any) -> None:
    """Tear down a producer whose stop() hung (broker gone): fail its batches, cancel its sender."""
    from aiokafka.errors import ProducerClosed  # noqa: PLC0415

    # Private attributes: aiokafka has no public way to abandon undeliverable batches.
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is not None:
        accumulator.fail_all(ProducerClosed())
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.client.close(), 5.0)
