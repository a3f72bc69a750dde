"""Link layers: every pcap link type, 802.1Q/QinQ stacks, non-IP frames."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import (
    ARP,
    LLC,
    STP,
    CookedLinux,
    CookedLinuxV2,
    Dot1AD,
    Dot1Q,
    Ether,
    Loopback,
)
from scapy.packet import raw

from otus.core.packet import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from otus.decoder.ethernet import LINKTYPE_LOOP
from tests.decoder.frames import SIP, decode_all, decode_one, drops, eth, sip_udp4

V6_UDP = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5062, dport=5060) / SIP


def test_ethernet_ipv4_udp() -> None:
    p = decode_one(eth(sip_udp4()))
    assert p is not None
    assert (p.src_ip, p.dst_ip, p.src_port, p.dst_port) == ("10.0.0.1", "10.0.0.2", 5060, 5060)
    assert p.transport == IPPROTO_UDP
    assert p.payload == SIP
    assert p.encap is None
    assert p.ts_us == 1
    assert not p.reassembled


def test_ethernet_padding_and_fcs_are_not_payload() -> None:
    """Short frames are padded to 60 bytes; the IP total length says where the packet ends."""
    frame = raw(eth(IP(src="1.2.3.4", dst="5.6.7.8") / UDP(sport=1, dport=2) / b"hi"))
    p = decode_one(frame + b"\xaa" * 16 + b"FCS!")
    assert p is not None
    assert p.payload == b"hi"


def test_ethernet_ipv6_udp() -> None:
    p = decode_one(eth(V6_UDP))
    assert p is not None
    assert (p.src_ip, p.dst_ip, p.src_port, p.dst_port) == (
        "2001:db8::1",
        "2001:db8::2",
        5062,
        5060,
    )
    assert p.payload == SIP


def test_linux_cooked_v1() -> None:
    p = decode_one(
        CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6) / sip_udp4(), LINKTYPE_LINUX_SLL
    )
    assert p is not None
    assert p.src_ip == "10.0.0.1"
    assert p.payload == SIP
    assert p.encap is None


def test_linux_cooked_v1_ipv6_and_tcp() -> None:
    frame = CookedLinux(proto=0x86DD) / IPv6(src="::1", dst="::2") / TCP(sport=5060, dport=9)
    p = decode_one(frame / SIP, LINKTYPE_LINUX_SLL)
    assert p is not None
    assert (p.src_ip, p.dst_ip, p.transport) == ("::1", "::2", IPPROTO_TCP)


def test_linux_cooked_v1_with_vlan_tag_reinserted_by_libpcap() -> None:
    """libpcap writes a stripped tag back where the protocol field was: 0x8100, TCI, protocol."""
    sll = raw(CookedLinux(lladdrtype=1, lladdrlen=6, proto=0x8100))
    frame = sll + struct.pack("!HH", 0x2000 | 42, 0x0800) + raw(sip_udp4())
    p = decode_one(frame, LINKTYPE_LINUX_SLL)
    assert p is not None
    assert p.encap is not None
    assert p.encap.vlans == [42]
    assert p.payload == SIP


def test_linux_cooked_v2() -> None:
    p = decode_one(CookedLinuxV2(proto=0x86DD, ifindex=3) / V6_UDP, LINKTYPE_LINUX_SLL2)
    assert p is not None
    assert p.src_ip == "2001:db8::1"
    assert p.payload == SIP
    p = decode_one(CookedLinuxV2(proto=0x0800) / sip_udp4(), LINKTYPE_LINUX_SLL2)
    assert p is not None
    assert p.dst_ip == "10.0.0.2"


def test_linux_cooked_v2_vlan() -> None:
    frame = raw(CookedLinuxV2(proto=0x8100)) + struct.pack("!HH", 7, 0x0800) + raw(sip_udp4())
    p = decode_one(frame, LINKTYPE_LINUX_SLL2)
    assert p is not None
    assert p.encap is not None
    assert p.encap.vlans == [7]


@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_IPV4])
def test_raw_ipv4(linktype: int) -> None:
    p = decode_one(sip_udp4(), linktype)
    assert p is not None
    assert (p.src_ip, p.payload) == ("10.0.0.1", SIP)


@pytest.mark.parametrize("linktype", [LINKTYPE_RAW, LINKTYPE_IPV6])
def test_raw_ipv6(linktype: int) -> None:
    p = decode_one(V6_UDP, linktype)
    assert p is not None
    assert (p.dst_ip, p.payload) == ("2001:db8::2", SIP)


def test_raw_with_bad_version_is_malformed() -> None:
    _, d = decode_all([b"\x50" + bytes(40)], LINKTYPE_RAW)
    assert drops(d) == {"decode.drop.malformed": 1}


def test_raw_ipv4_linktype_rejects_ipv6_bytes() -> None:
    _, d = decode_all([raw(V6_UDP)], LINKTYPE_IPV4)
    assert drops(d) == {"decode.drop.malformed": 1}


def test_null_loopback_host_order() -> None:
    p = decode_one(Loopback(type=2) / sip_udp4(), LINKTYPE_NULL)
    assert p is not None
    assert p.src_ip == "10.0.0.1"


@pytest.mark.parametrize("family", [10, 24, 28, 30])
@pytest.mark.parametrize("order", ["<", ">"])
def test_null_loopback_ipv6_families_either_byte_order(family: int, order: str) -> None:
    p = decode_one(struct.pack(order + "I", family) + raw(V6_UDP), LINKTYPE_NULL)
    assert p is not None
    assert p.src_ip == "2001:db8::1"


def test_openbsd_loop_is_network_order() -> None:
    p = decode_one(struct.pack("!I", 2) + raw(sip_udp4()), LINKTYPE_LOOP)
    assert p is not None
    assert p.dst_ip == "10.0.0.2"


def test_null_unknown_family_is_not_ip() -> None:
    _, d = decode_all([struct.pack("<I", 7) + raw(sip_udp4())], LINKTYPE_NULL)
    assert drops(d) == {"decode.drop.not_ip": 1}


def test_unknown_linktype() -> None:
    _, d = decode_all([raw(eth(sip_udp4()))], 147)
    assert drops(d) == {"decode.drop.unsupported_link": 1}


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (eth(ARP()), "not_ip"),
        (Ether(dst="01:80:c2:00:00:0e", type=0x88CC) / (b"\x02\x07" + bytes(40)), "not_ip"),
        (Ether(dst="01:80:c2:00:00:00") / LLC() / STP(), "not_ip"),
        (eth(IP(src="1.1.1.1", dst="2.2.2.2") / ICMP()), "not_udp_tcp"),
        (eth(IP(src="1.1.1.1", dst="2.2.2.2", proto=132) / bytes(40)), "not_udp_tcp"),
        (eth(IPv6(nh=59)), "not_udp_tcp"),
        (eth(IPv6(nh=50) / bytes(40)), "not_udp_tcp"),
    ],
)
def test_not_ip_and_not_udp_tcp(frame: bytes, reason: str) -> None:
    _, d = decode_all([frame])
    assert drops(d) == {"decode.drop." + reason: 1}


@pytest.mark.parametrize(
    ("layers", "vlans"),
    [
        (Dot1Q(vlan=100), [100]),
        (Dot1Q(vlan=4095, prio=7, dei=1), [4095]),
        (Dot1AD(vlan=10) / Dot1Q(vlan=20), [10, 20]),
        (Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3), [1, 2, 3]),
    ],
)
def test_vlan_stacks(layers: Dot1Q, vlans: list[int]) -> None:
    p = decode_one(eth(layers / sip_udp4()))
    assert p is not None
    assert p.encap is not None
    assert p.encap.vlans == vlans
    assert p.encap.tunnels == []
    assert p.payload == SIP


def test_qinq_with_0x9100_outer_tpid() -> None:
    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x9100)
    p = decode_one(frame / Dot1Q(vlan=300) / Dot1Q(vlan=400) / sip_udp4())
    assert p is not None
    assert p.encap is not None
    assert p.encap.vlans == [300, 400]


def test_vlan_with_ipv6_and_tcp() -> None:
    p = decode_one(eth(Dot1Q(vlan=5) / IPv6(src="::a", dst="::b") / TCP(sport=5, dport=6) / SIP))
    assert p is not None
    assert p.encap is not None
    assert (p.encap.vlans, p.src_ip, p.transport) == ([5], "::a", IPPROTO_TCP)


def test_too_many_vlan_tags() -> None:
    tags = Dot1Q(vlan=1)
    for i in range(2, 10):
        tags = tags / Dot1Q(vlan=i)
    _, d = decode_all([eth(tags / sip_udp4())])
    assert drops(d) == {"decode.drop.vlan_too_deep": 1}
    ok = Dot1Q(vlan=1)
    for i in range(2, 9):
        ok = ok / Dot1Q(vlan=i)
    p = decode_one(eth(ok / sip_udp4()))
    assert p is not None
    assert p.encap is not None
    assert p.encap.vlans == list(range(1, 9))


def test_vlan_tag_truncated() -> None:
    frame = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x8100))
    _, d = decode_all([frame + b"\x00"])
    assert drops(d) == {"decode.drop.truncated": 1}


def test_vlan_encap_shared_per_tag_but_equal() -> None:
    out, _ = decode_all([eth(Dot1Q(vlan=9) / sip_udp4(sport=p)) for p in (1, 2)])
    assert out[0].encap == out[1].encap
    assert out[0].encap is not None
    assert out[0].encap.vlans == [9]


@pytest.mark.parametrize(
    "linktype", [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL]
)
def test_empty_and_tiny_frames_are_truncated(linktype: int) -> None:
    _, d = decode_all([b"", b"\x00", bytes(3)], linktype)
    assert drops(d) == {"decode.drop.truncated": 3}


def test_vlan_encap_cache_is_bounded() -> None:
    from otus.decoder import Decoder
    from otus.decoder.fast import _ENCAP_CACHE_LIMIT

    template = raw(eth(Dot1Q(vlan=0) / sip_udp4()))
    frames = [template[:14] + i.to_bytes(2, "big") + template[16:] for i in range(6000)]
    d = Decoder()
    out, _ = decode_all(frames, decoder=d)
    assert [p.encap.vlans[0] for p in out if p.encap] == [i & 0x0FFF for i in range(6000)]
    assert len(d._fast._vlan_encaps) <= _ENCAP_CACHE_LIMIT
