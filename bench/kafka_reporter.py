"""Kafka reporter throughput into a local broker: records/s end to end, and per CPU-second.

Run: ``python -m bench.kafka_reporter [--records N] [--compression C] [--batch-size B]``, or
as the ``kafka`` case of ``python -m bench``. Starts the test suite's broker
(``tests/infra/kafka.py``), so Java and Maven must be present. "Per CPU-second" counts the
reporting process only (user and system time); the broker shares the cores, so the end-to-end
rate depends on the machine. Then the whole pipeline into the same broker
(``bench.kafka_pipeline``: the pcap corpus through decode, SIP parse and this reporter).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import resource
import time
import uuid

from otus.core.packet import OutputPacket
from otus.core.record import dumps, to_record
from otus.plugins.base import PluginContext
from otus.plugins.reporter.kafka import KafkaConfig, KafkaReporter

BATCH = 1024
POOL = 16  # distinct batches, cycled: realistic objects without holding N of them


def sip(seq: int, calls: int) -> OutputPacket:
    """A SIP INVITE-sized output packet; ``calls`` distinct Call-IDs spread over the run."""
    call = seq % calls
    payload = {
        "call_id": f"{call:08x}-a3f2-4c1b-9d7e-{call:012x}@10.0.0.1",
        "method": "INVITE",
        "request_uri": "sip:bob@example.com",
        "status_code": None,
        "reason": None,
        "cseq": {"seq": 1, "method": "INVITE"},
        "from": {"uri": "sip:alice@example.com", "tag": "1928301774"},
        "to": {"uri": "sip:bob@example.com", "tag": None},
        "via": ["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds"],
        "contact": "<sip:alice@10.0.0.1:5060>",
        "user_agent": "sipp",
        "content_type": "application/sdp",
        "content_length": 142,
        "sdp": {"media": [{"type": "audio", "port": 6000, "codecs": ["PCMU/8000"]}]},
    }
    return OutputPacket(
        1_795_315_633_000_000 + seq, "10.0.0.1", "10.0.0.2", 5060, 5060, 17, "sip", payload,
        {"sip.method": "INVITE"},
    )  # fmt: skip


def serialize_only(pool: list[list[OutputPacket]], rounds: int) -> float:
    """CPU seconds to build and serialize the records alone (the floor for any reporter)."""
    c0 = time.process_time()
    for i in range(rounds):
        for o in pool[i % POOL]:
            dumps(to_record(o, "bench", "agent"))
    return time.process_time() - c0


async def through_kafka(
    bootstrap: str, pool: list[list[OutputPacket]], rounds: int, **kw: object
) -> tuple[float, float, float, dict[str, int]]:
    """Wall, user CPU and system CPU seconds to report ``rounds`` batches and flush them."""
    # Bounds the run never reaches (the count's, as before the byte bound): throughput, no waits.
    cfg = KafkaConfig(
        brokers=[bootstrap], topic=f"bench-{uuid.uuid4().hex[:8]}", buffer_max_records=100_000,
        buffer_max_bytes=256 << 20, block_ms=60_000, flush_timeout_ms=300_000,
        **kw,
    )  # fmt: skip
    reporter = KafkaReporter(cfg, PluginContext("bench", "agent"))
    await reporter.report(pool[0])  # topic creation and connection off the clock
    await reporter.flush()
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for i in range(rounds):
        await reporter.report(pool[i % POOL])
    await reporter.flush()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    await reporter.close()
    return wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, dict(reporter.stats())


def main(
    records: int = 300_000,
    compression: str = "none",
    batch_size: int = 262_144,
    calls: int = 20_000,
    pipeline_frames: int = 200_000,
) -> list[tuple[str, float, str]]:
    """Rows for ``python -m bench``: the serialization floor, the reporter end to end, then the
    whole pipeline into Kafka (``bench.kafka_pipeline``)."""
    from bench import kafka_pipeline
    from tests.infra.kafka import KafkaBroker

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # topic auto-creation chatter
    rounds = max(1, records // BATCH)
    n = rounds * BATCH
    pool = [[sip(j * BATCH + i, calls) for i in range(BATCH)] for j in range(POOL)]
    gc.freeze()  # the pool lives all run: keep it out of the collector's way, as a pipeline would
    floor = serialize_only(pool, rounds)
    with KafkaBroker() as broker:
        settings = {"compression": compression, "batch_size": batch_size}
        wall, user, system, stats = asyncio.run(
            through_kafka(broker.bootstrap, pool, rounds, **settings)
        )
        pipeline = kafka_pipeline.run(broker.bootstrap, pipeline_frames, **settings)
    assert stats["report.kafka.sent"] == n + BATCH, stats
    what = f"kafka reporter ({compression}, batch {batch_size // 1024} KiB)"
    return [
        ("record contract alone: to_record + dumps", n / floor, "records/CPU-s"),
        (f"{what}, end to end", n / wall, "records/s"),
        (f"{what}, reporting process", n / (user + system), "records/CPU-s"),
        (f"{what}, of which system time (loopback TCP)", 100 * system / (user + system), "%"),
        *kafka_pipeline.rows(*pipeline),
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--compression", default="none")
    ap.add_argument("--batch-size", type=int, default=262_144)
    ap.add_argument("--calls", type=int, default=20_000, help="distinct Call-IDs")
    ap.add_argument("--pipeline-frames", type=int, default=200_000, help="corpus frames")
    a = ap.parse_args()
    args = (a.records, a.compression, a.batch_size, a.calls, a.pipeline_frames)
    for label, rate, unit in main(*args):
        print(f"{label:<60} {rate:>12,.0f} {unit}")
