"""Capture from a pcap or pcapng file (gzipped or not, or a pipe), keeping its timestamps."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Literal

from pydantic import Field

from otus.core.errors import CaptureError
from otus.core.model import SpecModel
from otus.core.packet import RawBatch
from otus.plugins.base import PluginContext
from otus.plugins.capture.fileio import (
    MAX_RECORD,
    PCAP_MAGIC,
    SNAP_CUT,
    Corrupt,
    Input,
    Truncated,
    open_capture,
    read_more,
    refill,
)
from otus.plugins.capture.pcapng import read_pcapng

__all__ = ["PcapConfig", "PcapFileCapturer", "TruncatedFile", "read_batches"]


class PcapConfig(SpecModel):
    """Read a capture file (pcap or pcapng) from start to end."""

    type: Literal["pcap"] = "pcap"
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="Path of the capture file (pcap or pcapng, may be gzipped); - is stdin.",
    )
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


class TruncatedFile(CaptureError):
    """The capture file ends in the middle of a record; the records before it were read."""


def _lengths_swapped(major: int, minor: int) -> int:
    """0: incl_len then orig_len; 1: either order (2.3); 2: the other way round, as libpcap."""
    # Versions before 2.3 (and DG/UX's 543.0) wrote orig_len first; some 2.3 writers did too.
    if (major == 2 and minor < 3) or major == 543:
        return 2
    return 1 if (major, minor) == (2, 3) else 0


def _read_pcap(inp: Input, batch_size: int, counts: dict[str, int]) -> Iterator[RawBatch]:
    endian, ts_div = PCAP_MAGIC[inp.head]
    buf = read_more(inp, 4, 20)
    if len(buf) < 20:
        raise Truncated(4 + len(buf), "the file ends inside the pcap header")
    major, minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from(endian + "HHiIII", buf)
    if major < 2:  # neither libpcap nor tshark reads these
        raise Corrupt(4, f"pcap version {major}.{minor} is not supported")
    swap = _lengths_swapped(major, minor)
    linktype &= 0x03FFFFFF  # the upper bits say whether frames end in an FCS, and its length
    unpack_from = struct.Struct(endian + "IIII").unpack_from
    stream = inp.stream
    base = 4  # file offset of buf[0], for error messages
    off = 20
    batch = RawBatch(linktype)
    frames, stamps = batch.frames, batch.ts_us
    err: Corrupt | None = None
    try:
        while True:
            end = len(buf)
            while off + 16 <= end:
                sec, frac, incl, orig = unpack_from(buf, off)
                if swap and (swap == 2 or incl > orig):
                    incl, orig = orig, incl
                if incl > MAX_RECORD:
                    raise Corrupt(base + off, f"record of {incl} bytes")
                start = off + 16
                if start + incl > end:
                    need = start + incl - end
                    break
                if incl < orig:
                    counts[SNAP_CUT] = counts.get(SNAP_CUT, 0) + 1
                frames.append(buf[start : start + incl])
                stamps.append(sec * 1_000_000 + frac // ts_div)
                off = start + incl
                if len(frames) >= batch_size:
                    yield batch
                    batch = RawBatch(linktype)
                    frames, stamps = batch.frames, batch.ts_us
            else:
                need = off + 16 - end
            if stream and frames:  # the next read may wait for the writer: hand these over now
                yield batch
                batch = RawBatch(linktype)
                frames, stamps = batch.frames, batch.ts_us
            more = refill(inp, buf, off, base, need)
            if more is None:
                break
            buf, base = more
            off = 0
    except Corrupt as e:
        err = e
    if frames:
        yield batch  # the records before a cut or a break are good
    if err is not None:
        raise err
    if off < len(buf):
        raise Truncated(base + off, "the file ends inside a record")


def _read(inp: Input, path: str, batch_size: int, counts: dict[str, int]) -> Iterator[RawBatch]:
    """The batches of an open capture; closes it; CaptureError (or TruncatedFile) on damage."""
    try:
        if inp.head in PCAP_MAGIC:
            yield from _read_pcap(inp, batch_size, counts)
        else:
            yield from read_pcapng(inp, batch_size, counts)
    except Truncated as e:
        raise TruncatedFile(f"{path!r} is truncated {e}") from None
    except Corrupt as e:
        raise CaptureError(f"{path!r} is corrupt {e}") from None
    finally:
        inp.close()


def read_batches(
    path: str, batch_size: int = 256, counts: dict[str, int] | None = None
) -> Iterator[RawBatch]:
    """Read a pcap or pcapng file as batches; raise CaptureError on a missing or corrupt file.

    A file that ends inside a record raises :class:`TruncatedFile` after its complete records;
    ``counts`` collects ``capture.bad_timestamp`` (pcapng timestamps outside 1970-9999, clamped)
    and ``capture.snap_cut`` (frames captured shorter than their length on the wire).
    """
    yield from _read(open_capture(path), path, batch_size, {} if counts is None else counts)


class PcapFileCapturer:
    """Capturer over a capture file; `batches()` ends at end of file."""

    Config = PcapConfig

    def __init__(self, config: PcapConfig, ctx: PluginContext) -> None:
        self._config = config
        # Opened once, now: errors show at start, and a pipe's first bytes are not lost.
        self._input: Input | None = open_capture(config.path)
        if self._input.stream and config.loop != 1:
            self._input.close()
            raise CaptureError(f"{config.path!r} is read once (a pipe or stdin): loop must be 1")
        self._closed = False
        self._packets = 0
        self._bytes = 0
        self._truncated_file = 0
        self._counts: dict[str, int] = {"capture.bad_timestamp": 0, SNAP_CUT: 0}

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
            inp, self._input = self._input or open_capture(cfg.path), None
            it = _read(inp, cfg.path, size, self._counts)
            try:
                while not self._closed:
                    try:
                        batch = next(it)
                    except StopIteration:
                        break
                    except TruncatedFile:
                        if self._packets == 0:
                            raise
                        # A file cut while being written: keep what we have, on every pass.
                        self._truncated_file = 1
                        break
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
                        # Let reporters and signal handlers run between batches.
                        await asyncio.sleep(0)
            finally:
                inp.close()  # also when _read never started (closed before the first batch)
            if first is None:
                return  # an empty file: nothing to repeat
            n_pass += 1
            shift += (last or first) - first + 1_000_000

    async def close(self) -> None:
        """Stop after the current batch."""
        self._closed = True
        if self._input is not None:  # opened, never read
            self._input.close()

    def stats(self) -> dict[str, int]:
        """``capture.*`` counters."""
        return {
            "capture.packets": self._packets,
            "capture.bytes": self._bytes,
            "capture.file_truncated": self._truncated_file,
            **self._counts,
        }
