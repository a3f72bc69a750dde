"""The daemon's logging: JSON/console rendering, level changes, a rotated gzipped file."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from otus.daemon.config import LogSection
from otus.daemon.logging import LogRuntime, RotatingGzipHandler


@pytest.fixture
def runtime() -> Iterator[LogRuntime]:
    rt = LogRuntime()
    yield rt
    rt.close()
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def section(tmp: Path, **kw: object) -> LogSection:
    return LogSection.model_validate(
        {"outputs": [{"type": "file", "path": str(tmp / "otus.log")}], **kw}
    )


def read(tmp: Path) -> list[str]:
    return (tmp / "otus.log").read_text().splitlines()


def test_json_lines_and_level_reload(runtime: LogRuntime, tmp_path: Path) -> None:
    runtime.configure(section(tmp_path, level="info", format="json"), agent_id="a")
    log = structlog.stdlib.get_logger("otus.test")
    log.debug("hidden")
    log.info("shown", task="t1", n=3)
    logging.getLogger("lib").warning("from %s", "stdlib")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    runtime.configure(section(tmp_path, level="debug", format="json"))
    log.debug("now shown")
    runtime.close()
    events = [json.loads(line) for line in read(tmp_path)]
    names = [e["event"] for e in events]
    assert names == ["shown", "from stdlib", "failed", "now shown"]
    shown = events[0]
    assert shown["task"] == "t1" and shown["n"] == 3 and shown["level"] == "info"
    assert shown["logger"] == "otus.test" and shown["timestamp"].endswith("Z")
    assert "ValueError: boom" in events[2]["exception"]


def test_console_format(runtime: LogRuntime, tmp_path: Path) -> None:
    runtime.configure(section(tmp_path, format="console"))
    structlog.stdlib.get_logger("otus.test").warning("readable", task="t9")
    runtime.close()
    (line,) = read(tmp_path)
    assert "readable" in line and "task=t9" in line and "warning" in line
    assert not line.startswith("{")


def test_worker_records_are_reemitted_with_task_fields(runtime: LogRuntime, tmp_path: Path) -> None:
    runtime.configure(section(tmp_path))
    rec = logging.makeLogRecord(
        {
            "name": "otus.plugins.capture",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "ring full",
            "created": 1_700_000_000.25,
            "task": "t1",
            "worker": 2,
        }
    )
    logging.getLogger(rec.name).handle(rec)
    runtime.close()
    (event,) = [json.loads(line) for line in read(tmp_path)]
    assert event["task"] == "t1" and event["worker"] == 2
    assert event["timestamp"] == "2023-11-14T22:13:20.250000Z"  # the worker's own time


def test_rotation_keeps_gzipped_backups(tmp_path: Path) -> None:
    path = tmp_path / "r.log"
    h = RotatingGzipHandler(str(path), max_bytes=2000, backups=3, compress=True)
    h.setFormatter(logging.Formatter("%(message)s"))
    for i in range(200):
        h.emit(logging.makeLogRecord({"msg": f"line {i:04d} " + "x" * 40}))
    h.close()
    backups = sorted(p.name for p in tmp_path.iterdir() if p.name != "r.log")
    assert backups == ["r.log.1.gz", "r.log.2.gz", "r.log.3.gz"]
    newest = gzip.decompress((tmp_path / "r.log.1.gz").read_bytes()).decode().splitlines()
    current = path.read_text().splitlines()
    assert newest and current
    assert int(newest[-1].split()[1]) + 1 == int(current[0].split()[1])  # nothing lost between
    assert path.stat().st_size <= 2000
