"""Pipeline: counters keep being published while reporters flush at the end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from otus.core.packet import OutputPacket
from otus.pipeline.builder import build_pipeline
from otus.pipeline.pipeline import Pipeline
from otus.pipeline.spec import parse_task

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sipp-uac-uas.pcap"


class SlowFlush:
    """Takes its time to close, as a Kafka reporter waiting on a slow broker does."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.closed_at = 0.0

    async def report(self, batch: list[OutputPacket]) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        await asyncio.sleep(self.seconds)
        self.closed_at = time.monotonic()


def test_stats_are_published_every_second_while_reporters_flush() -> None:
    """A worker's parent takes a silent worker for a hung one: closing must not be silent."""
    spec = parse_task({"id": "t", "capture": {"type": "pcap", "path": str(EXAMPLE)}})
    published: list[tuple[float, bool]] = []

    def on_stats(p: Pipeline) -> None:
        published.append((time.monotonic(), p.finished))

    pipe = build_pipeline(spec, on_stats=on_stats)
    slow = SlowFlush(2.5)
    pipe.reporters = [slow]
    asyncio.run(pipe.run())
    during = [t for t, finished in published if not finished and t < slow.closed_at]
    assert len(during) >= 2, published
    assert published[-1][1]  # and the last one is the final count
