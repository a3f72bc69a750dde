"""Packets as they move through a pipeline: raw batches, decoded packets, output records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_NULL",
    "LINKTYPE_RAW",
    "DecodedPacket",
    "Encap",
    "OutputPacket",
    "RawBatch",
    "RawPacket",
    "Tunnel",
]

# pcap link types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

IPPROTO_TCP = 6
IPPROTO_UDP = 17


@dataclass(slots=True)
class RawPacket:
    """One captured frame: the bytes from the link header on, and when it was seen."""

    data: bytes
    ts_us: int  # microseconds since the Unix epoch, UTC
    linktype: int = LINKTYPE_ETHERNET
    orig_len: int = 0  # length on the wire; 0 when unknown
    ifindex: int = 0


@dataclass(slots=True)
class RawBatch:
    """Frames of one link type, stored column-wise so capturers append without building objects."""

    linktype: int
    frames: list[bytes] = field(default_factory=list)
    ts_us: list[int] = field(default_factory=list)
    ifindex: int = 0

    def __len__(self) -> int:
        return len(self.frames)

    def packets(self) -> Iterator[RawPacket]:
        """Yield the batch as RawPackets (for tests and tools, not the hot path)."""
        lt, ifx = self.linktype, self.ifindex
        for data, ts in zip(self.frames, self.ts_us, strict=True):
            yield RawPacket(data, ts, lt, len(data), ifx)


@dataclass(slots=True)
class Tunnel:
    """One decapsulated tunnel layer: its type, outer addresses, id and the VLANs inside it."""

    type: str  # vxlan | geneve | gre | gretap | erspan2 | erspan3 | ipip | ip6ip | ip6ip6 | ipip6
    src: str
    dst: str
    id: int | None = None  # VXLAN/Geneve VNI, GRE key, ERSPAN session id
    vlans: list[int] | None = None  # 802.1Q ids of the inner Ethernet frame, outermost first


@dataclass(slots=True)
class Encap:
    """Outer context of a decoded packet: VLAN ids before the first tunnel, then tunnels."""

    vlans: list[int] = field(default_factory=list)
    tunnels: list[Tunnel] = field(default_factory=list)


# The decoder's fast path and the sip parser build DecodedPacket and OutputPacket with
# object.__new__ and slot stores (cheaper than __init__): a new field must be set there too.
@dataclass(slots=True)
class DecodedPacket:
    """An L4 payload with the innermost addresses and ports, and how it was wrapped."""

    ts_us: int
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    transport: int  # IPPROTO_UDP or IPPROTO_TCP
    payload: bytes
    encap: Encap | None = None  # None when the frame had no VLAN tag and no tunnel
    tcp_seq: int = 0
    tcp_flags: int = 0
    reassembled: bool = False  # rebuilt from IP fragments


@dataclass(slots=True)
class OutputPacket:
    """One parsed application message, ready for processors and reporters."""

    ts_us: int
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    transport: int
    payload_type: str  # "sip"
    payload: dict[str, Any]  # JSON-ready; its shape is the payload type's part of the record
    labels: dict[str, str]
    encap: Encap | None = None
