"""Tunnels: VXLAN, Geneve, GRE, gretap, ERSPAN I/II/III, IP-in-IP, and nestings of them."""

from __future__ import annotations

import itertools
import struct

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, Dot1AD, Dot1Q
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, raw

from otus.core.packet import IPPROTO_TCP, Encap, Tunnel
from tests.decoder.frames import SIP, decode_all, decode_one, drops, eth, sip_udp4

OUT4 = IP(src="192.168.1.1", dst="192.168.1.2")
OUT6 = IPv6(src="fd00::1", dst="fd00::2")
INNER4 = sip_udp4("10.0.0.1", "10.0.0.2")
INNER6 = IPv6(src="2001:db8::a", dst="2001:db8::b") / UDP(sport=5060, dport=5060) / SIP


def vx(vni: int = 42, dport: int = 4789) -> Packet:
    """Outer IPv4/UDP and a VXLAN header."""
    return OUT4 / UDP(sport=33333, dport=dport) / VXLAN(vni=vni, flags=0x08)


def inner_eth(inner: Packet) -> Packet:
    return eth(inner)


def check(
    p: object, src: str, dst: str, tunnels: list[Tunnel], vlans: list[int] | None = None
) -> None:
    assert p is not None
    assert (p.src_ip, p.dst_ip, p.payload) == (src, dst, SIP)  # type: ignore[attr-defined]
    assert p.encap == Encap(vlans or [], tunnels)  # type: ignore[attr-defined]


def test_vxlan() -> None:
    p = decode_one(eth(vx(4242) / inner_eth(INNER4)))
    check(p, "10.0.0.1", "10.0.0.2", [Tunnel("vxlan", "192.168.1.1", "192.168.1.2", 4242)])


def test_vxlan_inner_ipv6_and_tcp() -> None:
    p = decode_one(eth(vx() / inner_eth(INNER6)))
    check(p, "2001:db8::a", "2001:db8::b", [Tunnel("vxlan", "192.168.1.1", "192.168.1.2", 42)])
    seg = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=5060, dport=5060, flags="PA") / SIP
    q = decode_one(eth(vx() / inner_eth(seg)))
    assert q is not None
    assert (q.transport, q.payload, q.tcp_flags) == (IPPROTO_TCP, SIP, 0x18)


def test_vlan_vxlan_vlan_ip() -> None:
    """The nesting of the issue: outer VLAN, VXLAN, inner VLAN, IP."""
    frame = eth(Dot1Q(vlan=10) / vx(7) / eth(Dot1Q(vlan=20) / INNER4))
    p = decode_one(frame)
    check(p, "10.0.0.1", "10.0.0.2", [Tunnel("vxlan", "192.168.1.1", "192.168.1.2", 7, [20])], [10])


def test_qinq_vxlan_qinq() -> None:
    frame = eth(
        Dot1AD(vlan=1) / Dot1Q(vlan=2) / vx(7) / eth(Dot1AD(vlan=3) / Dot1Q(vlan=4) / INNER4)
    )
    p = decode_one(frame)
    check(
        p,
        "10.0.0.1",
        "10.0.0.2",
        [Tunnel("vxlan", "192.168.1.1", "192.168.1.2", 7, [3, 4])],
        [1, 2],
    )


def test_vxlan_over_ipv6() -> None:
    frame = eth(OUT6 / UDP(sport=1, dport=4789) / VXLAN(vni=9) / eth(INNER4))
    p = decode_one(frame)
    check(p, "10.0.0.1", "10.0.0.2", [Tunnel("vxlan", "fd00::1", "fd00::2", 9)])


def test_vxlan_custom_port_and_disabled() -> None:
    frame = eth(vx(5, dport=8472) / eth(INNER4))
    p = decode_one(frame, vxlan_ports=frozenset({8472}))
    check(p, "10.0.0.1", "10.0.0.2", [Tunnel("vxlan", "192.168.1.1", "192.168.1.2", 5)])
    # Not a configured port, or VXLAN not enabled: it is a plain UDP packet.
    for opts in ({}, {"tunnels": frozenset({"gre"}), "vxlan_ports": frozenset({8472})}):
        q = decode_one(frame, **opts)
        assert q is not None
        assert (q.src_ip, q.dst_port, q.encap) == ("192.168.1.1", 8472, None)
        assert q.payload == raw(frame)[14 + 20 + 8 :]


def test_vxlan_without_i_flag_is_malformed() -> None:
    _, d = decode_all([eth(OUT4 / UDP(dport=4789) / VXLAN(flags=0, vni=1) / eth(INNER4))])
    assert drops(d) == {"decode.drop.malformed": 1}


def test_vxlan_carrying_arp_is_not_ip() -> None:
    from scapy.layers.l2 import ARP

    _, d = decode_all([eth(vx() / eth(ARP()))])
    assert drops(d) == {"decode.drop.not_ip": 1}


