"""Capture from a pcap or pcapng file, keeping the recorded timestamps."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO, Literal

from pydantic import Field

from otus.core.errors import CaptureError
from otus.core.model import SpecModel
from otus.core.packet import RawBatch
from otus.core.record import TS_MAX_US
from otus.plugins.base import PluginContext

__all__ = ["PcapConfig", "PcapFileCapturer", "TruncatedFile", "read_batches"]

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1),
    b"\x4d\x3c\xb2\xa1": ("<", 1000),  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1000),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_CHUNK = 1 << 20
_MAX_RECORD = 1 << 24  # a record larger than 16 MiB means a corrupt file, not a frame


class PcapConfig(SpecModel):
    """Read a capture file (pcap or pcapng) from start to end."""

    type: Literal["pcap"] = "pcap"
    path: str = Field(min_length=1, max_length=4096, description="Path of the capture file.")
    batch_size: int = Field(default=256, ge=1, le=8192, description="Frames per batch.")
    loop: int = Field(
        default=1,
        ge=0,
        le=1_000_000,
        description="Passes over the file; 0 replays it until the task is stopped.",
    )
    rate_pps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Replay at most this many frames per second (default: as fast as possible).",
    )


class _Corrupt(Exception):
    """The file breaks at a byte offset: what is there cannot be a record."""

    def __init__(self, off: int, what: str) -> None:
        super().__init__(f"at byte {off}: {what}")


class _Truncated(_Corrupt):
    """The file ends in the middle of a record: a capture cut while being written."""


class TruncatedFile(CaptureError):
    """The capture file ends in the middle of a record; the records before it were read."""


def _read_pcap(f: BinaryIO, head: bytes, batch_size: int) -> Iterator[RawBatch]:
    endian, ts_div = _PCAP_MAGIC[head[:4]]
    rest = f.read(20)
    if len(rest) < 20:
        raise _Truncated(4 + len(rest), "the file ends inside the pcap header")
    (linktype,) = struct.unpack(endian + "I", rest[16:20])
    linktype &= 0x0FFFFFFF  # upper bits carry FCS info
    unpack_from = struct.Struct(endian + "IIII").unpack_from
    buf = b""
    base = 24  # file offset of buf[0], for error messages
    off = 0
    batch = RawBatch(linktype)
    frames, stamps = batch.frames, batch.ts_us
    while True:
        chunk = f.read(_CHUNK)
        if chunk:
            base += off
            buf = buf[off:] + chunk
            off = 0
        end = len(buf)
        while off + 16 <= end:
            sec, frac, incl, _orig = unpack_from(buf, off)
            if incl > _MAX_RECORD:
                if frames:
                    yield batch  # what came before is good
                raise _Corrupt(base + off, f"record of {incl} bytes")
            start = off + 16
            if start + incl > end:
                break
            frames.append(buf[start : start + incl])
            stamps.append(sec * 1_000_000 + frac // ts_div)
            off = start + incl
            if len(frames) >= batch_size:
                yield batch
                batch = RawBatch(linktype)
                frames, stamps = batch.frames, batch.ts_us
        if not chunk:
            break
    if frames:
        yield batch
    if off < len(buf):
        raise _Truncated(base + off, "the file ends inside a record")


_SHB = 0x0A0D0D0A  # the same in either byte order
# Smallest total length of each block type: 12 bytes of framing plus its fixed fields.
_MIN_BLOCK = {_SHB: 28, 1: 20, 6: 32, 3: 16}
_MAX_BLOCK = _MAX_RECORD + 4096  # a larger block means a corrupt length, not a cut file
# Per byte order: block type and length, one 32-bit word, an EPB's five fixed fields.
_STRUCTS = {
    e: (struct.Struct(e + "II"), struct.Struct(e + "I"), struct.Struct(e + "5I")) for e in "<>"
}


def _read_pcapng(
    f: BinaryIO, head: bytes, batch_size: int, counts: dict[str, int]
) -> Iterator[RawBatch]:
    data = head + f.read()
    n = len(data)
    off = 0
    endian = "<"
    s_head, s_u32, s_epb = _STRUCTS[endian]
    ifaces: list[tuple[int, int, int, int]] = []  # (linktype, mul, div, offset_us) per IDB
    batch = RawBatch(-1)
    frames, stamps = batch.frames, batch.ts_us
    err: _Corrupt | None = None
    try:
        while off < n:
            if off + 12 > n:
                raise _Truncated(off, "the file ends inside a block header")
            if data[off : off + 4] == _PCAPNG_SHB:
                bom = data[off + 8 : off + 12]
                if bom not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
                    raise _Corrupt(off, f"section header with byte-order magic {bom.hex()}")
                endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
                s_head, s_u32, s_epb = _STRUCTS[endian]
                ifaces = []
            btype, blen = s_head.unpack_from(data, off)
            # Each type's own minimum is checked where it is parsed: one test per packet, not two.
            if blen < 12 or blen & 3 or blen > _MAX_BLOCK:
                raise _Corrupt(off, _bad_length(btype, blen))
            if off + blen > n:
                raise _Truncated(off, f"the file ends inside a block of {blen} bytes")
            end = off + blen - 4  # where the trailing copy of the length sits
            (trail,) = s_u32.unpack_from(data, end)
            if trail != blen:
                raise _Corrupt(off, f"block length {blen} but trailing length {trail}")
            if btype == 6 or btype == 3:  # noqa: PLR1714 - Enhanced / Simple Packet Block
                if btype == 6:
                    if blen < 32:
                        raise _Corrupt(off, _bad_length(btype, blen))
                    ifid, hi, lo, cap, _orig = s_epb.unpack_from(data, off + 8)
                    start = off + 28
                else:
                    if blen < 16:
                        raise _Corrupt(off, _bad_length(btype, blen))
                    ifid = hi = lo = 0
                    start = off + 12
                    cap = min(s_u32.unpack_from(data, off + 8)[0], end - start)
                if ifid >= len(ifaces):
                    raise _Corrupt(off, f"packet on interface {ifid}, which no block describes")
                if start + cap > end:
                    raise _Corrupt(off, f"packet of {cap} bytes in a block of {blen}")
                linktype, mul, div, shift = ifaces[ifid]
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
                frames.append(data[start : start + cap])
                stamps.append(ts_us)
            elif btype == 1:  # Interface Description Block
                if blen < 20:
                    raise _Corrupt(off, _bad_length(btype, blen))
                (linktype,) = struct.unpack_from(endian + "H", data, off + 8)
                ifaces.append((linktype, *_if_clock(data, off + 16, end, endian)))
            elif btype == _SHB and blen < 28:
                raise _Corrupt(off, _bad_length(btype, blen))
            off += blen
    except _Corrupt as e:
        err = e
    except struct.error as e:  # a field past its block: corruption the checks above missed
        err = _Corrupt(off, str(e))
    if frames:
        yield batch  # the packets before a cut or a break are good
    if err is not None:
        raise err


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


def _if_clock(data: bytes, off: int, end: int, endian: str) -> tuple[int, int, int]:
    """An IDB's if_tsresol and if_tsoffset as (mul, div, shift): ticks * mul // div + shift."""
    units = 1_000_000  # ticks per second; the default resolution is microseconds
    offset_s = 0
    while off + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", data, off)
        if code == 0:
            break
        if off + 4 + length > end:
            raise _Corrupt(off, f"interface option {code} of {length} bytes overruns its block")
        if code == 9 and length >= 1:
            v = data[off + 4]
            units = (2 if v & 0x80 else 10) ** (v & 0x7F)
        elif code == 14 and length >= 8:
            (offset_s,) = struct.unpack_from(endian + "q", data, off + 4)
        off += 4 + ((length + 3) & ~3)
    g = math.gcd(units, 1_000_000)
    return 1_000_000 // g, units // g, offset_s * 1_000_000


