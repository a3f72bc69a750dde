"""A reporter that raises: its batch is a drop, not a record, and the first failure is logged."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from otus.core.packet import OutputPacket
from otus.core.stats import format_summary
from otus.pipeline.builder import build_pipeline
from otus.pipeline.spec import parse_task

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sipp-uac-uas.pcap"


class Failing:
    """Refuses every batch, as a reporter with a bug would."""

    def __init__(self) -> None:
        self.calls = 0

    async def report(self, batch: list[OutputPacket]) -> None:
        self.calls += 1
        raise ValueError("year 10000 is out of range")

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Keeping:
    """Keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[OutputPacket] = []

    async def report(self, batch: list[OutputPacket]) -> None:
        self.got += batch

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass


def run(reporters: list[object]) -> dict[str, int]:
    spec = parse_task(
        {"id": "t", "capture": {"type": "pcap", "path": str(EXAMPLE), "batch_size": 4}}
    )
    pipe = build_pipeline(spec)
    pipe.reporters = reporters  # type: ignore[assignment]
    return asyncio.run(pipe.run())


def test_a_failed_batch_is_not_counted_as_reported(caplog: pytest.LogCaptureFixture) -> None:
    failing = Failing()
    with caplog.at_level(logging.ERROR):
        stats = run([failing])
    assert failing.calls > 1
    assert stats["report.records"] == 0
    assert stats["report.drop.reporter_error"] == stats["parse.messages"] == 12
    assert "reported=0" in format_summary(stats)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "reporter Failing failed, records dropped: ValueError('year 10000 is out of range')"
    ]


def test_records_and_reporter_errors_add_up_with_two_reporters() -> None:
    """One reporter refusing is enough to call the batch dropped; nothing is counted twice."""
    keeping = Keeping()
    stats = run([keeping, Failing()])
    assert len(keeping.got) == 12
    assert stats["report.records"] + stats["report.drop.reporter_error"] == 12
    assert stats["report.records"] == 0
    stats = run([Keeping(), Keeping()])
    assert (stats["report.records"], stats["report.drop.reporter_error"]) == (12, 0)


class Gone(Keeping):
    """A reporter whose reader went away for good after its first batch (a closed pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.reader_gone = False

    async def report(self, batch: list[OutputPacket]) -> None:
        await super().report(batch)
        self.reader_gone = True


def test_the_run_stops_when_no_reporter_has_a_reader_left() -> None:
    gone = Gone()
    stats = run([gone])
    assert stats["capture.packets"] == 4  # one batch of 4 frames, then stop
    assert len(gone.got) == stats["report.records"] < 12


def test_one_reporter_losing_its_reader_does_not_stop_the_others() -> None:
    keeping = Keeping()
    run([Gone(), keeping])
    assert len(keeping.got) == 12
