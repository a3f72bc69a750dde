"""Pipeline -> Kafka: the corpus through decode, SIP parse and the Kafka reporter into a broker.

The pipeline is Otus's own (``otus.pipeline.Pipeline`` on uvloop, as a worker runs it), fed from
memory with rounds of the pcap corpus (``bench.corpus``, fresh Call-IDs each round) so the disk is
not measured. Rates are per CPU-second of this process (user + system: the broker shares the
cores, so wall time says more about the machine than about Otus), and the reporter's share is the
difference with the same pipeline ending in a reporter that only counts.
"""

from __future__ import annotations

import gc
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from bench.corpus import UDP_FILES, load, make_round
from bench.corpus import frames as corpus_frames
from otus.core.packet import OutputPacket, RawBatch
from otus.decoder import Decoder
from otus.pipeline.pipeline import Pipeline
from otus.plugins.base import PluginContext
from otus.plugins.parser.sip import SipConfig, SipParser
from otus.plugins.reporter.kafka import KafkaConfig, KafkaReporter

__all__ = ["Result", "run"]

MIN_FRAMES = 200_000


class MemoryCapturer:
    """Yields prepared batches, then ends."""

    def __init__(self, rounds: list[list[RawBatch]]) -> None:
        self.rounds = rounds
        self.packets = 0

    async def batches(self) -> AsyncIterator[RawBatch]:
        for r in self.rounds:
            for b in r:
                self.packets += len(b.frames)
                yield b

    async def close(self) -> None:
        return None

    def stats(self) -> Mapping[str, int]:
        return {"capture.packets": self.packets}


class CountingReporter:
    """Takes records and does nothing with them: the pipeline's cost without a reporter."""

    def __init__(self) -> None:
        self.n = 0

    async def report(self, batch: list[OutputPacket]) -> None:
        self.n += len(batch)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class Result:
    """One pipeline run."""

    frames: int
    records: int
    wall_s: float
    user_s: float
    system_s: float
    stats: dict[str, int]

    @property
    def cpu_s(self) -> float:
        """User + system seconds of this process."""
        return self.user_s + self.system_s


async def _pipeline(rounds: list[list[RawBatch]], reporter: Any) -> Result:
    ctx = PluginContext("bench", "agent")
    pipeline = Pipeline(
        ctx, MemoryCapturer(rounds), Decoder(), [SipParser(SipConfig(), ctx)], [], [reporter]
    )
    gc.collect()
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    stats = dict(await pipeline.run())  # closing the reporter flushes it: every record acked
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return Result(
        sum(len(b.frames) for r in rounds for b in r),
        stats["report.records"],
        wall,
        r1.ru_utime - r0.ru_utime,
        r1.ru_stime - r0.ru_stime,
        stats,
    )


def run(bootstrap: str, min_frames: int = MIN_FRAMES, **kafka: Any) -> tuple[Result, Result]:
    """(counting reporter, Kafka reporter) over the same frames."""
    import uvloop

    units = load(UDP_FILES)
    reps = max(1, min_frames // corpus_frames(units))
    # Built once, outside the clock; each run sees the same calls (fresh for its state).
    rounds = [make_round(units, i + 1) for i in range(reps)]
    gc.freeze()
    null = uvloop.run(_pipeline(rounds, CountingReporter()))
    cfg = KafkaConfig(
        brokers=[bootstrap], topic=f"bench-pipeline-{uuid.uuid4().hex[:8]}",
        buffer_max_records=100_000, buffer_max_bytes=256 << 20, block_ms=60_000,
        flush_timeout_ms=300_000, **kafka,
    )  # fmt: skip

    async def warm_then_run() -> Result:
        # Topic creation and the first connection off the clock.
        await _pipeline([rounds[0][:4]], KafkaReporter(cfg, PluginContext("bench", "agent")))
        return await _pipeline(rounds, KafkaReporter(cfg, PluginContext("bench", "agent")))

    kafka_result = uvloop.run(warm_then_run())
    assert kafka_result.stats["report.kafka.sent"] == kafka_result.records, kafka_result.stats
    return null, kafka_result


def rows(null: Result, kafka: Result) -> list[tuple[str, float, str]]:
    """Rows for ``python -m bench``."""
    share = kafka.cpu_s - null.cpu_s
    load1 = os.getloadavg()[0]
    return [
        ("pipeline -> Kafka, end to end (wall)", kafka.records / kafka.wall_s, "records/s"),
        ("pipeline -> Kafka, per CPU-second of the process", kafka.records / kafka.cpu_s,
         "records/CPU-s"),
        ("pipeline without a reporter (decode + SIP parse)", null.records / null.cpu_s,
         "records/CPU-s"),
        ("the Kafka reporter's share (difference of CPU-seconds)", kafka.records / share,
         "records/CPU-s"),
        (f"  CPU-seconds: {kafka.cpu_s:.2f} with Kafka ({kafka.system_s:.2f} system), "
         f"{null.cpu_s:.2f} without, for", kafka.records, "records"),
        ("  load average (1 min) at the end", load1, ""),
    ]  # fmt: skip
