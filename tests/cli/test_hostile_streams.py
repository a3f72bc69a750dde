"""`otus run -r` on hostile TCP streams: exits 0, memory stays under the stated bound, and the
counters say why nothing (or what little) was reported."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.infra.frames import eth, ipv4, sip_message, tcp
from tests.plugins.parser.sip.tcp import BYTE_ENDS, byte_identity, run_otus
from tools.pcapio import PcapWriter

# Peak RSS of `otus run -r` with the default bounds (README: "SIP over TCP"): the flow table,
# the stream buffers and the interpreter itself.
MEMORY_BOUND_MIB = 256
FLOWS = 1_000_000
BASE_TS = 1_767_225_600_000_000
SYN, PSH_ACK, FIN_ACK = 0x02, 0x18, 0x11


def write_flow_flood(path: Path, count: int) -> int:
    """``count`` distinct TCP flows to port 5060, one segment each: half a bare SYN, half a
    single byte of data (a message that never completes)."""
    head = struct.Struct("!HHIIBBHHH")
    with PcapWriter(path) as w:
        for i in range(count):
            src = bytes([10, 68 + (i >> 24), (i >> 16) & 255, (i >> 8) & 255])
            sport = 1024 + (i & 0xFF) * 200 + (i >> 24)
            if i % 2:
                seg = head.pack(sport, 5060, 1000, 0, 0x50, SYN, 65535, 0, 0)
            else:
                seg = head.pack(sport, 5060, 1001, 1, 0x50, PSH_ACK, 65535, 0, 0) + b"I"
            w.write(BASE_TS + i, eth(ipv4(seg, 6, src=src)))
        return w.count


def write_streams(path: Path) -> dict[str, int]:
    """Hostile streams on separate connections, each followed by a valid message where one
    can still be found; returns payload bytes per stream."""
    ts = BASE_TS
    sizes: dict[str, int] = {}

    def stream(w: PcapWriter, name: str, sport: int, data: bytes, seg: int = 1460) -> None:
        nonlocal ts
        ts += 1000
        w.write(ts, eth(ipv4(tcp(b"", 999, sport=sport, flags=SYN), 6)))
        for off in range(0, len(data), seg):
            ts += 10
            w.write(ts, eth(ipv4(tcp(data[off : off + seg], 1000 + off, sport=sport), 6)))
        ts += 10
        w.write(ts, eth(ipv4(tcp(b"", 1000 + len(data), sport=sport, flags=FIN_ACK), 6)))
        sizes[name] = len(data)

    with PcapWriter(path) as w:
        # A header block that never ends (no blank line), 4 MB: too_large, then resync.
        endless = b"INVITE sip:bob@10.66.0.2 SIP/2.0\r\nX-Endless: " + b"B" * 4_000_000
        stream(w, "endless", 42000, endless + b"\r\n" + sip_message(1))
        # Content-Length far beyond the buffer bound (8 MB), really sent: skipped by its
        # length as it streams past, the message after it is still found in step.
        huge = sip_message(2, content_length=b"8000000") + b"v" * 8_000_000
        stream(w, "cl_beyond_bound", 42001, huge + sip_message(3))
        # Content-Length of 50 MB, then the connection ends: skipped, nothing held.
        stream(w, "cl_50mb_cut", 42002, sip_message(4, content_length=b"50000000") + b"v" * 9000)
        # No Content-Length at all (RFC 3261 §18.3): a framing error, then resync.
        no_cl = sip_message(5).replace(b"Content-Length: 0\r\n", b"")
        stream(w, "no_content_length", 42003, no_cl + sip_message(6))
        # 100,000 CRLF keep-alives, then a message.
        stream(w, "keepalive_flood", 42004, b"\r\n" * 100_000 + sip_message(7))
        # Random bytes with SIP-looking fragments but never a whole start line.
        junk = b"".join(b"x" * 1500 + b"\nINVITE sip:" for _ in range(2000))
        stream(w, "junk", 42005, junk + b"\r\n" + sip_message(8))
    return sizes


def test_hostile_streams(tmp_path: Path) -> None:
    path = tmp_path / "streams.pcap"
    sizes = write_streams(path)
    run = run_otus(path)
    call_ids = [r["sip"]["call_id"] for r in run.records]
    assert call_ids == [f"hostile-{i}@10.66.0.1" for i in (1, 3, 6, 7, 8)]
    c = run.counters
    assert c["parse.too_large"] == 3  # endless header, and both huge Content-Lengths
    assert c["parse.tcp_framing"] == 1
    assert c["parse.tcp_resync"] >= 2
    assert c["tcp.bytes_keepalive"] >= 200_000
    assert c["tcp.bytes"] == sum(sizes.values())
    assert c.get("tcp.buffered_bytes", 0) == 0
    byte_identity(c)
    assert run.rss_mib < MEMORY_BOUND_MIB, f"peak RSS {run.rss_mib} MiB"


@pytest.mark.slow
def test_a_million_tiny_flows(tmp_path: Path) -> None:
    """1,000,000 one-segment flows: bounded by max_flows (LRU), every flow counted."""
    path = tmp_path / "flows.pcap"
    assert write_flow_flood(path, FLOWS) == FLOWS
    run = run_otus(path, timeout=600)
    assert not run.records
    c = run.counters
    assert c["packets"] == FLOWS
    assert c["flows.created"] == FLOWS
    assert c["flows.evicted"] == FLOWS - 65536  # the default max_flows
    assert c["flows.closed"] == 65536  # at the end of the capture
    assert c["tcp.bytes"] == FLOWS // 2
    assert c["tcp.bytes_skipped"] + c.get("tcp.bytes_dropped", 0) == FLOWS // 2
    assert all(c.get(k, 0) == 0 for k in BYTE_ENDS if k not in ("tcp.bytes_skipped",))
    byte_identity(c)
    assert run.rss_mib < MEMORY_BOUND_MIB, f"peak RSS {run.rss_mib} MiB"
