"""Tunnel headers: VXLAN, Geneve, GRE (RFC 2784/2890) and ERSPAN types I, II and III.

Parsers return their result tuple, or the drop reason (a ``str``) when the frame ends here.
"""

from __future__ import annotations

from otus.decoder.common import ETH_IPV4, ETH_IPV6, ETH_TEB

__all__ = ["GRE_ERSPAN2", "GRE_ERSPAN3", "erspan", "geneve", "gre", "ipip_type", "vxlan"]

GRE_ERSPAN2 = 0x88BE  # also type I, told apart by the GRE sequence number
GRE_ERSPAN3 = 0x22EB

# Tunnel.type of IP-in-IP by (outer is IPv6, inner protocol).
_IPIP_TYPES = {(False, 4): "ipip", (False, 41): "ip6ip", (True, 41): "ip6ip6", (True, 4): "ipip6"}


def ipip_type(outer_v6: bool, proto: int) -> str:
    """Tunnel.type for IPv4/IPv6 (protocol 4/41) carried in IPv4 or IPv6."""
    return _IPIP_TYPES[outer_v6, proto]


def vxlan(f: bytes, off: int, end: int) -> tuple[int, int] | str:
    """Parse a VXLAN header (RFC 7348): (offset of the inner Ethernet frame, VNI)."""
    if off + 8 > end:
        return "truncated"
    if not f[off] & 0x08:  # the I flag says the VNI is valid; Linux drops frames without it
        return "malformed"
    return off + 8, (f[off + 4] << 16) | (f[off + 5] << 8) | f[off + 6]


def geneve(f: bytes, off: int, end: int) -> tuple[int, int, int] | str:
    """Parse a Geneve header (RFC 8926) and skip its options: (inner offset, ethertype, VNI)."""
    if off + 8 > end:
        return "truncated"
    b = f[off]
    if b >> 6:  # only version 0 exists; another one has a layout we cannot know
        return "malformed"
    inner = off + 8 + ((b & 0x3F) << 2)
    if inner > end:
        return "truncated"
    vni = (f[off + 4] << 16) | (f[off + 5] << 8) | f[off + 6]
    return inner, (f[off + 2] << 8) | f[off + 3], vni


def gre(f: bytes, off: int, end: int) -> tuple[int, int, int | None, bool] | str:
    """Parse a GRE header: (payload offset, protocol type, key or None, has sequence number)."""
    if off + 4 > end:
        return "truncated"
    flags = f[off]
    # Version 1 is PPTP's enhanced GRE (PPP inside); source routing is deprecated and Linux
    # refuses it too.
    if f[off + 1] & 0x07 or flags & 0x40:
        return "tunnel_unsupported"
    hl = 4
    if flags & 0x80:  # checksum + reserved
        hl = 8
    key = None
    if flags & 0x20:
        if off + hl + 4 > end:
            return "truncated"
        k = off + hl
        key = (f[k] << 24) | (f[k + 1] << 16) | (f[k + 2] << 8) | f[k + 3]
        hl += 4
    seq = bool(flags & 0x10)
    if seq:
        hl += 4
    if off + hl > end:
        return "truncated"
    return off + hl, (f[off + 2] << 8) | f[off + 3], key, seq


def erspan(
    f: bytes, off: int, end: int, proto: int, seq: bool
) -> tuple[int, int, str, int | None] | str:
    """Parse an ERSPAN header after GRE: (inner offset, inner ethertype, Tunnel.type, session)."""
    if proto == GRE_ERSPAN2:
        if not seq:
            # Type I has no ERSPAN header and no GRE sequence number: the frame follows GRE.
            return off, ETH_TEB, "erspan1", None
        if off + 8 > end:
            return "truncated"
        return off + 8, ETH_TEB, "erspan2", ((f[off + 2] & 0x03) << 8) | f[off + 3]
    # Type III: 12 bytes, then an 8-byte platform subheader when the O flag is set.
    if off + 12 > end:
        return "truncated"
    session = ((f[off + 2] & 0x03) << 8) | f[off + 3]
    inner = off + (20 if f[off + 11] & 0x01 else 12)
    if inner > end:
        return "truncated"
    frame_type = (f[off + 10] >> 2) & 0x1F
    if frame_type == 0:
        return inner, ETH_TEB, "erspan3", session
    if frame_type == 2:  # a bare IP packet; its version nibble says which
        if inner >= end:
            return "truncated"
        version = f[inner] >> 4
        if version == 4:
            return inner, ETH_IPV4, "erspan3", session
        if version == 6:
            return inner, ETH_IPV6, "erspan3", session
    return "malformed"
