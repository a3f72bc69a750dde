"""IPv4 (options, lengths) and IPv6 (extension-header chains, address text)."""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import (
    IP,
    TCP,
    UDP,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_Timestamp,
)
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.packet import Packet, raw

from otus.core.packet import IPPROTO_TCP, LINKTYPE_RAW
from tests.decoder.frames import SIP, decode_all, decode_one, drops, eth

UDP_SIP = UDP(sport=5060, dport=5060) / SIP


@pytest.mark.parametrize(
    "options",
    [
        [IPOption_Router_Alert()],
        [IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_NOP()],
        [IPOption_RR(routers=["1.1.1.1", "2.2.2.2"])],
        [IPOption_RR(routers=["9.9.9.9"] * 9)],  # IHL 15: the longest header
        [IPOption_Timestamp(flg=0, timestamp=[1, 2, 3])],
    ],
)
def test_ipv4_options(options: list[Packet]) -> None:
    pkt = IP(src="10.1.1.1", dst="10.2.2.2", options=options) / UDP_SIP
    assert IP(raw(pkt)).ihl > 5
    p = decode_one(eth(pkt))
    assert p is not None
    assert (p.src_ip, p.dst_ip, p.payload) == ("10.1.1.1", "10.2.2.2", SIP)


def test_ipv4_options_with_tcp() -> None:
    pkt = IP(src="10.1.1.1", dst="10.2.2.2", options=[IPOption_Router_Alert()]) / TCP() / SIP
    p = decode_one(eth(pkt))
    assert p is not None
    assert (p.transport, p.payload) == (IPPROTO_TCP, SIP)


def test_ipv4_df_flag_is_not_a_fragment() -> None:
    p = decode_one(eth(IP(src="1.1.1.1", dst="2.2.2.2", flags="DF") / UDP_SIP))
    assert p is not None
    assert not p.reassembled


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda ip: ip.__setattr__("ihl", 4), "malformed"),
        (lambda ip: ip.__setattr__("version", 6), "malformed"),
        (lambda ip: ip.__setattr__("len", 19), "bad_length"),  # below the header length
        (lambda ip: ip.__setattr__("len", 2000), "bad_length"),  # beyond the captured bytes
        (lambda ip: ip.__setattr__("len", 0), "bad_length"),  # TSO: never a real packet
        (lambda ip: ip.__setattr__("ihl", 15), "bad_length"),  # header past the total length
    ],
)
def test_ipv4_bad_header(mutate: object, reason: str) -> None:
    ip = IP(src="1.1.1.1", dst="2.2.2.2") / UDP_SIP
    mutate(ip)  # type: ignore[operator]
    _, d = decode_all([eth(ip)])
    assert drops(d) == {"decode.drop." + reason: 1}


def test_ipv4_header_cut_short() -> None:
    frame = raw(eth(IP(src="1.1.1.1", dst="2.2.2.2", options=[IPOption_RR()]) / UDP_SIP))
    _, d = decode_all([frame[: 14 + 22]])
    assert drops(d) == {"decode.drop.truncated": 1}


def test_ipv4_total_length_shorter_than_frame_cuts_payload() -> None:
    """A smaller total length wins over the frame (padding); UDP then must fit inside it."""
    pkt = IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=1, dport=2) / b"abcdef"
    data = bytearray(raw(eth(pkt)))
    data[16:18] = (20 + 8 + 4).to_bytes(2, "big")  # IP says 4 payload bytes, UDP says 6
    _, d = decode_all([bytes(data)])
    assert drops(d) == {"decode.drop.bad_length": 1}


V6 = {"src": "2001:db8:0:1::10", "dst": "2001:db8:0:2::20"}


