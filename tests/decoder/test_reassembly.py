"""IPv4/IPv6 fragment reassembly: orders, duplicates, overlaps, limits, timeouts, tunnels."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    fragment6,
)
from scapy.layers.l2 import Dot1Q
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, raw

from otus.core.packet import Encap, Tunnel
from otus.decoder import Decoder, DecoderOptions
from otus.decoder.reassembly import Reassembler
from tests.decoder.frames import assert_balanced, decode_all, drops, eth

BIG = bytes(range(256)) * 16  # 4096 bytes: four or more fragments at 1500


def udp4(payload: bytes = BIG, ident: int = 1, src: str = "10.0.0.1") -> Packet:
    return IP(src=src, dst="10.0.0.2", id=ident) / UDP(sport=5060, dport=5060) / payload


def frags4(pkt: Packet, size: int = 1480) -> list[bytes]:
    return [raw(eth(f)) for f in fragment(pkt, fragsize=size)]


def frag4(data: bytes, offset: int, more: bool, ident: int = 7, proto: int = 17) -> bytes:
    """One hand-made IPv4 fragment (``offset`` in bytes)."""
    ip = IP(
        src="10.0.0.1",
        dst="10.0.0.2",
        id=ident,
        proto=proto,
        frag=offset // 8,
        flags="MF" if more else 0,
    )
    return raw(eth(ip / data))


def udp_bytes(payload: bytes, ulen: int | None = None) -> bytes:
    """A UDP header and payload as the fragmentable part of a hand-made datagram."""
    return raw(UDP(sport=1, dport=2, len=ulen, chksum=0) / payload)


def test_in_order() -> None:
    fr = frags4(udp4())
    assert len(fr) >= 3
    out, d = decode_all(fr, ts=[10, 20, 30])
    assert len(out) == 1
    p = out[0]
    assert (p.src_ip, p.dst_ip, p.src_port, p.dst_port, p.payload) == (
        "10.0.0.1",
        "10.0.0.2",
        5060,
        5060,
        BIG,
    )
    assert p.reassembled
    assert p.ts_us == 30  # the completing fragment's
    s = d.stats()
    assert s["reassembly.fragments"] == s["reassembly.merged"] == 3
    assert s["reassembly.datagrams"] == 1
    assert s["decode.packets"] == 0
    assert s["reassembly.pending_datagrams"] == s["reassembly.pending_bytes"] == 0


@pytest.mark.parametrize("seed", range(8))
def test_any_order(seed: int) -> None:
    fr = frags4(udp4(), size=512)
    order = list(range(len(fr)))
    random.Random(seed).shuffle(order)
    if seed == 0:
        order.reverse()
    out, _ = decode_all([fr[i] for i in order])
    assert len(out) == 1
    assert out[0].payload == BIG


def test_reassembled_gets_first_fragments_encap_and_vlan_keys_apart() -> None:
    """Equal fragments in two VLANs are two datagrams (overlapping tenant addresses)."""
    a = [raw(eth(Dot1Q(vlan=1) / f)) for f in fragment(udp4(b"A" * 3000), 1480)]
    b = [raw(eth(Dot1Q(vlan=2) / f)) for f in fragment(udp4(b"B" * 3000), 1480)]
    out, _ = decode_all([a[0], b[0], a[1], b[1], a[2], b[2]])
    assert [(p.payload[:1], p.encap) for p in out] == [
        (b"A", Encap([1], [])),
        (b"B", Encap([2], [])),
    ]


def test_duplicates_are_ignored_and_counted() -> None:
    fr = frags4(udp4())
    out, d = decode_all([fr[0], fr[0], fr[1], fr[1], fr[0], fr[2]])
    assert len(out) == 1
    assert out[0].payload == BIG
    s = d.stats()
    assert s["reassembly.drop.duplicate"] == 3
    assert s["reassembly.merged"] == 3


def test_duplicate_after_completion_starts_a_new_datagram() -> None:
    fr = frags4(udp4())
    out, d = decode_all([*fr, fr[1]])
    assert len(out) == 1
    assert d.stats()["reassembly.pending_fragments"] == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, b"a" * 24, True), (8, b"x" * 16, True)),  # inside the first
        ((0, b"a" * 24, True), (0, b"y" * 24, True)),  # same offset and length, other bytes
        ((0, b"a" * 24, True), (16, b"z" * 32, True)),  # straddles the end of the first
        ((24, b"a" * 24, True), (24, b"a" * 24, False)),  # same bytes, but claims to be last
    ],
)
def test_any_overlap_discards_the_whole_datagram(
    first: tuple[int, bytes, bool], second: tuple[int, bytes, bool]
) -> None:
    frames = [frag4(b"q" * 64, 64, True), frag4(first[1], first[0], first[2])]
    frames += [frag4(second[1], second[0], second[2]), frag4(b"end", 128, False)]
    out, d = decode_all(frames)
    assert out == []
    s = d.stats()
    assert s["reassembly.drop.overlap"] == 3  # both held and the new one
    assert s["reassembly.pending_fragments"] == 1  # the last one starts a new datagram


def test_inconsistent_last_fragments() -> None:
    frames = [frag4(b"a" * 16, 0, True), frag4(b"c" * 8, 32, False), frag4(b"b" * 8, 16, False)]
    _, d = decode_all(frames)
    assert drops(d) == {"reassembly.drop.inconsistent": 3}
    frames = [frag4(b"a" * 16, 0, True), frag4(b"b" * 8, 64, True), frag4(b"c" * 8, 32, False)]
    _, d = decode_all(frames)
    assert drops(d) == {"reassembly.drop.inconsistent": 3}
    frames = [frag4(b"c" * 8, 32, False), frag4(b"b" * 8, 64, True)]
    _, d = decode_all(frames)
    assert drops(d) == {"reassembly.drop.inconsistent": 2}


def test_fragment_lengths_must_be_multiples_of_8() -> None:
    frames = [frag4(b"a" * 12, 0, True), frag4(b"", 8, True)]
    _, d = decode_all(frames)
    assert drops(d) == {"reassembly.drop.malformed": 2}


def test_too_many_fragments() -> None:
    fr = frags4(udp4(), size=704)
    assert len(fr) == 6
    out, d = decode_all(fr, max_fragments=4)
    assert out == []
    s = d.stats()
    assert s["reassembly.drop.too_many_fragments"] == 5
    assert s["reassembly.pending_fragments"] == len(fr) - 5


def test_too_big() -> None:
    frames = [frag4(b"a" * 64, 0, True), frag4(b"b" * 120, 65528 - 120 - 8 + 8, False)]
    _, d = decode_all(frames)
    assert drops(d) == {"reassembly.drop.too_big": 2}
    fits = [frag4(udp_bytes(b"", 8 + 65488), 0, True), frag4(b"b" * 65488, 8, False)]
    out, d = decode_all(fits)  # 20 + 8 + 65488 = 65516: fits
    assert len(out) == 1
    assert len(out[0].payload) == 65488


def test_configured_size_limit() -> None:
    fr = frags4(udp4(), size=1480)
    _, d = decode_all(fr, max_datagram_size=3000)
    assert d.stats()["reassembly.drop.too_big"] >= 2


def test_timeout_by_expire() -> None:
    fr = frags4(udp4())
    _, d = decode_all(fr[:2], ts=[1_000_000, 2_000_000])
    d.expire(31_000_000)  # 30 s after the first fragment: not yet older than the timeout
    assert d.stats()["reassembly.pending_datagrams"] == 1
    d.expire(31_000_001)
    assert drops(d) == {"reassembly.drop.timeout": 2}
    assert_balanced(d)


def test_timeout_by_later_packet_timestamps() -> None:
    fr = frags4(udp4())
    d = Decoder(DecoderOptions(reassembly_timeout_us=5_000_000))
    decode_all(fr[:2], decoder=d, ts=[0, 1])
    plain = raw(eth(IP(src="1.1.1.1", dst="2.2.2.2") / UDP() / b"x"))
    out, _ = decode_all([plain], decoder=d, ts=[6_000_000])
    assert len(out) == 1
    assert drops(d) == {"reassembly.drop.timeout": 2}
    # A fragment completing a stale datagram finds it expired and starts over.
    d2 = Decoder(DecoderOptions(reassembly_timeout_us=5_000_000))
    out, _ = decode_all(fr, decoder=d2, ts=[0, 1, 9_000_000])
    assert out == []
    assert drops(d2) == {"reassembly.drop.timeout": 2}


def test_eviction_drops_the_oldest_datagram() -> None:
    a, b, c, e = (frags4(udp4(ident=i)) for i in (1, 2, 3, 4))
    # c[0] evicts a[0]; b completes; a[1] starts over; e[0] evicts c[0], now the oldest.
    out, d = decode_all([a[0], b[0], c[0], b[1], b[2], a[1], e[0]], max_datagrams=2)
    assert drops(d) == {"reassembly.drop.evicted": 2}
    assert [p.payload for p in out] == [BIG]
    assert d.stats()["reassembly.pending_datagrams"] == 2


def test_reassembly_off() -> None:
    fr = frags4(udp4())
    out, d = decode_all(fr, ip_reassembly=False)
    assert out == []
    assert drops(d) == {"decode.drop.fragment": len(fr)}


def test_fragments_of_icmp_are_not_held() -> None:
    fr = [raw(eth(f)) for f in fragment(IP(src="1.1.1.1", dst="2.2.2.2", proto=1) / BIG, 1480)]
    _, d = decode_all(fr)
    assert drops(d) == {"decode.drop.not_udp_tcp": len(fr)}


def test_completed_datagram_that_does_not_decode_counts_its_frames() -> None:
    frames = [frag4(udp_bytes(b"x" * 24, ulen=9000), 0, True), frag4(b"y" * 16, 32, False)]
    out, d = decode_all(frames)
    assert out == []
    assert drops(d) == {"reassembly.drop.bad_length": 2}


def v6frags(inner: Packet, size: int = 1280, chain: Packet | None = None) -> list[bytes]:
    pkt = IPv6(src="2001:db8::1", dst="2001:db8::2")
    if chain is not None:
        pkt = pkt / chain
    pkt = pkt / IPv6ExtHdrFragment(id=0xDEADBEEF) / inner
    return [raw(eth(f)) for f in fragment6(pkt, size)]


@pytest.mark.parametrize(
    "chain", [None, IPv6ExtHdrHopByHop(), IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()]
)
def test_ipv6(chain: Packet | None) -> None:
    fr = v6frags(UDP(sport=5060, dport=5062) / BIG, chain=chain)
    assert len(fr) >= 4
    out, d = decode_all(list(reversed(fr)))
    assert len(out) == 1
    p = out[0]
    assert (p.src_ip, p.dst_ip, p.dst_port, p.payload, p.reassembled) == (
        "2001:db8::1",
        "2001:db8::2",
        5062,
        BIG,
        True,
    )
    assert d.stats()["reassembly.merged"] == len(fr)


def test_ipv6_with_destination_options_after_the_fragment_header() -> None:
    fr = v6frags(IPv6ExtHdrDestOpt() / UDP(sport=5060, dport=5062) / BIG)
    out, _ = decode_all(fr)
    assert len(out) == 1
    assert out[0].payload == BIG


def test_ipv6_overlap() -> None:
    fr = v6frags(UDP() / BIG)
    data = bytearray(fr[1])
    data[-5] ^= 0xFF  # same offset and length, different bytes
    out, d = decode_all([fr[0], fr[1], bytes(data), *fr[2:]])
    assert out == []
    assert d.stats()["reassembly.drop.overlap"] == 3


def test_fragmented_vxlan_outer() -> None:
    """The outer packet is fragmented: reassembled first, then the inner packet decoded."""
    inner = eth(IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=5060, dport=5060) / BIG)
    outer = (
        IP(src="192.168.0.1", dst="192.168.0.2")
        / UDP(sport=40000, dport=4789)
        / VXLAN(vni=3)
        / inner
    )
    fr = [raw(eth(Dot1Q(vlan=8) / f)) for f in fragment(outer, 1480)]
    out, _ = decode_all(list(reversed(fr)))
    assert len(out) == 1
    p = out[0]
    assert (p.src_ip, p.payload, p.reassembled) == ("10.9.0.1", BIG, True)
    assert p.encap == Encap([8], [Tunnel("vxlan", "192.168.0.1", "192.168.0.2", 3)])


def test_fragments_inside_a_tunnel_key_by_tunnel() -> None:
    inner = [f for f in fragment(udp4(), 1480)]

    def wrap(vni: int, f: Packet) -> bytes:
        return raw(
            eth(
                IP(src="192.168.0.1", dst="192.168.0.2") / UDP(dport=4789) / VXLAN(vni=vni) / eth(f)
            )
        )

    frames = [wrap(1, inner[0]), wrap(2, inner[1]), wrap(1, inner[1]), wrap(1, inner[2])]
    out, d = decode_all(frames)
    assert len(out) == 1
    assert out[0].encap == Encap([], [Tunnel("vxlan", "192.168.0.1", "192.168.0.2", 1)])
    assert d.stats()["reassembly.pending_fragments"] == 1


def test_fragments_inside_fragments() -> None:
    """Inner fragments carried by a fragmented outer: each outer datagram is one inner piece."""
    inner = [f for f in fragment(udp4(), 1480)]
    frames: list[bytes] = []
    for i, f in enumerate(inner):
        outer = (
            IP(src="192.168.0.1", dst="192.168.0.2", id=100 + i)
            / UDP(sport=1, dport=4789)
            / VXLAN(vni=5)
            / eth(f)
        )
        frames += [raw(eth(x)) for x in fragment(outer, 800)]
    out, d = decode_all(frames)
    assert len(out) == 1
    assert out[0].payload == BIG
    s = d.stats()
    assert s["reassembly.fragments"] == s["reassembly.merged"] == len(frames)
    assert s["reassembly.datagrams"] == 1


def test_flood_of_never_completed_fragments_stays_bounded() -> None:
    """200k first fragments with distinct ids: state stays within the configured limits."""
    opts = DecoderOptions(max_datagrams=1024, max_fragments=64)
    d = Decoder(opts)
    template = bytearray(frag4(udp_bytes(b"x" * 64), 0, True, ident=0))
    n = 200_000
    from otus.core.packet import RawBatch

    for start in range(0, n, 1000):
        frames = []
        for i in range(start, start + 1000):
            template[18:20] = (i & 0xFFFF).to_bytes(2, "big")
            template[26:28] = (i >> 16).to_bytes(2, "big")  # vary the source too: ids wrap
            frames.append(bytes(template))
        d.decode_batch(RawBatch(1, frames, [start] * len(frames)), [])
        s = d.stats()
        assert s["reassembly.pending_datagrams"] <= 1024
        assert s["reassembly.pending_bytes"] <= 1024 * 72
    s = assert_balanced(d)
    assert s["reassembly.fragments"] == n
    assert s["reassembly.drop.evicted"] == n - 1024
    assert len(d._walker.reasm) == 1024


def test_reassembler_weights_and_pending_gauges() -> None:
    r = Reassembler(4, 8, 65535, 10)
    assert r.add("k", 0, 8, False, b"b" * 8, 20, 17, None, weight=3, fresh=False) is None
    assert (r.fragments, r.pending_fragments, r.pending_bytes) == (0, 3, 8)
    done = r.add("k", 1, 0, True, b"a" * 8, 20, 17, "ctx")
    assert done == (b"a" * 8 + b"b" * 8, 4, 17, None)
    assert (r.fragments, r.pending_fragments, r.pending_bytes) == (1, 0, 0)


def test_held_bytes_bounded_by_limits_in_memory_too() -> None:
    """Big fragments that never complete: traced memory stays near the configured bound."""
    import tracemalloc

    from otus.core.packet import RawBatch

    opts = DecoderOptions(max_datagrams=64, max_fragments=64)
    d = Decoder(opts)
    bound = opts.max_datagrams * opts.max_datagram_size
    chunk = b"z" * 1480
    template = frag4(chunk, 1480, True, ident=0)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for ident in range(200):
            frames = []
            for k in range(1, 44):  # never offset 0: never complete
                f = bytearray(template)
                f[18:20] = ident.to_bytes(2, "big")
                f[20:22] = (0x2000 | (k * 1480 // 8)).to_bytes(2, "big")
                frames.append(bytes(f))
            d.decode_batch(RawBatch(1, frames, [ident] * len(frames)), [])
            assert d.stats()["reassembly.pending_bytes"] <= bound
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    s = assert_balanced(d)
    assert s["reassembly.pending_bytes"] > bound // 2  # the test did fill the reassembler
    assert held < bound * 1.25 + 2_000_000, held
