"""Hand-built frames for hostile tests: every field under the test's control (no scapy).

Ethernet, IPv4 (with fragments), IPv6 (with fragment headers), UDP, TCP and SIP messages with
an SDP body of any size. Checksums are real, so tshark agrees on what the frames are.
"""

from __future__ import annotations

import struct

__all__ = [
    "BASE_TS",
    "IP6_A",
    "IP6_B",
    "IP_A",
    "IP_B",
    "MAC_A",
    "MAC_B",
    "SIP_PORT",
    "eth",
    "frag4",
    "frag6",
    "ipv4",
    "ipv6",
    "sdp",
    "sip_message",
    "tcp",
    "udp",
    "udp6",
]

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
IP_A, IP_B = bytes([10, 66, 0, 1]), bytes([10, 66, 0, 2])
IP6_A = bytes.fromhex("fd000066000000000000000000000001")
IP6_B = bytes.fromhex("fd000066000000000000000000000002")
BASE_TS = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SIP_PORT = 5060


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(payload: bytes, etype: int = 0x0800, src: bytes = MAC_A, dst: bytes = MAC_B) -> bytes:
    """An Ethernet II frame."""
    return dst + src + struct.pack("!H", etype) + payload


def ipv4(
    payload: bytes,
    proto: int = 17,
    *,
    src: bytes = IP_A,
    dst: bytes = IP_B,
    ident: int = 1,
    frag: int = 0,  # flags (MF = 0x2000) | offset in 8-byte units
    total_len: int | None = None,
    ihl: int = 5,
    options: bytes = b"",
) -> bytes:
    """An IPv4 packet with a valid header checksum; lengths may be overridden to lie."""
    tl = 20 + len(options) + len(payload) if total_len is None else total_len
    hdr = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | (ihl & 0xF),
            0,
            tl & 0xFFFF,
            ident & 0xFFFF,
            frag & 0xFFFF,
            64,
            proto,
            0,
            src,
            dst,
        )
        + options
    )
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(
    payload: bytes,
    nh: int = 17,
    *,
    src: bytes = IP6_A,
    dst: bytes = IP6_B,
    plen: int | None = None,
) -> bytes:
    """An IPv6 packet (``plen`` may lie)."""
    n = len(payload) if plen is None else plen
    return struct.pack("!IHBB", 0x60000000, n & 0xFFFF, nh, 64) + src + dst + payload


def frag6(payload: bytes, nh: int, offset8: int, more: bool, ident: int) -> bytes:
    """An IPv6 fragment header followed by ``payload``."""
    return struct.pack("!BBHI", nh, 0, (offset8 << 3) | int(more), ident) + payload


def udp(
    payload: bytes, sport: int = 5070, dport: int = SIP_PORT, length: int | None = None
) -> bytes:
    """A UDP header (checksum 0) and payload; ``length`` may lie."""
    n = 8 + len(payload) if length is None else length
    return struct.pack("!HHHH", sport, dport, n & 0xFFFF, 0) + payload


def udp6(payload: bytes, sport: int = 5070, dport: int = SIP_PORT) -> bytes:
    """A UDP header with the checksum IPv6 requires (A -> B)."""
    n = 8 + len(payload)
    pseudo = IP6_A + IP6_B + struct.pack("!IxxxB", n, 17)
    hdr = struct.pack("!HHHH", sport, dport, n, 0)
    c = _csum(pseudo + hdr + payload) or 0xFFFF
    return hdr[:6] + struct.pack("!H", c) + payload


def tcp(
    payload: bytes,
    seq: int,
    *,
    sport: int = 5070,
    dport: int = SIP_PORT,
    flags: int = 0x18,
    doff: int = 5,
    ack: int = 1,
) -> bytes:
    """A TCP header (no options unless ``doff`` lies) and payload; checksum left 0."""
    return (
        struct.pack(
            "!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, (doff & 0xF) << 4, flags, 65535, 0, 0
        )
        + payload
    )


def sip_message(
    call: int = 1,
    *,
    method: str = "INVITE",
    body: bytes = b"",
    extra: bytes = b"",
    content_length: bytes | None = None,
) -> bytes:
    """A well-formed SIP request (bytes), with optional extra header lines (CRLF-terminated)."""
    cl = str(len(body)).encode() if content_length is None else content_length
    return (
        (
            f"{method} sip:bob@10.66.0.2 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.66.0.1:5070;branch=z9hG4bK-h{call}\r\n"
            f'From: "Hostile" <sip:alice@10.66.0.1>;tag=h{call}\r\n'
            "To: <sip:bob@10.66.0.2>\r\n"
            f"Call-ID: hostile-{call}@10.66.0.1\r\n"
            f"CSeq: {call} {method}\r\n"
            "Max-Forwards: 70\r\n"
            "User-Agent: otus-hostile\r\n"
        ).encode()
        + extra
        + b"Content-Length: "
        + cl
        + b"\r\n\r\n"
        + body
    )


def sdp(lines: int) -> bytes:
    out = [
        b"v=0",
        b"o=- 1 1 IN IP4 10.66.0.1",
        b"s=-",
        b"c=IN IP4 10.66.0.1",
        b"t=0 0",
        b"m=audio 4000 RTP/AVP 0",
    ]
    out += [f"a=x-pad:{i:06d}".encode() for i in range(lines)]
    return b"\r\n".join(out) + b"\r\n"


def frag4(datagram: bytes, ident: int, size: int = 1480) -> list[bytes]:
    """Split an IPv4 payload (UDP header included) into fragment packets."""
    out = []
    for off in range(0, len(datagram), size):
        more = 0x2000 if off + size < len(datagram) else 0
        out.append(ipv4(datagram[off : off + size], ident=ident, frag=more | (off // 8)))
    return out