@pytest.mark.parametrize(
    "chain",
    [
        IPv6ExtHdrHopByHop(),
        IPv6ExtHdrDestOpt(),
        IPv6ExtHdrRouting(addresses=["2001:db8::99", "2001:db8::98"]),
        IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt(),
        IPv6ExtHdrFragment(offset=0, m=0, id=77),  # atomic fragment: not held
        IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(m=0) / IPv6ExtHdrDestOpt(),
        AH(nh=17, payloadlen=4, spi=1, icv=b"\x00" * 12),  # scapy leaves nh/length unset
        IPv6ExtHdrDestOpt() / AH(nh=60, payloadlen=4, spi=1, icv=bytes(12)) / IPv6ExtHdrDestOpt(),
    ],
)
def test_ipv6_extension_chains(chain: Packet) -> None:
    p = decode_one(eth(IPv6(**V6) / chain / UDP_SIP))
    assert p is not None
    assert (p.src_ip, p.dst_ip, p.dst_port, p.payload) == (V6["src"], V6["dst"], 5060, SIP)
    assert not p.reassembled


def test_ipv6_chain_then_tcp() -> None:
    pkt = IPv6(**V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=5060) / SIP
    p = decode_one(eth(pkt))
    assert p is not None
    assert (p.transport, p.payload) == (IPPROTO_TCP, SIP)


def test_ipv6_too_long_chain_is_malformed() -> None:
    chain = IPv6ExtHdrDestOpt()
    for _ in range(20):
        chain = chain / IPv6ExtHdrDestOpt()
    _, d = decode_all([eth(IPv6(**V6) / chain / UDP_SIP)])
    assert drops(d) == {"decode.drop.malformed": 1}


def test_ipv6_extension_header_longer_than_packet() -> None:
    data = bytearray(raw(eth(IPv6(**V6) / IPv6ExtHdrDestOpt() / UDP_SIP)))
    data[14 + 40 + 1] = 200  # hdr ext len: 1608 bytes
    _, d = decode_all([bytes(data)])
    assert drops(d) == {"decode.drop.truncated": 1}


@pytest.mark.parametrize(("plen", "reason"), [(5000, "bad_length"), (3, "truncated")])
def test_ipv6_payload_length(plen: int, reason: str) -> None:
    pkt = IPv6(**V6, plen=plen) / UDP_SIP
    _, d = decode_all([eth(pkt)])
    assert drops(d) == {"decode.drop." + reason: 1}


def test_ipv6_bad_version() -> None:
    data = bytearray(raw(eth(IPv6(**V6) / UDP_SIP)))
    data[14] = 0x40
    _, d = decode_all([bytes(data)])
    assert drops(d) == {"decode.drop.malformed": 1}


@pytest.mark.parametrize(
    "addr",
    [
        "::",
        "::1",
        "fe80::1",
        "2001:db8::",
        "2001:db8:0:0:1:0:0:1",
        "2001:db8:1:2:3:4:5:6",
        "::ffff:192.0.2.1",
        "64:ff9b::c000:201",
        "ff02::1:ff00:1",
    ],
)
def test_ipv6_text_matches_inet_ntop(addr: str) -> None:
    """tshark prints IPv6 the way inet_ntop does (RFC 5952, mapped IPv4 dotted)."""
    p = decode_one(IPv6(src=addr, dst="::2") / UDP_SIP, LINKTYPE_RAW)
    assert p is not None
    assert p.src_ip == socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, addr))


def test_address_text_cache_is_bounded() -> None:
    from otus.decoder import Decoder
    from otus.decoder.walk import _PAIR_CACHE_LIMIT

    d = Decoder()
    template = raw(eth(IP(src="10.0.0.0", dst="10.0.0.1") / UDP_SIP))
    n = _PAIR_CACHE_LIMIT + 10
    frames = [template[:26] + (0x0A000000 + i).to_bytes(4, "big") + template[30:] for i in range(n)]
    out, _ = decode_all(frames, decoder=d)
    assert len(out) == n
    assert len(d._walker.pairs) <= _PAIR_CACHE_LIMIT
    assert out[-1].src_ip == socket.inet_ntoa((0x0A000000 + n - 1).to_bytes(4, "big"))
