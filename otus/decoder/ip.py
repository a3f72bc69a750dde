"""The IPv6 extension-header chain and the context part of fragment keys.

Parsers return their result tuple, or the drop reason (a ``str``) when the frame ends here.
"""

from __future__ import annotations

from collections.abc import Hashable

from otus.core.packet import Tunnel

__all__ = ["IPV6_EXT", "ctx_key", "ipv6_ext"]

# Extension headers walked over: hop-by-hop, routing, destination options, mobility, HIP, shim6
# (all sized "(len + 1) * 8"), AH (sized "(len + 2) * 4") and fragment (fixed 8 bytes).
_EXT_8 = frozenset({0, 43, 60, 135, 139, 140})
_AH = 51
_FRAG = 44
IPV6_EXT = _EXT_8 | {_AH, _FRAG}

_MAX_EXT = 16  # real chains hold two or three; hostile ones are cut here


def ipv6_ext(f: bytes, off: int, end: int, nh: int) -> tuple[int, int, int] | str:
    """Walk extension headers: (upper-layer offset, its protocol, fragment header offset or -1)."""
    # The walk stops after a fragment header that really fragments; atomic fragments (offset
    # 0, no M flag, RFC 6946) are walked over like any other header.
    for _ in range(_MAX_EXT):
        if nh in _EXT_8:
            if off + 8 > end:
                return "truncated"
            nxt = off + ((f[off + 1] + 1) << 3)
        elif nh == _FRAG:
            if off + 8 > end:
                return "truncated"
            if ((f[off + 2] << 8) | f[off + 3]) & 0xFFF9:
                return off + 8, f[off], off
            nxt = off + 8
        elif nh == _AH:
            if off + 8 > end:
                return "truncated"
            nxt = off + ((f[off + 1] + 2) << 2)
        else:
            return off, nh, -1
        if nxt > end:
            return "truncated"
        nh = f[off]
        off = nxt
    return "malformed"


def ctx_key(vlans: list[int], tunnels: list[Tunnel]) -> Hashable:
    """Where a fragment was seen (VLANs, tunnel layers), so equal inner addresses never mix."""
    if not tunnels:
        return tuple(vlans)
    return (
        tuple(vlans),
        tuple((t.type, t.src, t.dst, t.id, tuple(t.vlans or ())) for t in tunnels),
    )
