"""UDP lengths and TCP headers with options."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q
from scapy.packet import Packet, raw

from otus.core.packet import IPPROTO_TCP, IPPROTO_UDP
from tests.decoder.frames import SIP, decode_all, decode_one, drops, eth

IP4 = IP(src="192.0.2.1", dst="192.0.2.2")
IP6 = IPv6(src="2001:db8::1", dst="2001:db8::2")

TCP_OPTIONS = [
    [],
    [("MSS", 1460)],
    [("NOP", None), ("NOP", None), ("Timestamp", (123, 456))],
    [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)],
    [("SAck", (1000, 2000, 3000, 4000)), ("NOP", None), ("NOP", None)],
    [("NOP", None)] * 40,  # data offset 15: the longest header
]


@pytest.mark.parametrize("ip", [IP4, IP6], ids=["v4", "v6"])
@pytest.mark.parametrize("options", TCP_OPTIONS)
def test_tcp_options_payload_seq_flags(ip: Packet, options: list[tuple[str, object]]) -> None:
    seg = TCP(sport=5060, dport=40000, seq=0xFEDCBA98, flags="PA", options=options)
    p = decode_one(eth(ip / seg / SIP))
    assert p is not None
    assert p.transport == IPPROTO_TCP
    assert (p.src_port, p.dst_port) == (5060, 40000)
    assert p.payload == SIP
    assert p.tcp_seq == 0xFEDCBA98
    assert p.tcp_flags == 0x18


@pytest.mark.parametrize(
    ("flags", "value"), [("S", 0x02), ("SA", 0x12), ("F", 0x01), ("R", 0x04), ("SEC", 0xC2)]
)
def test_tcp_flags(flags: str, value: int) -> None:
    p = decode_one(eth(IP4 / TCP(flags=flags)))
    assert p is not None
    assert p.tcp_flags == value
    assert p.payload == b""


def test_tcp_ns_and_reserved_bits_like_tshark() -> None:
    """tshark's tcp.flags holds 12 bits: reserved (3), NS/AE, then the 8 classic flags."""
    data = bytearray(raw(eth(IP4 / TCP(flags="A") / SIP)))
    data[14 + 20 + 12] |= 0x01  # NS
    p = decode_one(bytes(data))
    assert p is not None
    assert p.tcp_flags == 0x110


def test_tcp_in_vlan_with_options() -> None:
    seg = TCP(sport=1, dport=2, options=[("Timestamp", (5, 6))], flags="PA")
    p = decode_one(eth(Dot1Q(vlan=3) / IP4 / seg / SIP))
    assert p is not None
    assert p.payload == SIP


@pytest.mark.parametrize(
    ("dataofs", "reason"), [(4, "malformed"), (0, "malformed"), (15, "truncated")]
)
def test_tcp_bad_data_offset(dataofs: int, reason: str) -> None:
    _, d = decode_all([eth(IP4 / TCP(dataofs=dataofs))])
    assert drops(d) == {"decode.drop." + reason: 1}


def test_tcp_header_cut_by_ip_length() -> None:
    data = bytearray(raw(eth(IP4 / TCP() / SIP)))
    data[16:18] = (20 + 12).to_bytes(2, "big")
    _, d = decode_all([bytes(data)])
    assert drops(d) == {"decode.drop.truncated": 1}


@pytest.mark.parametrize("ip", [IP4, IP6], ids=["v4", "v6"])
def test_udp_empty_payload(ip: Packet) -> None:
    p = decode_one(eth(ip / UDP(sport=9, dport=5060)))
    assert p is not None
    assert (p.transport, p.payload) == (IPPROTO_UDP, b"")


@pytest.mark.parametrize("ip", [IP4, IP6], ids=["v4", "v6"])
def test_udp_length_smaller_than_ip_payload_wins(ip: Packet) -> None:
    data = raw(eth(ip / UDP(sport=1, dport=2, len=8 + 5) / b"hello, world"))
    p = decode_one(data)
    assert p is not None
    assert p.payload == b"hello"


@pytest.mark.parametrize("ip", [IP4, IP6], ids=["v4", "v6"])
@pytest.mark.parametrize("ulen", [0, 7, 2000])
def test_udp_lying_length(ip: Packet, ulen: int) -> None:
    _, d = decode_all([eth(ip / UDP(sport=1, dport=2, len=ulen) / SIP)])
    assert drops(d) == {"decode.drop.bad_length": 1}


def test_udp_header_cut() -> None:
    data = bytearray(raw(eth(IP4 / UDP() / SIP)))
    data[16:18] = (20 + 4).to_bytes(2, "big")
    _, d = decode_all([bytes(data)])
    assert drops(d) == {"decode.drop.truncated": 1}
