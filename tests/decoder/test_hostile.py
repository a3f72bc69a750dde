"""Hostile input: every truncation of valid frames, lying lengths, random and mutated bytes."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.erspan import ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import GRE, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw, raw

from otus.core.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    DecodedPacket,
    RawBatch,
)
from otus.decoder import Decoder, DecoderOptions
from tests.decoder.frames import SIP, assert_balanced, decode_all, eth, sip_udp4

OUT4 = IP(src="192.168.1.1", dst="192.168.1.2")
INNER = sip_udp4()

VALID = [
    (LINKTYPE_ETHERNET, eth(sip_udp4())),
    (
        LINKTYPE_ETHERNET,
        eth(Dot1Q(vlan=10) / OUT4 / UDP(dport=4789) / VXLAN(vni=7) / eth(Dot1Q(vlan=20) / INNER)),
    ),
    (
        LINKTYPE_ETHERNET,
        eth(
            Dot1AD(vlan=1)
            / Dot1Q(vlan=2)
            / IP(src="1.1.1.1", dst="2.2.2.2", options=[IPOption_RR()])
            / TCP(options=[("MSS", 1460), ("NOP", None), ("WScale", 3)])
            / SIP
        ),
    ),
    (LINKTYPE_ETHERNET, eth(OUT4 / GRE(key_present=1, seqnum_present=1, chksum_present=1) / INNER)),
    (
        LINKTYPE_ETHERNET,
        eth(
            OUT4
            / GRE(proto=0x22EB, seqnum_present=1)
            / ERSPAN_III(o=1)
            / ERSPAN_PlatformSpecific()
            / eth(INNER)
        ),
    ),
    (
        LINKTYPE_ETHERNET,
        eth(
            OUT4 / UDP(dport=6081) / Raw(bytes.fromhex("0200655800002a00") + bytes(8)) / eth(INNER)
        ),
    ),
    (
        LINKTYPE_ETHERNET,
        eth(IPv6(src="::1", dst="::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP() / SIP),
    ),
    (
        LINKTYPE_ETHERNET,
        eth(IPv6(src="::1", dst="::2") / IPv6ExtHdrFragment(offset=0, m=1, id=5) / UDP() / SIP),
    ),
    (LINKTYPE_ETHERNET, eth(OUT4 / IPv6(src="::1", dst="::2") / INNER)),
    (LINKTYPE_LINUX_SLL, CookedLinux() / INNER),
    (LINKTYPE_LINUX_SLL2, CookedLinuxV2(proto=0x86DD) / IPv6(src="::1", dst="::2") / UDP() / SIP),
    (LINKTYPE_RAW, INNER),
    (LINKTYPE_NULL, b"\x02\x00\x00\x00" + raw(INNER)),
]
VALID_BYTES = [(lt, f if isinstance(f, bytes) else raw(f)) for lt, f in VALID]


@pytest.mark.parametrize(("linktype", "frame"), VALID_BYTES)
def test_every_truncation_is_counted_never_raised(linktype: int, frame: bytes) -> None:
    prefixes = [frame[:n] for n in range(len(frame))]
    out, d = decode_all(prefixes, linktype)
    # Nothing pads these frames: any cut leaves an IP length pointing past the end.
    assert out == []
    s = assert_balanced(d)
    assert s["decode.frames"] == len(frame)
    full, d = decode_all([frame], linktype)
    assert len(full) + d.stats()["reassembly.pending_fragments"] == 1


def test_truncated_fragments() -> None:
    frames = [
        raw(eth(f))
        for f in fragment(IP(src="1.1.1.1", dst="2.2.2.2") / UDP() / (b"x" * 3000), 1480)
    ]
    cut = [f[:n] for f in frames for n in range(0, len(f), 7)]
    out, d = decode_all(cut + frames)
    assert len(out) == 1  # only the whole fragments make the datagram
    assert_balanced(d)


@pytest.mark.parametrize("field", ["ip", "udp"])
def test_lying_lengths(field: str) -> None:
    frames = []
    for value in (0, 1, 7, 8, 27, 28, 29, 100, 1000, 65535):
        pkt = (
            IP(src="1.1.1.1", dst="2.2.2.2", len=value) / UDP() / SIP
            if field == "ip"
            else (IP(src="1.1.1.1", dst="2.2.2.2") / UDP(len=value) / SIP)
        )
        frames.append(eth(pkt))
    out, d = decode_all(frames)
    s = assert_balanced(d)
    assert s["decode.drop.bad_length"] + s["decode.drop.truncated"] == len(frames) - len(out)
    for p in out:  # what decodes is never longer than what the headers allow
        assert SIP.startswith(p.payload)


LINKTYPES = [
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_NULL,
    12345,
]


def _check(
    frames: list[bytes], linktype: int, decoder: Decoder | None = None
) -> list[DecodedPacket]:
    d = (
        decoder
        if decoder is not None
        else Decoder(DecoderOptions(max_datagrams=8, max_fragments=4))
    )
    out: list[DecodedPacket] = []
    d.decode_batch(RawBatch(linktype, frames, list(range(len(frames)))), out)
    assert_balanced(d, len(out))
    for p in out:
        assert isinstance(p.payload, bytes)
        assert 0 <= p.src_port <= 0xFFFF
        assert 0 <= p.dst_port <= 0xFFFF
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(LINKTYPES), st.lists(st.binary(max_size=200), max_size=20))
def test_random_bytes(linktype: int, frames: list[bytes]) -> None:
    _check(frames, linktype)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, list[bytes]]:
    """Valid frames with a few bytes changed, cut or inserted."""
    linktype, frame = draw(st.sampled_from(VALID_BYTES))
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "flip", "cut", "insert"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return linktype, [bytes(data)]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_valid_frames(case: tuple[int, list[bytes]]) -> None:
    _check(case[1], case[0])


_ETH4 = bytes(12) + b"\x08\x00"
_ETH6 = bytes(12) + b"\x86\xdd"
_A4 = bytes([1, 1, 1, 1, 2, 2, 2, 2])
_A6 = bytes(15) + b"\x01" + bytes(15) + b"\x02"


@st.composite
def fragment_storms(draw: st.DrawFn) -> list[bytes]:
    """Random IPv4/IPv6 fragments of a few datagrams: offsets, sizes, flags and ids collide."""
    frames = []
    for _ in range(draw(st.integers(1, 40))):
        ident = draw(st.integers(0, 3))
        offset = draw(st.integers(0, 24)) * 8
        more = draw(st.booleans())
        data = draw(st.sampled_from([b"\x00", b"\x01"])) * draw(st.sampled_from([0, 1, 8, 16, 40]))
        if draw(st.booleans()):
            frag = (0x2000 if more else 0) | offset >> 3
            ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(data), ident, frag, 64, 17, 0)
            frames.append(_ETH4 + ip + _A4 + data)
        else:
            ip = struct.pack("!IHBB", 0x60000000, 8 + len(data), 44, 64)
            frag = struct.pack("!BBHI", 17, 0, offset | int(more), ident)
            frames.append(_ETH6 + ip + _A6 + frag + data)
    return frames


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fragment_storms(), st.integers(1, 3))
def test_fragment_storms_balance(frames: list[bytes], split: int) -> None:
    d = Decoder(DecoderOptions(max_datagrams=3, max_fragments=5, reassembly_timeout_us=10))
    for i in range(split):
        _check(frames[i::split], LINKTYPE_ETHERNET, d)
    d.expire(10**9)
    s = assert_balanced(d)
    assert s["reassembly.pending_fragments"] == s["reassembly.pending_datagrams"] == 0


def test_random_corpus_seeded() -> None:
    """A larger fixed-seed corpus than hypothesis explores per run, all link types."""
    rng = random.Random(20240601)
    for linktype in LINKTYPES:
        frames = [rng.randbytes(rng.randrange(0, 120)) for _ in range(2000)]
        _check(frames, linktype)