@pytest.mark.parametrize("optlen", [0, 1, 4, 16])
def test_geneve_with_options(optlen: int) -> None:
    hdr = struct.pack("!BBHI", optlen, 0, 0x6558, 77 << 8) + b"\x01" * (optlen * 4)
    frame = eth(OUT4 / UDP(sport=1, dport=6081) / hdr / eth(INNER4))
    p = decode_one(frame)
    check(p, "10.0.0.1", "10.0.0.2", [Tunnel("geneve", "192.168.1.1", "192.168.1.2", 77)])


def test_geneve_scapy_and_ip_payload() -> None:
    p = decode_one(eth(OUT4 / UDP(dport=6081) / GENEVE(vni=3, proto=0x6558) / eth(INNER6)))
    check(p, "2001:db8::a", "2001:db8::b", [Tunnel("geneve", "192.168.1.1", "192.168.1.2", 3)])
    q = decode_one(eth(OUT4 / UDP(dport=6081) / GENEVE(vni=4, proto=0x0800) / INNER4))
    check(q, "10.0.0.1", "10.0.0.2", [Tunnel("geneve", "192.168.1.1", "192.168.1.2", 4)])


def test_geneve_bad_version_and_options_too_long() -> None:
    bad = eth(OUT4 / UDP(dport=6081) / struct.pack("!BBHI", 0x40, 0, 0x6558, 0) / eth(INNER4))
    long_ = eth(OUT4 / UDP(dport=6081) / struct.pack("!BBHI", 63, 0, 0x6558, 0))
    _, d = decode_all([bad, long_])
    assert drops(d) == {"decode.drop.malformed": 1, "decode.drop.truncated": 1}


GRE_FLAGS = list(itertools.product([0, 1], repeat=3))


@pytest.mark.parametrize(("csum", "key", "seq"), GRE_FLAGS)
@pytest.mark.parametrize("outer", [OUT4, OUT6], ids=["v4", "v6"])
@pytest.mark.parametrize("inner", [INNER4, INNER6], ids=["v4", "v6"])
def test_gre_ip_every_flag_combination(
    csum: int, key: int, seq: int, outer: Packet, inner: Packet
) -> None:
    g = GRE(
        chksum_present=csum, key_present=key, seqnum_present=seq, key=0xABCDEF01, sequence_number=5
    )
    p = decode_one(eth(outer / g / inner))
    tid = 0xABCDEF01 if key else None
    want = Tunnel("gre", outer.src, outer.dst, tid)
    assert p is not None
    assert p.encap == Encap([], [want])
    assert p.payload == SIP
    assert p.src_ip == inner.src


@pytest.mark.parametrize(("csum", "key", "seq"), GRE_FLAGS)
def test_gretap(csum: int, key: int, seq: int) -> None:
    g = GRE(chksum_present=csum, key_present=key, seqnum_present=seq, key=9, proto=0x6558)
    p = decode_one(eth(OUT4 / g / eth(Dot1Q(vlan=33) / INNER4)))
    want = Tunnel("gretap", "192.168.1.1", "192.168.1.2", 9 if key else None, [33])
    check(p, "10.0.0.1", "10.0.0.2", [want])


def test_gre_unsupported_versions_and_routing() -> None:
    pptp = eth(OUT4 / GRE(version=1, proto=0x880B) / b"\xff\x03\x00\x21" / INNER4)
    routing = eth(OUT4 / GRE(routing_present=1) / INNER4)
    _, d = decode_all([pptp, routing])
    assert drops(d) == {"decode.drop.tunnel_unsupported": 2}


def test_gre_other_protocol_is_not_ip() -> None:
    _, d = decode_all([eth(OUT4 / GRE(proto=0x8847) / bytes(40))])
    assert drops(d) == {"decode.drop.not_ip": 1}


def test_erspan_type_1() -> None:
    p = decode_one(eth(OUT4 / GRE(proto=0x88BE) / eth(INNER4)))
    check(p, "10.0.0.1", "10.0.0.2", [Tunnel("erspan1", "192.168.1.1", "192.168.1.2", None)])


def test_erspan_type_2() -> None:
    g = GRE(proto=0x88BE, seqnum_present=1, sequence_number=1)
    p = decode_one(eth(OUT4 / g / ERSPAN_II(session_id=1023, vlan=5) / eth(Dot1Q(vlan=5) / INNER4)))
    check(p, "10.0.0.1", "10.0.0.2", [Tunnel("erspan2", "192.168.1.1", "192.168.1.2", 1023, [5])])


