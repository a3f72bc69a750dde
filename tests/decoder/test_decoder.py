"""The Decoder API, its counters, and the fast path agreeing with the general path."""

from __future__ import annotations

import random

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
from scapy.layers.l2 import ARP, GRE, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw, raw

import otus.decoder
from otus.core.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    DecodedPacket,
    RawBatch,
    RawPacket,
)
from otus.core.stats import GAUGES, format_summary
from otus.decoder import Decoder, DecoderOptions
from otus.decoder.common import DECODE_DROPS, REASSEMBLY_DROPS
from tests.decoder.frames import (
    SIP,
    assert_balanced,
    decode_all,
    drops,
    eth,
    general,
    general_and_drops,
    sip_udp4,
)


def test_exports() -> None:
    assert otus.decoder.__all__ == ["Decoder", "DecoderOptions"]
    assert Decoder().options == DecoderOptions()
    assert Decoder(None).options == DecoderOptions()


def test_decode_one_packet() -> None:
    d = Decoder()
    p = d.decode(RawPacket(raw(eth(sip_udp4())), 1_700_000_000_123_456))
    assert isinstance(p, DecodedPacket)
    assert p.ts_us == 1_700_000_000_123_456
    assert d.decode(RawPacket(raw(eth(ARP())), 2)) is None
    s = assert_balanced(d)
    assert (s["decode.frames"], s["decode.packets"], s["decode.drop.not_ip"]) == (2, 1, 1)


def test_decode_batch_appends_and_keeps_timestamps() -> None:
    out: list[DecodedPacket] = [DecodedPacket(0, "a", "b", 1, 2, 17, b"")]
    frames = [raw(eth(sip_udp4(sport=i))) for i in range(1, 4)]
    Decoder().decode_batch(RawBatch(LINKTYPE_ETHERNET, frames, [30, 10, 20]), out)
    assert [(p.src_port, p.ts_us) for p in out] == [(1, 0), (1, 30), (2, 10), (3, 20)]


def test_empty_batch() -> None:
    d = Decoder()
    out: list[DecodedPacket] = []
    d.decode_batch(RawBatch(LINKTYPE_ETHERNET), out)
    d.decode_batch(RawBatch(147), out)
    assert out == []
    assert assert_balanced(d)["decode.frames"] == 0


def test_stats_names_follow_the_rules() -> None:
    s = Decoder().stats()
    for reason in DECODE_DROPS:
        assert s["decode.drop." + reason] == 0
    for reason in REASSEMBLY_DROPS:
        assert s["reassembly.drop." + reason] == 0
    for gauge in ("pending_datagrams", "pending_fragments", "pending_bytes"):
        assert "reassembly." + gauge in GAUGES
        assert s["reassembly." + gauge] == 0
    assert all(k.startswith(("decode.", "reassembly.")) for k in s)
    assert all(isinstance(v, int) for v in s.values())


def test_summary_line_shows_drops() -> None:
    _, d = decode_all([eth(sip_udp4()), eth(ARP()), b"\x00"])
    line = format_summary(d.stats())
    assert "decoded=1" in line
    assert "decode.not_ip=1" in line
    assert "decode.truncated=1" in line


def test_never_raises_on_wrong_types() -> None:
    """Not bytes at all is a caller bug, still counted, never raised."""
    d = Decoder()
    out: list[DecodedPacket] = []
    d.decode_batch(RawBatch(LINKTYPE_ETHERNET, [None, 5, "t" * 60], [1, 2, 3]), out)  # type: ignore[list-item]
    assert out == []
    assert d.stats()["decode.drop.internal_error"] == 3


