"""The TCP header with its options (UDP is a few lines, inlined where it is read)."""

from __future__ import annotations

from otus.decoder.common import Drop

__all__ = ["tcp"]


def tcp(f: bytes, off: int, end: int) -> tuple[int, int, int, int, int]:
    """Parse a TCP header with its options: (sport, dport, payload offset, seq, flags)."""
    if off + 20 > end:
        raise Drop("truncated")
    hl = (f[off + 12] >> 4) << 2
    if hl < 20:
        raise Drop("malformed")
    if off + hl > end:
        raise Drop("truncated")
    return (
        (f[off] << 8) | f[off + 1],
        (f[off + 2] << 8) | f[off + 3],
        off + hl,
        int.from_bytes(f[off + 4 : off + 8], "big"),
        ((f[off + 12] & 0x0F) << 8) | f[off + 13],  # 12 bits, as tshark's tcp.flags
    )
