"""Frame builders (scapy, tests only) and checks shared by the decoder tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, raw

from otus.core.packet import LINKTYPE_ETHERNET, DecodedPacket, RawBatch
from otus.decoder import Decoder, DecoderOptions

__all__ = [
    "SIP",
    "assert_balanced",
    "decode_all",
    "decode_one",
    "drops",
    "eth",
    "general",
    "general_and_drops",
    "sip_udp4",
]

SIP = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def eth(inner: Packet) -> Packet:
    """Ethernet with fixed MACs (scapy would otherwise look them up and warn)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / inner


def sip_udp4(src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 5060) -> Packet:
    """A SIP INVITE over IPv4/UDP, without a link header."""
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=5060) / SIP


def drops(d: Decoder) -> dict[str, int]:
    """The non-zero drop counters of a decoder, decode and reassembly alike."""
    return {k: v for k, v in d.stats().items() if ".drop." in k and v}


def assert_balanced(d: Decoder, emitted: int | None = None) -> Mapping[str, int]:
    """Check the counter identities every input must keep; return the stats."""
    s = d.stats()
    dec_drops = sum(v for k, v in s.items() if k.startswith("decode.drop."))
    re_drops = sum(v for k, v in s.items() if k.startswith("reassembly.drop."))
    assert s["decode.frames"] == s["decode.packets"] + dec_drops + s["reassembly.fragments"], s
    assert s["reassembly.fragments"] == (
        s["reassembly.merged"] + re_drops + s["reassembly.pending_fragments"]
    ), s
    assert s["decode.drop.internal_error"] == 0, s
    assert s.get("reassembly.drop.internal_error", 0) == 0, s
    if emitted is not None:
        assert emitted == s["decode.packets"] + s["reassembly.datagrams"], s
    o = d.options
    assert s["reassembly.pending_datagrams"] <= o.max_datagrams
    assert s["reassembly.pending_bytes"] <= o.max_datagrams * o.max_datagram_size
    return s


def decode_all(
    frames: Iterable[bytes | Packet],
    linktype: int = LINKTYPE_ETHERNET,
    decoder: Decoder | None = None,
    ts: Iterable[int] | None = None,
    **options: Any,
) -> tuple[list[DecodedPacket], Decoder]:
    """Decode frames as one batch; check the counters balance; return packets and decoder."""
    d = decoder if decoder is not None else Decoder(DecoderOptions(**options))
    data = [f if isinstance(f, bytes) else raw(f) for f in frames]
    stamps = list(ts) if ts is not None else list(range(1, len(data) + 1))
    out: list[DecodedPacket] = []
    d.decode_batch(RawBatch(linktype, data, stamps), out)
    assert_balanced(d, len(out))
    return out, d


def decode_one(
    frame: bytes | Packet, linktype: int = LINKTYPE_ETHERNET, **options: Any
) -> DecodedPacket | None:
    """Decode one frame; also check the general path alone agrees with the batch path."""
    out, d = decode_all([frame], linktype, **options)
    assert len(out) <= 1
    ref, ref_drops = general_and_drops(frame, linktype, **options)
    assert (out[0] if out else None) == ref
    assert drops(d) == ref_drops
    return out[0] if out else None


def general(frame: bytes | Packet, linktype: int = LINKTYPE_ETHERNET, **options: Any) -> Any:
    """Decode with the general path only (the reference the fast path must agree with)."""
    return general_and_drops(frame, linktype, **options)[0]


def general_and_drops(
    frame: bytes | Packet, linktype: int = LINKTYPE_ETHERNET, **options: Any
) -> tuple[DecodedPacket | None, dict[str, int]]:
    """The general path's packet and drop counters for one frame."""
    d = Decoder(DecoderOptions(**options))
    data = frame if isinstance(frame, bytes) else raw(frame)
    return d._walker.frame(data, 1, linktype), drops(d)