def corpus() -> list[bytes]:
    """Many shapes, each in several variants, for the fast/general comparison."""
    out4 = IP(src="192.168.0.1", dst="192.168.0.2")
    shapes = []
    for i in range(4):
        inner = IP(src=f"10.0.0.{i}", dst="10.0.1.1") / UDP(sport=5060 + i, dport=5060) / SIP
        inner6 = (
            IPv6(src=f"2001:db8::{i}", dst="2001:db8::ff")
            / TCP(sport=i, dport=5060, flags="PA", seq=i)
            / SIP
        )
        shapes += [
            eth(inner),
            eth(inner6),
            eth(Dot1Q(vlan=i) / inner),
            eth(Dot1Q(vlan=i, prio=i) / inner),
            eth(Dot1Q(vlan=i) / inner6),
            eth(
                IP(src=f"10.0.0.{i}", dst="10.0.1.1")
                / TCP(sport=5060, options=[("MSS", i + 1)])
                / SIP
            ),
            eth(out4 / UDP(dport=4789) / VXLAN(vni=i) / eth(inner)),
            eth(
                Dot1Q(vlan=7) / out4 / UDP(dport=4789) / VXLAN(vni=i) / eth(Dot1Q(vlan=i) / inner6)
            ),
            eth(out4 / UDP(dport=4789) / VXLAN(vni=i, flags=0) / eth(inner)),
            eth(out4 / GRE(key_present=i & 1, key=i) / inner),
            eth(out4 / GRE(proto=0x86DD, chksum_present=1) / inner6),
            eth(out4 / GRE(proto=0x6558, seqnum_present=1) / eth(Dot1Q(vlan=3) / inner)),
            eth(out4 / GRE(proto=0x88BE, seqnum_present=1) / ERSPAN_II(session_id=i) / eth(inner)),
            eth(out4 / GRE(proto=0x88BE) / eth(inner)),
            eth(
                out4
                / GRE(proto=0x22EB)
                / ERSPAN_III(session_id=i, o=i & 1)
                / (bytes(8) if i & 1 else b"")
                / eth(inner)
            ),
            eth(out4 / GRE(proto=0x22EB) / ERSPAN_III(ft=2) / inner),
            eth(out4 / GRE(version=1) / inner),
            eth(
                out4
                / UDP(dport=4789)
                / VXLAN(vni=i)
                / eth(out4 / UDP(dport=4789) / VXLAN(vni=9) / eth(inner))
            ),
            eth(
                out4
                / UDP(dport=4789)
                / VXLAN(vni=i)
                / eth(IP(src="1.1.1.1", dst="2.2.2.2", flags="MF") / UDP() / SIP)
            ),
            eth(Dot1AD(vlan=i) / Dot1Q(vlan=i + 1) / inner),
            eth(Dot1AD(vlan=i) / Dot1Q(vlan=i + 1) / inner6),
            eth(Dot1Q(vlan=i) / Dot1Q(vlan=i + 1) / inner),
            eth(Dot1AD(vlan=i) / inner),
            eth(Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / inner),
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x9100)
            / Dot1Q(vlan=i)
            / Dot1Q(vlan=5)
            / inner,
            eth(
                Dot1AD(vlan=i) / Dot1Q(vlan=2) / out4 / UDP(dport=4789) / VXLAN(vni=i) / eth(inner)
            ),
            eth(out4 / UDP(dport=6081) / GENEVE(vni=i, proto=0x6558) / eth(Dot1Q(vlan=i) / inner)),
            eth(out4 / UDP(dport=6081) / GENEVE(vni=i, proto=0x86DD) / inner6),
            eth(
                out4
                / UDP(dport=6081)
                / Raw(bytes([i, 0, 0x65, 0x58, 0, 0, 9, 0]) + bytes(4 * i))
                / eth(inner)
            ),
            eth(out4 / UDP(dport=6081) / GENEVE(version=1, proto=0x6558) / eth(inner)),
            eth(out4 / inner),
            eth(out4 / inner6),
            eth(IPv6(src="fd00::1", dst="fd00::2") / inner),
            eth(IPv6(src="fd00::1", dst="fd00::2") / inner6),
            eth(Dot1Q(vlan=i) / out4 / inner),
            eth(out4 / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(dport=4789) / VXLAN() / eth(inner)),
            eth(out4 / GRE(proto=0x6558) / eth(Dot1Q(vlan=1) / Dot1Q(vlan=2) / inner)),
            eth(out4 / GRE(proto=0x6558) / eth(Dot1Q(vlan=1) / inner6)),
            eth(out4 / GRE(proto=0x6558) / eth(ARP())),
            eth(ARP()),
            eth(Dot1Q(vlan=i) / ARP()),
            eth(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP()),
            eth(IP(src="1.1.1.1", dst="2.2.2.2", len=10) / ICMP()),
            eth(IPv6(src="::1", dst="::2") / ICMPv6ND_NS(tgt="::3")),
            eth(Dot1Q(vlan=i) / IPv6(src="::1", dst="::2") / ICMPv6ND_NS(tgt="::3")),
        ]
    frames = [raw(s) for s in shapes]
    rng = random.Random(7)
    mutated = []
    for f in frames * 3:  # the fast path must fall back, not mis-decode, on any damage
        b = bytearray(f)
        pos = rng.randrange(len(b))
        b[pos] = rng.randrange(256)
        mutated.append(bytes(b))
    return frames + mutated


