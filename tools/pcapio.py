"""Minimal pcap (microsecond) reader and writer that keep timestamps and lengths exact.

Also the pcapng blocks a test needs to build a file by hand, lying headers included.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "Frame",
    "PcapWriter",
    "epb",
    "idb",
    "iter_pcap",
    "read_pcap",
    "shb",
    "write_pcap",
    "write_pcapng",
]

_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


@dataclass(slots=True)
class Frame:
    """One pcap record: microsecond timestamp, captured bytes, length on the wire."""

    ts_us: int
    data: bytes
    orig_len: int = 0  # 0 means len(data)


def read_pcap(path: str | Path) -> tuple[int, list[Frame]]:
    """(linktype, frames) of a little- or big-endian classic pcap (us or ns timestamps)."""
    raw = Path(path).read_bytes()
    magic = struct.unpack_from("<I", raw)[0]
    if magic in (_MAGIC_US, _MAGIC_NS):
        endian = "<"
    else:
        endian = ">"
        magic = struct.unpack_from(">I", raw)[0]
        if magic not in (_MAGIC_US, _MAGIC_NS):
            raise ValueError(f"{path}: not a classic pcap file (pcapng is not read here)")
    linktype = struct.unpack_from(endian + "I", raw, 20)[0] & 0x0FFFFFFF
    div = 1000 if magic == _MAGIC_NS else 1
    rec = struct.Struct(endian + "IIII")
    frames = []
    off = _GLOBAL.size
    while off + rec.size <= len(raw):
        sec, frac, incl, orig = rec.unpack_from(raw, off)
        off += rec.size
        frames.append(Frame(sec * 1_000_000 + frac // div, raw[off : off + incl], orig))
        off += incl
    return linktype, frames


class PcapWriter:
    """Streaming writer: microsecond pcap, little-endian, snaplen 262144."""

    def __init__(self, path: str | Path, linktype: int = 1) -> None:
        self._f: BinaryIO = Path(path).open("wb")  # noqa: SIM115 - closed in close()
        self._f.write(_GLOBAL.pack(_MAGIC_US, 2, 4, 0, 0, 262144, linktype))
        self.count = 0

    def write(self, ts_us: int, data: bytes, orig_len: int = 0) -> None:
        """Append one record (``orig_len`` 0 = not truncated)."""
        sec, usec = divmod(ts_us, 1_000_000)
        self._f.write(_RECORD.pack(sec, usec, len(data), orig_len or len(data)))
        self._f.write(data)
        self.count += 1

    def close(self) -> None:
        """Flush and close the file."""
        self._f.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_pcap(path: str | Path, frames: Iterable[Frame], linktype: int = 1) -> int:
    """Write frames to a new pcap; returns how many."""
    with PcapWriter(path, linktype) as w:
        for f in frames:
            w.write(f.ts_us, f.data, f.orig_len)
        return w.count


def iter_pcap(path: str | Path) -> Iterator[Frame]:
    """The frames of a pcap (convenience over :func:`read_pcap`)."""
    yield from read_pcap(path)[1]


def _block(btype: int, body: bytes) -> bytes:
    """A pcapng block: type, total length, body padded to 4 bytes, total length again."""
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def shb() -> bytes:
    """A little-endian Section Header Block, version 1.0, section length unknown."""
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(linktype: int = 1, *, tsresol: int | None = None, tsoffset_s: int = 0) -> bytes:
    """An Interface Description Block, with if_tsresol and if_tsoffset options when given."""
    opts = b""
    if tsresol is not None:
        opts += struct.pack("<HHB3x", 9, 1, tsresol)
    if tsoffset_s:
        opts += struct.pack("<HHq", 14, 8, tsoffset_s)
    if opts:
        opts += struct.pack("<HH", 0, 0)
    return _block(1, struct.pack("<HHI", linktype, 0, 262144) + opts)


def epb(ticks: int, data: bytes, iface: int = 0) -> bytes:
    """An Enhanced Packet Block: ``ticks`` in its interface's resolution (default microseconds)."""
    head = struct.pack("<IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
    return _block(6, head + data)


def write_pcapng(path: str | Path, frames: Iterable[Frame], linktype: int = 1) -> int:
    """Write frames to a new pcapng (one section, one interface, microseconds); returns how many."""
    blocks = [shb(), idb(linktype)]
    blocks += [epb(f.ts_us, f.data) for f in frames]
    Path(path).write_bytes(b"".join(blocks))
    return len(blocks) - 2
