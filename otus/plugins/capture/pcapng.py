"""The pcapng reader: sections in either byte order, interfaces and their clocks, packet blocks."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator

from otus.core.packet import RawBatch
from otus.core.record import TS_MAX_US
from otus.plugins.capture.fileio import (
    MAX_RECORD,
    PCAPNG_SHB,
    SNAP_CUT,
    Corrupt,
    Input,
    Truncated,
    refill,
)

__all__ = ["read_pcapng"]

_SHB = 0x0A0D0D0A  # the same in either byte order
# Smallest total length of each block type: 12 bytes of framing plus its fixed fields.
_MIN_BLOCK = {_SHB: 28, 1: 20, 6: 32, 3: 16, 2: 32}
_MAX_BLOCK = MAX_RECORD + 4096  # a larger block means a corrupt length, not a cut file
# Per byte order: block type and length, one 32-bit word, the fixed fields of an EPB and of
# an obsolete Packet Block (a 16-bit interface id and drop count, then as in an EPB).
_STRUCTS = {
    e: (
        struct.Struct(e + "II"),
        struct.Struct(e + "I"),
        struct.Struct(e + "5I"),
        struct.Struct(e + "HH4I"),
    )
    for e in "<>"
}


def read_pcapng(inp: Input, batch_size: int, counts: dict[str, int]) -> Iterator[RawBatch]:
    """Batches of a pcapng capture, one linktype each; Corrupt or Truncated where it breaks."""
    buf = inp.head
    stream = inp.stream
    base = off = 0  # file offset of buf[0]; where the next block starts in buf
    endian = "<"
    s_head, s_u32, s_epb, s_pb = _STRUCTS[endian]
    # Per IDB: linktype, (mul, div, offset_us) turning ticks into microseconds, snaplen.
    ifaces: list[tuple[int, int, int, int, int]] = []
    batch = RawBatch(-1)
    frames, stamps = batch.frames, batch.ts_us
    err: Corrupt | None = None
    try:
        while True:
            end = len(buf)
            while True:
                if off + 12 > end:
                    need = off + 12 - end
                    break
                if buf[off : off + 4] == PCAPNG_SHB:
                    bom = buf[off + 8 : off + 12]
                    if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                        raise Corrupt(
                            base + off, f"section header with byte-order magic {bom.hex()}"
                        )
                    endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                    s_head, s_u32, s_epb, s_pb = _STRUCTS[endian]
                    ifaces = []
                btype, blen = s_head.unpack_from(buf, off)
                # Each type's minimum is checked where it is parsed: one test per packet, not two.
                if blen < 12 or blen & 3 or blen > _MAX_BLOCK:
                    raise Corrupt(base + off, _bad_length(btype, blen))
                if off + blen > end:
                    need = off + blen - end
                    break
                bend = off + blen - 4  # where the trailing copy of the length sits
                (trail,) = s_u32.unpack_from(buf, bend)
                if trail != blen:
                    raise Corrupt(base + off, f"block length {blen} but trailing length {trail}")
                if btype == 6 or btype == 3 or btype == 2:  # noqa: PLR1714 - packet blocks
                    if blen < _MIN_BLOCK[btype]:
                        raise Corrupt(base + off, _bad_length(btype, blen))
                    if btype == 6:  # Enhanced Packet Block
                        ifid, hi, lo, cap, orig = s_epb.unpack_from(buf, off + 8)
                        start = off + 28
                    elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                        ifid = hi = lo = 0
                        start = off + 12
                        (orig,) = s_u32.unpack_from(buf, off + 8)
                        # Cut at the interface's snaplen; the block's padding is not data.
                        snap = ifaces[0][4] if ifaces and ifaces[0][4] else orig
                        cap = min(orig, snap, bend - start)
                    else:  # obsolete Packet Block
                        ifid, _drops, hi, lo, cap, orig = s_pb.unpack_from(buf, off + 8)
                        start = off + 28
                    if ifid >= len(ifaces):
                        raise Corrupt(
                            base + off, f"packet on interface {ifid}, which no block describes"
                        )
                    if start + cap > bend:
                        raise Corrupt(base + off, f"packet of {cap} bytes in a block of {blen}")
                    if cap < orig:
                        counts[SNAP_CUT] = counts.get(SNAP_CUT, 0) + 1
                    linktype, mul, div, shift, _snap = ifaces[ifid]
                    ts_us = ((hi << 32) | lo) * mul // div + shift
                    if ts_us > TS_MAX_US or ts_us < 0:
                        # A bad if_tsresol or if_tsoffset: counted, and kept at the nearest bound.
                        counts["capture.bad_timestamp"] = counts.get("capture.bad_timestamp", 0) + 1
                        ts_us = TS_MAX_US if ts_us > 0 else 0
                    if batch.linktype != linktype or len(frames) >= batch_size:
                        if frames:
                            yield batch
                        batch = RawBatch(linktype)
                        frames, stamps = batch.frames, batch.ts_us
                    frames.append(buf[start : start + cap])
                    stamps.append(ts_us)
                elif btype == 1:  # Interface Description Block
                    if blen < 20:
                        raise Corrupt(base + off, _bad_length(btype, blen))
                    linktype, _, snaplen = struct.unpack_from(endian + "HHI", buf, off + 8)
                    clock = _if_clock(buf, off + 16, bend, endian, base)
                    ifaces.append((linktype, *clock, snaplen))
                elif btype == _SHB and blen < 28:
                    raise Corrupt(base + off, _bad_length(btype, blen))
                off += blen
            if stream and frames:  # the next read may wait for the writer: hand these over now
                yield batch
                batch = RawBatch(batch.linktype)
                frames, stamps = batch.frames, batch.ts_us
            more = refill(inp, buf, off, base, need)
            if more is None:
                break
            buf, base = more
            off = 0
    except Corrupt as e:
        err = e
    except struct.error as e:  # a field past its block: corruption the checks above missed
        err = Corrupt(base + off, str(e))
    if frames:
        yield batch  # the packets before a cut or a break are good
    if err is not None:
        raise err
    left = len(buf) - off
    if left >= 12:
        blen = s_head.unpack_from(buf, off)[1]
        raise Truncated(base + off, f"the file ends inside a block of {blen} bytes")
    if left:
        raise Truncated(base + off, "the file ends inside a block header")


def _bad_length(btype: int, blen: int) -> str:
    """Why a block's length is impossible."""
    least = _MIN_BLOCK.get(btype, 12)
    if blen < least:
        why = f"shorter than the {least} bytes of its fixed fields"
    elif blen % 4:
        why = "not a multiple of 4"
    else:
        why = f"larger than {_MAX_BLOCK} bytes"
    return f"block of type {btype:#x} has length {blen}: {why}"


def _if_clock(data: bytes, off: int, end: int, endian: str, base: int) -> tuple[int, int, int]:
    """An IDB's if_tsresol and if_tsoffset as (mul, div, shift): ticks * mul // div + shift."""
    units = 1_000_000  # ticks per second; the default resolution is microseconds
    offset_s = 0
    while off + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", data, off)
        if code == 0:
            break
        if off + 4 + length > end:
            raise Corrupt(
                base + off, f"interface option {code} of {length} bytes overruns its block"
            )
        if code == 9 and length >= 1:
            v = data[off + 4]
            units = (2 if v & 0x80 else 10) ** (v & 0x7F)
        elif code == 14 and length >= 8:
            (offset_s,) = struct.unpack_from(endian + "q", data, off + 4)
        off += 4 + ((length + 3) & ~3)
    g = math.gcd(units, 1_000_000)
    return 1_000_000 // g, units // g, offset_s * 1_000_000