def _open(path: str) -> tuple[BinaryIO, bytes]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as e:
        raise CaptureError(f"cannot open capture file {path!r}: {e.strerror}") from None
    head = f.read(4)
    if head not in _PCAP_MAGIC and head != _PCAPNG_SHB:
        f.close()
        raise CaptureError(f"{path!r} is not a pcap or pcapng file")
    return f, head


def read_batches(
    path: str, batch_size: int = 256, counts: dict[str, int] | None = None
) -> Iterator[RawBatch]:
    """Read a pcap or pcapng file as batches; raise CaptureError on a missing or corrupt file.

    A file that ends inside a record raises :class:`TruncatedFile` after its complete records;
    ``counts`` collects ``capture.bad_timestamp`` (pcapng timestamps outside 1970-9999, clamped).
    """
    f, head = _open(path)
    try:
        if head in _PCAP_MAGIC:
            yield from _read_pcap(f, head, batch_size)
        else:
            yield from _read_pcapng(f, head, batch_size, {} if counts is None else counts)
    except _Truncated as e:
        raise TruncatedFile(f"{path!r} is truncated {e}") from None
    except _Corrupt as e:
        raise CaptureError(f"{path!r} is corrupt {e}") from None
    finally:
        f.close()


class PcapFileCapturer:
    """Capturer over a capture file; `batches()` ends at end of file."""

    Config = PcapConfig

    def __init__(self, config: PcapConfig, ctx: PluginContext) -> None:
        self._config = config
        _open(config.path)[0].close()  # fail at start, not at the first batch
        self._closed = False
        self._packets = 0
        self._bytes = 0
        self._truncated_file = 0
        self._counts: dict[str, int] = {"capture.bad_timestamp": 0}

    async def batches(self) -> AsyncIterator[RawBatch]:
        """Yield the file's frames; a cut tail is counted, a break mid-file fails after them."""
        cfg = self._config
        rate = cfg.rate_pps
        # Paced replay: small batches so a slow rate still moves every ~100 ms.
        size = cfg.batch_size if rate is None else max(1, min(cfg.batch_size, rate // 10))
        start = asyncio.get_running_loop().time()
        n_pass = 0
        shift = 0  # later passes are moved forward in time so timestamps keep increasing
        while not self._closed and (cfg.loop == 0 or n_pass < cfg.loop):
            first = last = None
            it = read_batches(cfg.path, size, self._counts)
            while not self._closed:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except TruncatedFile:
                    if self._packets == 0:
                        raise
                    self._truncated_file = 1  # a file cut while being written: keep what we have
                    return
                if first is None:
                    first = batch.ts_us[0]
                last = batch.ts_us[-1]
                if shift:
                    batch.ts_us[:] = [t + shift for t in batch.ts_us]
                self._packets += len(batch.frames)
                self._bytes += sum(map(len, batch.frames))
                yield batch
                if rate is not None:
                    ahead = start + self._packets / rate - asyncio.get_running_loop().time()
                    await asyncio.sleep(max(0.0, ahead))
                else:
                    await asyncio.sleep(0)  # let reporters and signal handlers run between batches
            if first is None:
                return  # an empty file: nothing to repeat
            n_pass += 1
            shift += (last or first) - first + 1_000_000

    async def close(self) -> None:
        """Stop after the current batch."""
        self._closed = True

    def stats(self) -> dict[str, int]:
        """``capture.*`` counters."""
        return {
            "capture.packets": self._packets,
            "capture.bytes": self._bytes,
            "capture.file_truncated": self._truncated_file,
            **self._counts,
        }
