"""Capture from a pcap or pcapng file, keeping the recorded timestamps."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterator
from typing import BinaryIO, Literal

from pydantic import Field

from otus.core.errors import CaptureError
from otus.core.model import SpecModel
from otus.core.packet import RawBatch
from otus.plugins.base import PluginContext

__all__ = ["PcapConfig", "PcapFileCapturer", "read_batches"]

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
    """The file ends or breaks in the middle of a record."""


def _read_pcap(f: BinaryIO, head: bytes, batch_size: int) -> Iterator[RawBatch]:
    endian, ts_div = _PCAP_MAGIC[head[:4]]
    rest = f.read(20)
    if len(rest) < 20:
        raise _Corrupt("pcap header truncated")
    (linktype,) = struct.unpack(endian + "I", rest[16:20])
    linktype &= 0x0FFFFFFF  # upper bits carry FCS info
    unpack_from = struct.Struct(endian + "IIII").unpack_from
    buf = b""
    off = 0
    batch = RawBatch(linktype)
    frames, stamps = batch.frames, batch.ts_us
    while True:
        chunk = f.read(_CHUNK)
        if chunk:
            buf = buf[off:] + chunk
            off = 0
        end = len(buf)
        while off + 16 <= end:
            sec, frac, incl, _orig = unpack_from(buf, off)
            if incl > _MAX_RECORD:
                raise _Corrupt(f"record of {incl} bytes")
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
        raise _Corrupt("file ends inside a record")


def _read_pcapng(f: BinaryIO, head: bytes, batch_size: int) -> Iterator[RawBatch]:
    data = head + f.read()
    n = len(data)
    off = 0
    endian = "<"
    ifaces: list[tuple[int, int]] = []  # (linktype, ticks per microsecond divisor or negative mul)
    batch: RawBatch | None = None
    while off + 12 <= n:
        btype_raw = data[off : off + 4]
        if btype_raw == _PCAPNG_SHB:
            bom = data[off + 8 : off + 12]
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces = []
        btype, blen = struct.unpack_from(endian + "II", data, off)
        if blen < 12 or blen % 4 or off + blen > n:
            raise _Corrupt(f"bad block length {blen}")
        body = off + 8
        if btype == 1:  # Interface Description Block
            linktype = struct.unpack_from(endian + "H", data, body)[0]
            ifaces.append((linktype, _if_tsresol(data, body + 8, off + blen - 4, endian)))
        elif btype in (6, 3):  # Enhanced / Simple Packet Block
            if btype == 6:
                ifid, hi, lo, cap, _orig = struct.unpack_from(endian + "IIIII", data, body)
                start = body + 20
            else:
                ifid, hi, lo = 0, 0, 0
                (_orig,) = struct.unpack_from(endian + "I", data, body)
                cap = min(_orig, blen - 16)
                start = body + 4
            if ifid >= len(ifaces) or start + cap > off + blen:
                raise _Corrupt("packet block refers to an unknown interface or overruns")
            linktype, per_us = ifaces[ifid]
            ticks = (hi << 32) | lo
            ts_us = ticks // per_us if per_us > 0 else ticks * -per_us
            if batch is None or batch.linktype != linktype or len(batch) >= batch_size:
                if batch is not None and len(batch):
                    yield batch
                batch = RawBatch(linktype)
            batch.frames.append(data[start : start + cap])
            batch.ts_us.append(ts_us)
        off += blen
    if batch is not None and len(batch):
        yield batch
    if off != n:
        raise _Corrupt("file ends inside a block")


def _if_tsresol(data: bytes, off: int, end: int, endian: str) -> int:
    """Ticks per microsecond from an IDB's if_tsresol (positive: divide, negative: multiply)."""
    while off + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", data, off)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = data[off + 4]
            base = 2 if v & 0x80 else 10
            units_per_s = int(base ** (v & 0x7F))
            if units_per_s >= 1_000_000:
                return units_per_s // 1_000_000
            return -(1_000_000 // units_per_s)
        off += 4 + ((length + 3) & ~3)
    return 1  # default resolution: microseconds


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


def read_batches(path: str, batch_size: int = 256) -> Iterator[RawBatch]:
    """Read a pcap or pcapng file as batches; raise CaptureError on a missing or corrupt file."""
    f, head = _open(path)
    try:
        if head in _PCAP_MAGIC:
            yield from _read_pcap(f, head, batch_size)
        else:
            yield from _read_pcapng(f, head, batch_size)
    except _Corrupt as e:
        raise CaptureError(f"{path!r} is truncated or corrupt: {e}") from None
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

    async def batches(self) -> AsyncIterator[RawBatch]:
        """Yield the file's frames; a corrupt tail is counted, what came before is kept."""
        cfg = self._config
        rate = cfg.rate_pps
        # Paced replay: small batches so a slow rate still moves every ~100 ms.
        size = cfg.batch_size if rate is None else max(1, min(cfg.batch_size, rate // 10))
        start = asyncio.get_running_loop().time()
        n_pass = 0
        shift = 0  # later passes are moved forward in time so timestamps keep increasing
        while not self._closed and (cfg.loop == 0 or n_pass < cfg.loop):
            first = last = None
            it = read_batches(cfg.path, size)
            while not self._closed:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except CaptureError:
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
        }
