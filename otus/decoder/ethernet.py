"""Link layers: pcap link-type headers, Ethernet and its 802.1Q/802.1ad VLAN tags.

Each function returns its result tuple, or the drop reason (a ``str``) when the frame ends here.
"""

from __future__ import annotations

from otus.core.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from otus.decoder.common import ETH_IPV4, ETH_IPV6, MAX_VLANS

__all__ = ["LINKTYPE_LOOP", "TPIDS", "ethernet", "link", "vlan_tags"]

LINKTYPE_LOOP = 108  # OpenBSD loopback: like NULL but the family is in network byte order

TPIDS = frozenset({0x8100, 0x88A8, 0x9100})

# BSD loopback address families: AF_INET is 2 everywhere, AF_INET6 differs per system.
_NULL_FAMILIES = {2: ETH_IPV4, 10: ETH_IPV6, 24: ETH_IPV6, 28: ETH_IPV6, 30: ETH_IPV6}


def vlan_tags(f: bytes, off: int, end: int, etype: int, vlans: list[int]) -> tuple[int, int] | str:
    """Skip the VLAN tags ``etype`` announces, appending their ids: (offset, ethertype)."""
    while etype in TPIDS:
        if off + 4 > end:
            return "truncated"
        if len(vlans) >= MAX_VLANS:
            return "vlan_too_deep"
        vlans.append(((f[off] & 0x0F) << 8) | f[off + 1])
        etype = (f[off + 2] << 8) | f[off + 3]
        off += 4
    return off, etype


def ethernet(f: bytes, off: int, end: int, vlans: list[int]) -> tuple[int, int] | str:
    """Parse an Ethernet header at ``off``: (offset of its payload, ethertype after tags)."""
    if off + 14 > end:
        return "truncated"
    # Below 0x0600 the field is an 802.3 length (LLC: STP, CDP); it then fails as not_ip.
    return vlan_tags(f, off + 14, end, (f[off + 12] << 8) | f[off + 13], vlans)


def link(linktype: int, f: bytes, vlans: list[int]) -> tuple[int, int] | str:
    """Strip the link header of a frame: (offset of the network layer, its ethertype)."""
    n = len(f)
    if linktype == LINKTYPE_ETHERNET:
        return ethernet(f, 0, n, vlans)
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return "truncated"
        # libpcap re-inserts a stripped VLAN tag over the protocol field, as in Ethernet.
        return vlan_tags(f, 16, n, (f[14] << 8) | f[15], vlans)
    if linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return "truncated"
        return vlan_tags(f, 20, n, (f[0] << 8) | f[1], vlans)
    if linktype == LINKTYPE_RAW:
        if n < 1:
            return "truncated"
        version = f[0] >> 4
        if version == 4:
            return 0, ETH_IPV4
        if version == 6:
            return 0, ETH_IPV6
        return "malformed"
    if linktype == LINKTYPE_IPV4:
        return 0, ETH_IPV4
    if linktype == LINKTYPE_IPV6:
        return 0, ETH_IPV6
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            return "truncated"
        if linktype == LINKTYPE_LOOP:
            family = int.from_bytes(f[:4], "big")
        else:
            # Host byte order of the capturing machine: the family fits in the low byte.
            family = int.from_bytes(f[:4], "little")
            if family > 0xFF:
                family = int.from_bytes(f[:4], "big")
        etype = _NULL_FAMILIES.get(family)
        if etype is None:
            return "not_ip"
        return 4, etype
    return "unsupported_link"
