"""The end of a capture drains parsers: what TCP streams still hold is reported or counted."""

from __future__ import annotations

from pathlib import Path

from tests.infra.frames import eth, ipv4, sip_message, tcp
from tests.infra.skips import requires_tool
from tests.infra.tshark import normalize_otus, sip_messages
from tests.plugins.parser.sip.tcp import run_otus
from tools.pcapio import PcapWriter

TS = 1_767_225_600_000_000


@requires_tool("tshark")
def test_messages_behind_a_hole_are_reported_at_the_end(tmp_path: Path) -> None:
    """The segment of message 1 was never captured and the capture ends without a FIN:
    messages 2 and 3 wait behind the hole (a retransmission could still come) until the
    capture ends; then they are reported, as tshark dissects them."""
    path = tmp_path / "hole.pcap"
    msgs = [sip_message(i) for i in (1, 2, 3)]
    with PcapWriter(path) as w:
        w.write(TS, eth(ipv4(tcp(b"", 999, flags=0x02), 6)))
        seq = 1000
        for i, m in enumerate(msgs):
            if i:
                w.write(TS + 10 * i, eth(ipv4(tcp(m, seq), 6)))
            seq += len(m)
        w.write(TS + 100, eth(ipv4(tcp(b"", 999, flags=0x02), 6)))  # a SYN retransmitted
    run = run_otus(path)
    got = [normalize_otus(r) for r in run.records]
    assert [g["call_id"] for g in got] == ["hostile-2@10.66.0.1", "hostile-3@10.66.0.1"]
    assert [(g["call_id"], g["ts_us"]) for g in got] == [
        (m["call_id"], m["ts_us"]) for m in sip_messages(path)
    ]
    c = run.counters
    assert (c["parse.tcp_gap"], c["tcp.bytes_missing"]) == (1, len(msgs[0]))
    assert c["flows.closed"] == 1
