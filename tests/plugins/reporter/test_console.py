"""Console reporter: failed writes counted and explained once; text safe for a terminal."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from otus.core.packet import OutputPacket
from otus.plugins.base import PluginContext
from otus.plugins.reporter.console import ConsoleConfig, ConsoleReporter, format_text
from tests.infra.cli import run_otus
from tests.infra.frames import BASE_TS, eth, ipv4, sip_message, udp
from tools.pcapio import PcapWriter


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


def _message(request_uri: str, call_id: str) -> OutputPacket:
    payload = {"method": "INVITE", "request_uri": request_uri, "call_id": call_id}
    return OutputPacket(0, "10.0.0.1", "10.0.0.2", 5060, 5060, 17, "sip", payload, {}, None)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("evil\x1b[2J\x1b]0;pwned\x07", "evil\\x1b[2J\\x1b]0;pwned\\x07"),
        ("csi\x9b31m", "csi\\x9b31m"),
        ("two\nlines\r", "two\\x0alines\\x0d"),
        ("a\x00b\x7fc\x08", "a\\x00b\\x7fc\\x08"),
        ("bidi\u202egnp.exe", "bidi\\u202egnp.exe"),
        ("zoë-日本", "zoë-日本"),
    ],
)
def test_text_never_passes_control_characters_to_the_terminal(value: str, shown: str) -> None:
    """Header values are the sender's: ``\\x1b[2J`` in a Call-ID must not clear the screen."""
    line = format_text(_message(f"sip:{value}@x", value))
    assert f"INVITE sip:{shown}@x call-id={shown} " in line


def test_text_of_a_hostile_capture_is_one_clean_line_per_message(tmp_path: Path) -> None:
    pcap = tmp_path / "evil.pcap"
    evil = [b"Call-ID: h\x1b[2Jx", b"Call-ID: two\nlines", "Call-ID: c\u009b2J".encode()]
    with PcapWriter(pcap) as w:
        for i, header in enumerate(evil):
            msg = sip_message(i).replace(f"Call-ID: hostile-{i}".encode(), header)
            w.write(BASE_TS + i, eth(ipv4(udp(msg))))
    proc = run_otus("run", "-r", str(pcap), "--format", "text")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.isprintable() is False  # newlines between records, nothing else
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and all(line.isprintable() for line in lines)
    assert "call-id=h\\x1b[2Jx@" in lines[0]
    assert "call-id=c\\x9b2J@" in lines[2]


def test_json_escapes_c1_controls_and_stays_the_same_json(tmp_path: Path) -> None:
    """orjson writes U+009B (CSI) as raw UTF-8, which a terminal may obey; C0 it escapes."""
    path = tmp_path / "out.jsonl"
    rep = ConsoleReporter(ConsoleConfig(path=str(path)), PluginContext())
    value = "csi\u009b2J esc\x1b[2J nel\u0085 zoë"
    report_all(rep, [[_message("sip:x", value)]])
    raw = path.read_bytes()
    assert b"\xc2\x9b" not in raw and b"\xc2\x85" not in raw and b"\x1b" not in raw
    assert b"csi\\u009b2J" in raw and "zoë".encode() in raw
    assert json.loads(raw)["sip"]["call_id"] == value
