"""Console reporter: a write that fails is counted per record and explained once."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from otus.core.packet import OutputPacket
from otus.plugins.base import PluginContext
from otus.plugins.reporter.console import ConsoleConfig, ConsoleReporter


def batch(n: int) -> list[OutputPacket]:
    payload = {"method": "OPTIONS", "call_id": "c@x"}
    return [
        OutputPacket(
            1_767_225_600_000_000 + i,
            "10.0.0.1",
            "10.0.0.2",
            5060,
            5060,
            17,
            "sip",
            payload,
            {},
            None,
        )
        for i in range(n)
    ]


def report_all(rep: ConsoleReporter, batches: list[list[OutputPacket]]) -> None:
    async def go() -> None:
        for b in batches:
            await rep.report(b)
        await rep.close()

    asyncio.run(go())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_device_is_counted_and_explained_once(caplog: pytest.LogCaptureFixture) -> None:
    rep = ConsoleReporter(ConsoleConfig(path="/dev/full"), PluginContext())
    with caplog.at_level(logging.ERROR):
        report_all(rep, [batch(5), batch(7)])
    assert rep.stats() == {"report.console.written": 0, "report.drop.console_failed": 12}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["console: cannot write records: [Errno 28] No space left on device"]


def test_a_reader_that_went_away_is_counted_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """``otus run ... | head``: the pipe closes on purpose; the counter says it, no error line."""
    r, w = os.pipe()
    os.close(r)
    rep = ConsoleReporter(ConsoleConfig(), PluginContext())
    rep._fd = w  # the stream, as if stdout were that pipe
    with caplog.at_level(logging.ERROR):
        report_all(rep, [batch(3)])
    os.close(w)
    assert rep.stats()["report.drop.console_failed"] == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_records_reach_a_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    rep = ConsoleReporter(ConsoleConfig(path=str(path)), PluginContext())
    report_all(rep, [batch(2), batch(1)])
    assert len(path.read_text().splitlines()) == 3
    assert rep.stats() == {"report.console.written": 3, "report.drop.console_failed": 0}
