"""The TCP header with its options (UDP is a few lines, inlined where it is read).

Parsers return their result tuple, or the drop reason (a ``str``) when the frame ends here.
"""

from __future__ import annotations

__all__ = ["tcp"]


def tcp(f: bytes, off: int, end: int) -> tuple[int, int, int, int, int] | str:
    """Parse a TCP header with its options: (sport, dport, payload offset, seq, flags)."""
    if off + 20 > end:
        return "truncated"
    hl = (f[off + 12] >> 4) << 2
    if hl < 20:
        return "malformed"
    if off + hl > end:
        return "truncated"
    return (
        (f[off] << 8) | f[off + 1],
        (f[off + 2] << 8) | f[off + 3],
        off + hl,
        int.from_bytes(f[off + 4 : off + 8], "big"),
        ((f[off + 12] & 0x0F) << 8) | f[off + 13],  # 12 bits, as tshark's tcp.flags
    )
