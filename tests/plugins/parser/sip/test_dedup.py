"""Duplicate suppression: a message captured twice (mirrors, with and without a VLAN tag) is
reported once when the task asks for it; SIP's own retransmissions are still reported."""

from __future__ import annotations

import struct
from pathlib import Path

from otus.core.packet import IPPROTO_UDP, DecodedPacket, Encap, OutputPacket
from otus.plugins.parser.sip.dedup import Dedup
from tests.infra.skips import requires_tool
from tests.infra.tshark import diff_messages, normalize_otus, sip_messages
from tests.plugins.parser.sip.tcp import Conn, call_ids, message, parser, run_otus
from tools.pcapio import Frame, read_pcap, write_pcap

DATA = Path(__file__).resolve().parents[4] / "tests" / "data"
MS = 1000


def udp(payload: bytes, ts: int, *, encap: Encap | None = None, sport: int = 5070) -> DecodedPacket:
    return DecodedPacket(ts, "10.0.0.1", "10.0.0.2", sport, 5060, IPPROTO_UDP, payload, encap)


def feed(p: object, *pkts: DecodedPacket) -> list[OutputPacket]:
    out: list[OutputPacket] = []
    for x in pkts:
        if p.can_handle(x):  # type: ignore[attr-defined]
            p.handle(x, out)  # type: ignore[attr-defined]
    return out


class TestDedup:
    def test_within_the_window_only(self) -> None:
        d = Dedup(200 * MS, 100)
        k = (1, "a", 1, "b", 2)
        assert not d.seen(k, 0)
        assert d.seen(k, 150 * MS)
        assert d.seen(k, 200 * MS)
        assert not d.seen(k, 201 * MS)  # a new sighting, remembered from now
        assert d.seen(k, 300 * MS)

    def test_bounded(self) -> None:
        d = Dedup(10_000 * MS, 16)
        for i in range(1000):
            d.seen((i, "a", 1, "b", 2), i)
        assert len(d) <= 16
        assert not d.seen((0, "a", 1, "b", 2), 1000)  # forgotten: reported again

    def test_old_entries_go_with_time(self) -> None:
        d = Dedup(1 * MS, 1000)
        for i in range(100):
            d.seen((i, "a", 1, "b", 2), 0)
        d.seen((-1, "a", 1, "b", 2), 10 * MS)
        assert len(d) == 1


class TestParser:
    def test_off_by_default(self) -> None:
        p = parser()
        out = feed(p, udp(message(1), 0), udp(message(1), 10))
        assert call_ids(out) == ["call-1", "call-1"]

    def test_mirrored_copy_reported_once(self) -> None:
        p = parser(dedup={"enabled": True})
        tagged = Encap(vlans=[100])
        out = feed(
            p,
            udp(message(1), 0),
            udp(message(1), 30, encap=tagged),  # the same frame from a tagged mirror port
            udp(message(2), 50),
            udp(message(2), 60),
        )
        assert call_ids(out) == ["call-1", "call-2"]
        assert out[0].encap is None  # the first copy wins
        assert p.stats()["parse.drop.duplicate"] == 2

    def test_retransmission_after_t1_is_reported(self) -> None:
        p = parser(dedup={"enabled": True})
        out = feed(p, udp(message(1), 0), udp(message(1), 500 * MS))
        assert call_ids(out) == ["call-1", "call-1"]

    def test_other_addresses_are_other_messages(self) -> None:
        p = parser(dedup={"enabled": True})
        out = feed(p, udp(message(1), 0), udp(message(1), 10, sport=5071))
        assert len(out) == 2

    def test_tcp_copies_are_retransmissions_of_one_stream(self) -> None:
        p = parser()  # no dedup needed: both copies land in the same stream
        c = Conn(p)
        c.handshake()
        segs = c.segments(message(1) + message(2), 100)
        for s in segs:
            c.send(s)
            copy = DecodedPacket(**{f: getattr(s, f) for f in s.__slots__})  # type: ignore[arg-type]
            copy.encap = Encap(vlans=[100])
            c.send(copy)
        assert call_ids(c.out) == ["call-1", "call-2"]
        assert p.stats()["parse.drop.tcp_retransmit"] == len(segs)


def _tag(frame: bytes, vid: int) -> bytes:
    return frame[:12] + struct.pack("!HH", 0x8100, vid) + frame[12:]


@requires_tool("tshark")
def test_capture_mirrored_with_and_without_vlan(tmp_path: Path) -> None:
    """Every frame of a real capture twice, the copy VLAN-tagged: with dedup, the records
    are tshark's dissection of the original capture; without, every message twice."""
    _, frames = read_pcap(DATA / "sip-udp4.pcap")
    doubled = []
    for f in frames:
        doubled.append(f)
        doubled.append(Frame(f.ts_us + 40, _tag(f.data, 100)))
    path = tmp_path / "mirrored.pcap"
    write_pcap(path, doubled)
    want = sip_messages(DATA / "sip-udp4.pcap")
    task = {
        "id": "dedup",
        "capture": {"type": "pcap", "path": str(path)},
        "parsers": [{"type": "sip", "config": {"dedup": {"enabled": True}}}],
    }
    run = run_otus(path, task=task)
    got = [normalize_otus(r) for r in run.records]
    assert got == want, diff_messages(got, want)  # the untagged copy came first
    assert run.counters["parse.duplicate"] == len(want)
    assert len(run_otus(path).records) == 2 * len(want)