@pytest.mark.parametrize("platform", [False, True])
def test_erspan_type_3(platform: bool) -> None:
    hdr = ERSPAN_III(session_id=300, o=int(platform), timestamp=12345)
    if platform:
        hdr = hdr / ERSPAN_PlatformSpecific(platf_id=3, info1=1, info2=2)
    g = GRE(proto=0x22EB, seqnum_present=1)
    p = decode_one(eth(OUT6 / g / hdr / eth(INNER4)))
    check(p, "10.0.0.1", "10.0.0.2", [Tunnel("erspan3", "fd00::1", "fd00::2", 300)])


@pytest.mark.parametrize("inner", [INNER4, INNER6], ids=["v4", "v6"])
def test_erspan_type_3_ip_frame_type(inner: Packet) -> None:
    p = decode_one(
        eth(OUT4 / GRE(proto=0x22EB, seqnum_present=1) / ERSPAN_III(session_id=2, ft=2) / inner)
    )
    check(p, inner.src, inner.dst, [Tunnel("erspan3", "192.168.1.1", "192.168.1.2", 2)])


def test_erspan_type_3_unknown_frame_type() -> None:
    _, d = decode_all([eth(OUT4 / GRE(proto=0x22EB) / ERSPAN_III(ft=5) / eth(INNER4))])
    assert drops(d) == {"decode.drop.malformed": 1}


@pytest.mark.parametrize(
    ("outer", "inner", "typ"),
    [
        (OUT4, INNER4, "ipip"),
        (OUT4, INNER6, "ip6ip"),
        (OUT6, INNER6, "ip6ip6"),
        (OUT6, INNER4, "ipip6"),
    ],
)
def test_ip_in_ip(outer: Packet, inner: Packet, typ: str) -> None:
    p = decode_one(eth(outer / inner))
    check(p, inner.src, inner.dst, [Tunnel(typ, outer.src, outer.dst)])


def test_nested_tunnels_keep_order_outermost_first() -> None:
    frame = eth(
        Dot1Q(vlan=1)
        / OUT4
        / GRE(key_present=1, key=5, proto=0x6558)
        / eth(
            Dot1Q(vlan=2) / IP(src="172.16.0.1", dst="172.16.0.2") / UDP(dport=4789) / VXLAN(vni=6)
        )
        / eth(IPv6(src="fd01::1", dst="fd01::2") / INNER4)
    )
    p = decode_one(frame)
    check(
        p,
        "10.0.0.1",
        "10.0.0.2",
        [
            Tunnel("gretap", "192.168.1.1", "192.168.1.2", 5, [2]),
            Tunnel("vxlan", "172.16.0.1", "172.16.0.2", 6),
            Tunnel("ipip6", "fd01::1", "fd01::2"),
        ],
        [1],
    )


def test_tunnel_depth_bound() -> None:
    from otus.decoder.common import MAX_TUNNELS

    ok: Packet = INNER4
    for i in range(MAX_TUNNELS):
        ok = IP(src=f"1.1.1.{i}", dst="2.2.2.2") / ok
    p = decode_one(eth(ok))
    assert p is not None
    assert p.encap is not None
    assert len(p.encap.tunnels) == MAX_TUNNELS
    assert p.encap.tunnels[0].src == f"1.1.1.{MAX_TUNNELS - 1}"
    _, d = decode_all([eth(IP(src="9.9.9.9", dst="2.2.2.2") / ok)])
    assert drops(d) == {"decode.drop.tunnel_too_deep": 1}
    vxlans: Packet = eth(INNER4)
    for _ in range(MAX_TUNNELS + 1):
        vxlans = eth(vx() / vxlans)
    _, d = decode_all([vxlans])
    assert drops(d) == {"decode.drop.tunnel_too_deep": 1}


@pytest.mark.parametrize(
    "frame",
    [
        eth(OUT4 / GRE() / INNER4),
        eth(OUT4 / GRE(proto=0x6558) / eth(INNER4)),
        eth(OUT4 / GRE(proto=0x88BE, seqnum_present=1) / ERSPAN_II() / eth(INNER4)),
        eth(OUT4 / INNER4),
        eth(OUT6 / INNER6),
    ],
)
def test_disabled_tunnels_are_counted(frame: Packet) -> None:
    _, d = decode_all([frame], tunnels=frozenset())
    assert drops(d) == {"decode.drop.tunnel_disabled": 1}


def test_each_tunnel_switch_is_separate() -> None:
    gre_ = eth(OUT4 / GRE() / INNER4)
    erspan = eth(OUT4 / GRE(proto=0x88BE, seqnum_present=1) / ERSPAN_II() / eth(INNER4))
    out, _ = decode_all([gre_, erspan], tunnels=frozenset({"erspan"}))
    assert len(out) == 1
    assert out[0].encap is not None
    assert out[0].encap.tunnels[0].type == "erspan2"
    out, _ = decode_all([gre_, erspan], tunnels=frozenset({"gre"}))
    assert len(out) == 1
    assert out[0].encap is not None
    assert out[0].encap.tunnels[0].type == "gre"
