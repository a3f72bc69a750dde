"""TCP stream reassembly for SIP, segment by segment: what users notice is which messages are
reported (once, whole, with the completing segment's time and addresses) and why the rest is
not (the counters). Real captures rewritten by scapy are compared with tshark in
test_stream_vs_tshark.py."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otus.core.packet import IPPROTO_TCP, Encap, OutputPacket
from tests.plugins.parser.sip.tcp import (
    ACK,
    FIN,
    M32,
    RST,
    SYN,
    Conn,
    accounted,
    call_ids,
    message,
    parser,
    response,
)

BIG = message(1, body_lines=300)  # ~5.3 KB


def drops(conn: Conn) -> dict[str, int]:
    return {
        k: v
        for k, v in conn.parser.stats().items()
        if v and (".drop." in k or k in ("tcp.out_of_order", "tcp.overlaps", "tcp.bytes_missing"))
    }


class TestInOrder:
    @pytest.mark.parametrize("size", [1, 7, 100, 536, 1460, 65535])
    def test_one_message_over_many_segments(self, size: int) -> None:
        c = Conn(parser())
        c.handshake()
        segs = c.segments(BIG, size)
        for s in segs[:-1]:
            assert c.send(s) == []
        (o,) = c.send(segs[-1])
        assert o.payload["call_id"] == "call-1"
        assert o.payload["content_length"] == len(BIG) - BIG.index(b"\r\n\r\n") - 4
        assert o.payload["sdp"]["media"][0]["port"] == 49172
        assert (o.ts_us, o.src_ip, o.src_port, o.transport) == (
            segs[-1].ts_us,
            "10.0.0.1",
            5070,
            IPPROTO_TCP,
        )
        assert drops(c) == {}
        accounted(c.parser)

    def test_several_messages_per_segment_and_across_segments(self) -> None:
        data = b"".join(message(i, body_lines=i % 3 * 20 - 1) for i in range(20))
        c = Conn(parser())
        c.handshake()
        c.stream(data, [1400, 3, 900, 2500])
        assert call_ids(c.out) == [f"call-{i}" for i in range(20)]
        assert drops(c) == {}
        accounted(c.parser)

    def test_both_directions_are_separate_streams(self) -> None:
        c = Conn(parser())
        c.handshake()
        req, resp = c.segments(BIG, 700), c.segments(response(1), 50, server=True)
        for a, b in zip(req, resp, strict=False):
            c.send(a)
            c.send(b)
        for rest in req[len(resp) :] + resp[len(req) :]:
            c.send(rest)
        assert sorted((o.payload["method"] or "", o.src_port) for o in c.out) == [
            ("", 5060),
            ("INVITE", 5070),
        ]

    def test_record_context_is_the_completing_segments(self) -> None:
        c = Conn(parser())
        c.handshake()
        segs = c.segments(message(1), 60)
        segs[-1].encap = Encap(vlans=[7])  # the last one seen with a VLAN tag
        for s in segs[:-1]:
            assert c.send(s) == []
        (o,) = c.send(segs[-1])
        assert o.encap is not None and o.encap.vlans == [7]
        assert o.ts_us == segs[-1].ts_us

    @pytest.mark.parametrize("isn", [M32 - 2, M32 - 700, M32])
    def test_sequence_numbers_wrap_around(self, isn: int) -> None:
        c = Conn(parser(), isn=(isn, M32 - 100))
        c.handshake()
        c.stream(message(1) + BIG + message(2), 333)
        c.stream(response(1) * 3, 100, server=True)
        assert call_ids(c.out).count("call-1") == 5
        assert drops(c) == {}
        accounted(c.parser)

    def test_compact_content_length(self) -> None:
        c = Conn(parser())
        c.handshake()
        c.stream(message(1, body_lines=3, compact=True) + message(2), 50)
        assert call_ids(c.out) == ["call-1", "call-2"]


class TestStartAndEnd:
    def test_capture_starting_mid_message(self) -> None:
        c = Conn(parser())  # no handshake seen
        data = BIG + message(2) + message(3)
        c.seq[0] = 123_456
        c.stream(data[2000:], 500)
        assert call_ids(c.out) == ["call-2", "call-3"]
        assert drops(c) == {"parse.drop.tcp_resync": 1}
        assert c.parser.stats()["tcp.bytes_skipped"] == len(BIG) - 2000
        accounted(c.parser)

    def test_capture_starting_at_a_message(self) -> None:
        c = Conn(parser())
        c.stream(message(1) + message(2), 1000)
        assert call_ids(c.out) == ["call-1", "call-2"]
        assert drops(c) == {}

    def test_fin_from_both_sides_ends_the_flow(self) -> None:
        c = Conn(parser())
        c.handshake()
        c.stream(message(1) + BIG[:3000])
        assert c.parser.stats()["flows.active"] == 1
        assert c.parser.stats()["tcp.buffered_bytes"] == 3000
        c.close()
        s = c.parser.stats()
        assert (s["flows.active"], s["flows.closed"], s["tcp.buffered_bytes"]) == (0, 1, 0)
        assert drops(c) == {"parse.drop.tcp_closed": 1}
        assert s["tcp.bytes_dropped"] == 3000
        accounted(c.parser)

    def test_rst_ends_the_flow_at_once(self) -> None:
        c = Conn(parser())
        c.handshake()
        c.stream(BIG[:100])
        c.send(c.packet(b"", server=True, flags=RST))
        assert c.parser.stats()["flows.active"] == 0
        assert drops(c) == {"parse.drop.tcp_closed": 1}

    def test_late_copies_after_close_are_not_reported_again(self) -> None:
        c = Conn(parser())
        c.handshake()
        segs = c.segments(message(1) + message(2), 200)
        for s in segs:
            c.send(s)
        c.close()
        for s in segs:  # a mirror's late copy, or a spurious retransmission
            c.send(s)
        assert call_ids(c.out) == ["call-1", "call-2"]
        assert c.parser.stats()["parse.drop.tcp_retransmit"] == len(segs)
        accounted(c.parser)

    def test_a_new_connection_on_the_same_ports(self) -> None:
        p = parser()
        c = Conn(p)
        c.handshake()
        c.stream(message(1) + BIG[:500])
        c2 = Conn(p, isn=(55_555, 66_666))  # new SYN, new ISN, no FIN seen for the old one
        c2.handshake()
        c2.stream(message(2))
        assert call_ids(c.out + c2.out) == ["call-1", "call-2"]
        assert p.stats()["parse.drop.tcp_closed"] == 1  # the old partial message
        accounted(p)

    def test_end_of_capture_drains(self) -> None:
        c = Conn(parser())
        c.handshake()
        c.stream(message(1) + BIG[:100])
        out: list[OutputPacket] = []
        c.parser.drain(out)
        assert out == []
        s = c.parser.stats()
        assert (s["flows.active"], s["tcp.buffered_bytes"], s["parse.drop.tcp_closed"]) == (0, 0, 1)
        accounted(c.parser)

    def test_idle_flows_expire(self) -> None:
        p = parser(tcp={"flow_idle_timeout_s": 5})
        c = Conn(p)
        c.handshake()
        c.stream(BIG[:100])
        p.expire(c.ts + 4_000_000)
        assert p.stats()["flows.active"] == 1
        p.expire(c.ts + 6_000_000)
        s = p.stats()
        assert (s["flows.active"], s["flows.expired"], s["parse.drop.tcp_closed"]) == (0, 1, 1)
        accounted(p)

    def test_keepalives_between_messages(self) -> None:
        c = Conn(parser())
        c.handshake()
        c.stream(message(1))
        c.stream(b"\r\n\r\n")  # RFC 5626 ping
        c.stream(b"\r\n", server=True)  # pong
        c.stream(b"\r\n\r\n" + message(2) + b"\r\n\r\n" + message(3), 77)
        assert call_ids(c.out) == ["call-1", "call-2", "call-3"]
        assert drops(c) == {"parse.drop.keepalive": 2}
        assert c.parser.stats()["tcp.bytes_keepalive"] == 14
        accounted(c.parser)


class TestDisorder:
    def test_retransmissions_and_overlaps(self) -> None:
        c = Conn(parser())
        c.handshake()
        data = message(1) + BIG + message(2)
        segs = c.segments(data, 400)
        base = segs[0].tcp_seq
        for i, s in enumerate(segs):
            c.send(s)
            c.send(s)  # retransmitted whole
            if i + 1 < len(segs):  # a repacketized retransmission over both
                both = data[i * 400 + 200 : (i + 1) * 400 + 200]
                c.send(c.packet(both, seq=base + i * 400 + 200))
        assert call_ids(c.out) == ["call-1", "call-1", "call-2"]
        d = drops(c)
        assert d["parse.drop.tcp_retransmit"] >= len(segs)
        assert d["tcp.overlaps"] >= len(segs) - 1
        assert set(d) == {"parse.drop.tcp_retransmit", "tcp.overlaps"}
        s = c.parser.stats()
        assert s["tcp.bytes_duplicate"] == s["tcp.bytes"] - len(data)  # each byte used once
        accounted(c.parser)

    def test_out_of_order_within_the_window(self) -> None:
        c = Conn(parser())
        c.handshake()
        segs = c.segments(message(1) + BIG + message(2), 300)
        order = segs[1:] + segs[:1]  # the first segment comes last
        for s in order[:-1]:
            assert c.send(s) == []
        got = c.send(order[-1])
        assert call_ids(got) == ["call-1", "call-1", "call-2"]
        assert all(o.ts_us == order[-1].ts_us for o in got)  # the segment that completed them
        assert drops(c) == {"tcp.out_of_order": len(segs) - 1}
        accounted(c.parser)

    def test_shuffled_duplicated_overlapping_all_reported_once(self) -> None:
        rng = random.Random(5)
        data = b"".join(message(i, body_lines=rng.randrange(-1, 60)) for i in range(30))
        c = Conn(parser())
        c.handshake()
        segs = c.segments(data, [rng.randrange(1, 900) for _ in range(50)])
        mangled = []
        for s in segs:
            mangled.append(s)
            if rng.random() < 0.2:
                mangled.append(s)
        for i in range(len(mangled) - 1):
            if rng.random() < 0.3:
                mangled[i], mangled[i + 1] = mangled[i + 1], mangled[i]
        for s in mangled:
            c.send(s)
        assert call_ids(c.out) == [f"call-{i}" for i in range(30)]
        accounted(c.parser)

    def test_a_lost_segment_is_given_up_when_the_window_fills(self) -> None:
        c = Conn(parser(tcp={"max_out_of_order": 4}))
        c.handshake()
        msgs = [message(i) for i in range(12)]
        segs = [c.segments(m, 10_000)[0] for m in msgs]  # one message per segment
        for i, s in enumerate(segs):
            if i != 2:  # lost before the capture point
                c.send(s)
        assert call_ids(c.out) == [f"call-{i}" for i in range(12) if i != 2]
        d = drops(c)
        assert d["parse.drop.tcp_gap"] == 1
        assert d["tcp.bytes_missing"] == len(msgs[2])
        accounted(c.parser)

    def test_a_lost_segment_is_given_up_after_the_gap_timeout(self) -> None:
        c = Conn(parser(tcp={"gap_timeout_ms": 100}))
        c.handshake()
        segs = c.segments(message(1) + BIG + message(2), 500)
        lost = 3
        for s in segs[:lost] + segs[lost + 1 :]:
            c.send(s)
        assert call_ids(c.out) == ["call-1"]  # waiting for the hole
        c.ts += 200_000
        c.stream(message(3))
        assert call_ids(c.out) == ["call-1", "call-2", "call-3"]
        d = drops(c)
        assert (d["parse.drop.tcp_gap"], d["tcp.bytes_missing"]) == (1, 500)
        assert c.parser.stats()["tcp.bytes_dropped"] > 0  # the INVITE the hole cut
        accounted(c.parser)

    def test_a_hole_at_the_end_of_capture_is_given_up_by_drain(self) -> None:
        c = Conn(parser())
        c.handshake()
        segs = c.segments(BIG + message(2) + message(3), 1000)
        for s in segs[1:]:
            c.send(s)
        assert c.out == []
        out: list[OutputPacket] = []
        c.parser.drain(out)
        assert call_ids(out) == ["call-2", "call-3"]
        accounted(c.parser)

    def test_expire_gives_up_old_holes_messages_go_out_with_the_next_segment(self) -> None:
        p = parser(tcp={"gap_timeout_ms": 100})
        c = Conn(p)
        c.handshake()
        segs = c.segments(BIG + message(2), 1000)
        for s in segs[1:]:
            c.send(s)
        p.expire(c.ts + 1_000_000)
        assert c.out == []
        other = Conn(p, client=("10.9.9.9", 40000))
        other.handshake()  # any later segment carries the messages out
        assert call_ids(other.out) == ["call-2"]

    def test_a_jump_far_beyond_the_window(self) -> None:
        c = Conn(parser(tcp={"max_stream_buffer": 8192}))
        c.handshake()
        c.stream(message(1) + BIG[:100])
        c.seq[0] += 1_000_000
        c.stream(message(2))
        assert call_ids(c.out) == ["call-1", "call-2"]
        d = drops(c)
        assert (d["parse.drop.tcp_gap"], d["tcp.bytes_missing"]) == (1, 1_000_000)
        accounted(c.parser)


class TestFraming:
    def test_no_content_length_is_a_framing_error_then_resync(self) -> None:
        no_cl = message(1).replace(b"Content-Length: 0\r\n", b"")
        c = Conn(parser())
        c.handshake()
        c.stream(no_cl + message(2), 90)
        assert call_ids(c.out) == ["call-2"]
        assert drops(c) == {"parse.drop.tcp_framing": 1}
        accounted(c.parser)

    def test_content_length_not_a_number(self) -> None:
        bad = message(1).replace(b"Content-Length: 0", b"Content-Length: zero")
        c = Conn(parser())
        c.handshake()
        c.stream(bad + message(2))
        assert call_ids(c.out) == ["call-2"]
        assert drops(c) == {"parse.drop.tcp_framing": 1}

    def test_too_large_is_skipped_by_its_length_staying_in_step(self) -> None:
        c = Conn(parser(max_message_size=1024))
        c.handshake()
        c.stream(message(1) + BIG + message(2), 300)
        assert call_ids(c.out) == ["call-1", "call-2"]
        assert drops(c) == {"parse.drop.too_large": 1}  # no resync needed
        assert c.parser.stats()["tcp.bytes_dropped"] == len(BIG)
        accounted(c.parser)

    def test_content_length_far_beyond_the_bound(self) -> None:
        huge = message(1).replace(b"Content-Length: 0", b"Content-Length: 50000000")
        c = Conn(parser())
        c.handshake()
        c.stream(huge + b"x" * 200_000, 1460)
        s = c.parser.stats()
        assert s["parse.drop.too_large"] == 1
        assert s["tcp.buffered_bytes"] == 0  # skipped as it comes, never held
        accounted(c.parser)

    def test_endless_header_is_dropped_and_the_stream_resynchronises(self) -> None:
        endless = b"INVITE sip:bob@b.example SIP/2.0\r\nX-Endless: " + b"B" * 300_000
        c = Conn(parser())
        c.handshake()
        c.stream(endless + b"\r\n" + message(2), 1460)
        assert call_ids(c.out) == ["call-2"]
        s = c.parser.stats()
        assert s["parse.drop.too_large"] == 1
        assert s["tcp.buffered_bytes"] == 0
        accounted(c.parser)

    def test_non_sip_bytes_at_a_boundary(self) -> None:
        c = Conn(parser())
        c.handshake()
        c.stream(message(1) + b"\x16\x03\x01 garbage\r\nmore\r\n" + message(2), 64)
        assert call_ids(c.out) == ["call-1", "call-2"]
        assert drops(c) == {"parse.drop.tcp_resync": 1}


class TestBounds:
    def test_total_buffer_bound(self) -> None:
        p = parser(tcp={"max_total_buffer": 1 << 20})
        assert len(BIG) > 4000
        for i in range(400):  # 400 flows, each 4 KB into a message that never ends
            c = Conn(p, client=("10.1.0.1", 10_000 + i))
            c.handshake()
            c.stream(BIG[:4000])
            assert p.stats()["tcp.buffered_bytes"] <= (1 << 20) + 4000
        s = p.stats()
        assert s["parse.drop.tcp_memory"] > 0
        accounted(p)

    def test_flow_bound_evicts_the_least_recently_used(self) -> None:
        p = parser(tcp={"max_flows": 16})
        conns = []
        for i in range(40):
            c = Conn(p, client=("10.1.0.1", 10_000 + i))
            c.handshake()
            c.stream(BIG[:100])
            conns.append(c)
        s = p.stats()
        assert (s["flows.active"], s["flows.evicted"]) == (16, 24)
        assert s["parse.drop.tcp_closed"] == 24
        conns[-1].stream(BIG[100:])  # a recent flow is intact
        assert call_ids(conns[-1].out) == ["call-1"]
        accounted(p)

    def test_out_of_order_bytes_are_bounded_per_direction(self) -> None:
        p = parser(tcp={"max_stream_buffer": 8192, "max_out_of_order": 1024})
        c = Conn(p)
        c.handshake()
        segs = c.segments(b"".join(message(i) for i in range(200)), 100)
        for s in segs[1:]:
            c.send(s)
            assert p.stats()["tcp.buffered_bytes"] <= 8192
        assert p.stats()["parse.drop.tcp_gap"] >= 1
        accounted(p)


class TestCanHandle:
    def test_control_segments_of_sip_flows(self) -> None:
        p = parser()
        c = Conn(p)
        assert p.can_handle(c.packet(b"", flags=SYN))
        assert p.can_handle(c.packet(b"", flags=FIN | ACK))
        assert p.can_handle(c.packet(b"", flags=RST))
        assert not p.can_handle(c.packet(b"", flags=ACK))  # pure ACKs carry nothing

    def test_other_ports_once_the_flow_is_known(self) -> None:
        p = parser()
        c = Conn(p, client=("10.0.0.1", 40000), server=("10.0.0.2", 40001))
        segs = c.segments(BIG, 1000)
        assert p.can_handle(segs[0])  # starts with a SIP start line
        assert not p.can_handle(segs[1])  # unknown flow, SDP bytes
        c.send(segs[0])
        assert all(p.can_handle(s) for s in segs[1:])
        for s in segs[1:]:
            c.send(s)
        assert call_ids(c.out) == ["call-1"]
        assert p.can_handle(c.packet(b"", flags=FIN | ACK))


# -- the identity under any mangling ------------------------------------------------------


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(
    st.lists(st.integers(-1, 80), min_size=1, max_size=8),
    st.lists(st.integers(1, 1500), min_size=1, max_size=10),
    st.randoms(use_true_random=False),
    st.booleans(),
)
def test_any_segmentation_and_mangling(
    bodies: list[int], sizes: list[int], rng: random.Random, lossy: bool
) -> None:
    """Every byte accounted; without loss every message exactly once, in order; with loss
    only real messages, each at most once."""
    p = parser(tcp={"max_out_of_order": 8, "max_stream_buffer": 16384})
    c = Conn(p, isn=(rng.randrange(1 << 32), rng.randrange(1 << 32)))
    c.handshake()
    data = b"".join(message(i, body_lines=b) for i, b in enumerate(bodies))
    segs = c.segments(data, sizes)
    mangled = []
    for s in segs:
        x = rng.random()
        if lossy and x < 0.1:
            continue
        mangled.append(s)
        if x > 0.85:
            mangled.append(s)
    # Reordered, each segment by fewer places than the out-of-order window holds (adjacent swaps
    # could carry one segment arbitrarily far: past the window it is a counted loss, not a bug).
    keys = [i + rng.random() * 4 for i in range(len(mangled))]
    mangled = [s for _, s in sorted(zip(keys, mangled, strict=True), key=lambda ks: ks[0])]
    for s in mangled:
        c.send(s)
    c.close()
    out: list[OutputPacket] = []
    p.drain(out)
    got = call_ids(c.out + out)
    want = [f"call-{i}" for i in range(len(bodies))]
    if not lossy:
        assert got == want
    else:
        assert len(set(got)) == len(got) and set(got) <= set(want)
    assert p.stats()["tcp.buffered_bytes"] == 0
    accounted(p)
