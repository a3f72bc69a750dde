"""The Kafka reporter's buffer in bytes: large records are bounded by buffer_max_bytes, and every
way a record leaves the buffer gives its bytes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from otus.core.packet import OutputPacket
from otus.core.record import record_bytes
from otus.plugins.reporter.kafka import KafkaConfig, KafkaReporter
from tests.infra.kafka import KafkaBroker, free_port, read_topic
from tests.plugins.reporter.test_kafka import CTX, assert_balanced, config, packet, seqs

MIB = 1 << 20


def big(seq: int, size: int = 20_000) -> OutputPacket:
    """A SIP-over-TCP-sized message (a long SDP body): about ``size`` bytes of record value."""
    p = packet(seq % 5, seq, call_id=f"call-{seq % 5}@otus.test")
    p.payload["body"] = "a=rtpmap:0 PCMU/8000\r\n" * (size // 22)
    return p


def weight(packets: list[OutputPacket]) -> int:
    """What these records count against buffer_max_bytes: their values and keys."""
    return sum(
        len(record_bytes(p, CTX.task_id, CTX.agent_id)) + len(p.payload["call_id"]) for p in packets
    )


def assert_settled(stats: Mapping[str, int]) -> None:
    """Nothing held: both gauges are back at 0 (a leaked byte would stall the reporter)."""
    assert (stats["report.buffered"], stats["report.buffered_bytes"]) == (0, 0), stats


def test_buffer_max_bytes_defaults_to_64_mib_and_is_bounded() -> None:
    assert KafkaConfig(brokers=["b:9092"], topic="a").buffer_max_bytes == 64 * MIB
    for wrong in (MIB - 1, 16 * 1024 * MIB + 1):
        with pytest.raises(ValidationError, match="buffer_max_bytes"):
            KafkaConfig(brokers=["b:9092"], topic="a", buffer_max_bytes=wrong)


async def test_large_records_fill_the_byte_bound_long_before_the_count_bound() -> None:
    cfg = config(
        f"127.0.0.1:{free_port()}", buffer_max_bytes=MIB, block_ms=20, flush_timeout_ms=100
    )
    reporter = KafkaReporter(cfg, CTX)
    sent = [big(seq) for seq in range(100)]  # ~2 MB: twice the bound
    peak = 0
    for i in range(0, len(sent), 5):
        await reporter.report(sent[i : i + 5])
        peak = max(peak, reporter.stats()["report.buffered_bytes"])
    stats = dict(reporter.stats())
    held = stats["report.buffered"]
    assert peak <= MIB
    assert 40 <= held <= 55  # of 50,000 records buffer_max_records would take
    assert stats["report.buffered_bytes"] == weight(sent[:held])  # the oldest, in order
    assert stats["report.buffered_bytes"] + weight([sent[held]]) > MIB  # the next did not fit
    assert stats["report.drop.backpressure"] == len(sent) - held
    assert_balanced(stats)
    await reporter.close()
    stats = dict(reporter.stats())
    assert stats["report.drop.kafka_closed"] == held
    assert_settled(stats)
    assert_balanced(stats)


async def test_a_record_larger_than_the_byte_bound_is_too_large_not_a_wait() -> None:
    cfg = config(
        f"127.0.0.1:{free_port()}", buffer_max_bytes=MIB, max_request_size=4 * MIB,
        block_ms=10_000, flush_timeout_ms=100,
    )  # fmt: skip
    reporter = KafkaReporter(cfg, CTX)
    t0 = time.monotonic()
    # It could never fit, even in an empty buffer: waiting block_ms for room would be in vain.
    await reporter.report([big(0), big(1, size=MIB + 1000), big(2)])
    took = time.monotonic() - t0
    stats = dict(reporter.stats())
    await reporter.close()
    assert took < 2.0
    assert stats["report.drop.kafka_too_large"] == 1
    assert stats["report.drop.backpressure"] == 0
    assert stats["report.buffered"] == 2  # the records on either side are kept
    assert stats["report.buffered_bytes"] == weight([big(0), big(2)])
    assert_balanced(stats)
    assert_settled(reporter.stats())


@pytest.mark.kafka
async def test_a_hung_broker_fills_the_byte_bound_then_delivery_resumes(
    kafka_broker: KafkaBroker,
) -> None:
    cfg = config(kafka_broker, buffer_max_bytes=MIB, block_ms=20, linger_ms=0)
    reporter = KafkaReporter(cfg, CTX)
    # Held until the topic's partitions are known, then batched: 5 calls, 3 partitions.
    await reporter.report([big(seq) for seq in range(5)])
    await reporter.flush()
    sent = [big(seq) for seq in range(5, 105)]  # ~2 MB
    peak = 0
    try:
        kafka_broker.pause()
        for i in range(0, len(sent), 5):
            await reporter.report(sent[i : i + 5])
            peak = max(peak, reporter.stats()["report.buffered_bytes"])
        during = dict(reporter.stats())
    finally:
        kafka_broker.resume()
    await reporter.flush()
    after = dict(reporter.stats())
    await reporter.close()
    held = during["report.buffered"]
    assert peak <= MIB
    assert 40 <= held <= 55
    assert during["report.drop.backpressure"] == len(sent) - held
    assert_settled(after)  # everything delivered: no byte left behind
    assert after["report.kafka.sent"] == 5 + held
    got = sorted(seqs(await read_topic(kafka_broker.bootstrap, cfg.topic or "")))
    assert got == list(range(5 + held))  # the newest records were dropped, the held ones sent
    assert_balanced(reporter.stats())


@pytest.mark.kafka
async def test_bytes_of_failed_batches_are_given_back(kafka_broker: KafkaBroker) -> None:
    # Not idempotent and no retries: a batch the hung broker never answers fails and is dropped.
    cfg = config(
        kafka_broker, buffer_max_bytes=MIB, acks="1", retries=0, request_timeout_ms=1000,
        linger_ms=0, block_ms=0,
    )  # fmt: skip
    reporter = KafkaReporter(cfg, CTX)
    await reporter.report([big(0)])
    await reporter.flush()
    try:
        kafka_broker.pause()
        await reporter.report([big(seq) for seq in range(1, 21)])
        for _ in range(100):  # bounded: the request times out after 1 s
            if reporter.stats()["report.drop.kafka_failed"]:
                break
            await asyncio.sleep(0.1)
    finally:
        kafka_broker.resume()
    await reporter.flush()
    stats = dict(reporter.stats())
    assert stats["report.drop.kafka_failed"] > 0, stats
    assert_settled(stats)
    assert_balanced(stats)
    # Room again (block_ms 0: none is waited for): dropped records left no bytes in the bound.
    more = [big(seq) for seq in range(100, 140)]  # ~800 kB
    await reporter.report(more)
    await reporter.flush()
    before, stats = stats, dict(reporter.stats())
    await reporter.close()
    assert stats["report.drop.backpressure"] == 0
    assert stats["report.kafka.sent"] - before["report.kafka.sent"] == len(more)
    assert_settled(stats)