def test_fast_path_equals_general_path() -> None:
    """Same packet, or the same drop reason, for every frame of the corpus."""
    for i, f in enumerate(corpus()):
        d = Decoder()
        out: list[DecodedPacket] = []
        d.decode_batch(RawBatch(LINKTYPE_ETHERNET, [f], [1]), out)
        ref, ref_drops = general_and_drops(f)
        assert (out[0] if out else None) == ref, (i, f.hex())
        assert drops(d) == ref_drops, (i, f.hex())
        assert_balanced(d, len(out))


@pytest.mark.parametrize("linktype", [LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2])
def test_fast_path_equals_general_path_cooked(linktype: int) -> None:
    """The same corpus under Linux cooked headers (the ethertype kept, MACs dropped)."""
    for f in corpus():
        if linktype == LINKTYPE_LINUX_SLL:
            frame = bytes([0, 0, 0, 1, 0, 6]) + f[6:12] + b"\x00\x00" + f[12:]
        else:
            frame = (
                f[12:14] + bytes(2) + bytes([0, 0, 0, 2, 0, 1, 0, 6]) + f[6:12] + bytes(2) + f[14:]
            )
        d = Decoder()
        out: list[DecodedPacket] = []
        d.decode_batch(RawBatch(linktype, [frame], [1]), out)
        ref, ref_drops = general_and_drops(frame, linktype)
        assert (out[0] if out else None) == ref, frame.hex()
        assert drops(d) == ref_drops, frame.hex()


def test_fast_path_equals_general_path_with_tunnels_off() -> None:
    frames = corpus()
    for opts in ({"tunnels": frozenset()}, {"tunnels": frozenset({"erspan", "geneve"})}):
        for f in frames:
            d = Decoder(DecoderOptions(**opts))  # type: ignore[arg-type]
            out: list[DecodedPacket] = []
            d.decode_batch(RawBatch(LINKTYPE_ETHERNET, [f], [1]), out)
            ref, ref_drops = general_and_drops(f, **opts)
            assert (out[0] if out else None) == ref, f.hex()
            assert drops(d) == ref_drops, f.hex()


def test_fast_path_shared_encaps_differ_per_tunnel_and_vlan() -> None:
    frames = corpus()
    out, _ = decode_all(frames, ts=[1] * len(frames))
    ref = [p for p in (general(f) for f in frames) if p is not None]
    assert out == ref


def test_linux_cooked_v2_fast_path_rejects_tags() -> None:
    frames = [
        b"\x81\x00" + bytes(18) + b"\x00\x05\x08\x00" + raw(sip_udp4()),
        b"\x08\x00" + bytes(18) + raw(sip_udp4()),
    ]
    out, _ = decode_all(frames, LINKTYPE_LINUX_SLL2)
    assert [p.encap.vlans if p.encap else [] for p in out] == [[5], []]
