"""Worker log records reach the parent's logging, tagged with task and worker, rate-limited."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import Any

import pytest

from otus.pipeline.spec import parse_task
from otus.task.runner import TaskRunner
from otus.task.worker import LOG_BURST, PipeLogHandler


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collect() -> Any:
    h = Collect()
    logger = logging.getLogger("otus.plugins.test")
    logger.addHandler(h)
    logger.setLevel(logging.DEBUG)
    yield h
    logger.removeHandler(h)


def test_forwarded_records_and_rate_limit(collect: Collect) -> None:
    parent, child = multiprocessing.Pipe(duplex=False)
    level = multiprocessing.Value("i", logging.INFO, lock=False)
    handler = PipeLogHandler(child, level, threading.Lock())
    src = logging.getLogger("otus.worker.side")
    src.propagate = False
    src.addHandler(handler)
    src.setLevel(logging.DEBUG)
    try:
        src.debug("below the threshold")
        src.warning("ring %s", "full", extra={"iface": "eth0", "blocks": 3})
        for i in range(LOG_BURST + 50):
            src.info("spam %d", i)
        level.value = logging.DEBUG  # what a reload does
        src.debug("now visible")
    finally:
        src.removeHandler(handler)
    msgs = []
    while parent.poll(0.2):
        msgs.append(parent.recv())
    assert all(m[0] == "log" for m in msgs)
    events = [m[1]["event"] for m in msgs]
    assert "below the threshold" not in events
    assert events[0] == "ring full" and msgs[0][1]["iface"] == "eth0"
    assert len(events) < LOG_BURST + 52  # the excess was counted, not sent
    assert handler.dropped > 0 or any("log_dropped" in m[1] for m in msgs)

    runner = TaskRunner(parse_task({"id": "t", "capture": {"type": "pcap", "path": "x"}}))
    w = runner.workers[0]
    for _, data in msgs[:2]:
        runner._forward_log(w, dict(data, logger="otus.plugins.test"))
    runner._forward_log(
        w, {"level": 30, "logger": "otus.plugins.test", "event": "x", "log_dropped": 7}
    )
    first = collect.records[0]
    assert first.getMessage() == "ring full" and first.levelno == logging.WARNING
    assert (first.task, first.worker, first.iface) == ("t", 0, "eth0")  # type: ignore[attr-defined]
    assert runner.log_dropped() == 7
