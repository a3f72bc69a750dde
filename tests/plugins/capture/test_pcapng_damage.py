"""Damaged and lying pcapng files: read as far as they are good, never a struct.error."""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path

import pytest

from otus.core.errors import CaptureError
from otus.core.record import TS_MAX_US
from otus.plugins.base import PluginContext
from otus.plugins.capture.pcapfile import (
    PcapConfig,
    PcapFileCapturer,
    TruncatedFile,
    read_batches,
)
from tools.pcapio import epb, idb, shb

TS = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
FRAMES = [bytes([i]) * (40 + i) for i in range(6)]


def good_blocks() -> list[bytes]:
    """SHB, IDB, then one EPB per frame, microseconds apart."""
    return [shb(), idb(), *(epb(TS + i, f) for i, f in enumerate(FRAMES))]


def offset_of(blocks: list[bytes], i: int) -> int:
    return sum(map(len, blocks[:i]))


def read(path: Path, counts: dict[str, int] | None = None) -> tuple[list[bytes], list[int]]:
    """Frames and timestamps read until the end or the first error (which is re-raised)."""
    frames: list[bytes] = []
    stamps: list[int] = []
    for b in read_batches(str(path), 2, counts):
        frames += b.frames
        stamps += b.ts_us
    return frames, stamps


def read_until_error(path: Path) -> tuple[list[bytes], CaptureError | None]:
    frames: list[bytes] = []
    try:
        for b in read_batches(str(path), 2):
            frames += b.frames
    except CaptureError as e:
        return frames, e
    return frames, None


def capture(path: Path) -> tuple[int, dict[str, int], CaptureError | None]:
    """What the capturer yields and counts, and the error that ended it, if any."""

    async def go() -> tuple[int, dict[str, int], CaptureError | None]:
        cap = PcapFileCapturer(PcapConfig(path=str(path), batch_size=2), PluginContext())
        n = 0
        try:
            async for b in cap.batches():
                n += len(b)
        except CaptureError as e:
            return n, cap.stats(), e
        return n, cap.stats(), None

    return asyncio.run(go())


def test_the_writer_and_reader_agree(tmp_path: Path) -> None:
    path = tmp_path / "ok.pcapng"
    path.write_bytes(b"".join(good_blocks()))
    assert read(path) == (FRAMES, [TS + i for i in range(len(FRAMES))])


@pytest.mark.parametrize(
    ("btype", "blen"),
    [(6, 12), (6, 16), (6, 28), (3, 12), (1, 16), (0x0A0D0D0A, 24)],
    ids=["epb-12", "epb-16", "epb-28", "spb-12", "idb-16", "shb-24"],
)
def test_block_shorter_than_its_fixed_fields_is_corrupt(
    tmp_path: Path, btype: int, blen: int
) -> None:
    """Too short for its own fields: a clear error at its offset, the packets before it kept."""
    blocks = good_blocks()
    bad = struct.pack("<II", btype, blen)
    if btype == 0x0A0D0D0A:
        bad += b"\x4d\x3c\x2b\x1a"  # a byte-order magic, so only the length is wrong
    bad += b"\0" * (blen - len(bad) - 4) + struct.pack("<I", blen)
    blocks.insert(5, bad)
    path = tmp_path / "short.pcapng"
    path.write_bytes(b"".join(blocks))
    frames, err = read_until_error(path)
    assert frames == FRAMES[:3]
    assert err is not None and not isinstance(err, TruncatedFile)
    assert f"corrupt at byte {offset_of(blocks, 5)}: block of type {btype:#x}" in str(err)
    assert f"has length {blen}: shorter than" in str(err)


@pytest.mark.parametrize(
    ("blen", "trail", "what"),
    [(77, 77, "not a multiple of 4"), (8, 8, "shorter than"), (76, 80, "trailing length 80")],
)
def test_impossible_length_mid_file_fails_after_the_packets_before_it(
    tmp_path: Path, blen: int, trail: int, what: str
) -> None:
    blocks = good_blocks()
    assert len(blocks[4]) == 76
    head = struct.pack("<II", 6, blen)
    blocks[4] = head + blocks[4][8:-4] + struct.pack("<I", trail)
    path = tmp_path / "mid.pcapng"
    path.write_bytes(b"".join(blocks))
    n, stats, err = capture(path)
    assert n == 2  # the packets before the break are delivered...
    assert err is not None and not isinstance(err, TruncatedFile)  # ...and the task fails
    assert f"is corrupt at byte {offset_of(blocks, 4)}" in str(err)
    assert what in str(err)
    assert stats["capture.file_truncated"] == 0


def test_cut_last_bytes_keeps_complete_packets(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcapng"
    path.write_bytes(b"".join(good_blocks())[:-9])
    n, stats, err = capture(path)
    assert err is None
    assert n == len(FRAMES) - 1
    assert (stats["capture.packets"], stats["capture.file_truncated"]) == (n, 1)


def test_every_cut_reads_the_complete_packets_then_says_truncated(tmp_path: Path) -> None:
    """A file cut at any byte: the packets wholly before the cut, then TruncatedFile."""
    blocks = good_blocks()
    data = b"".join(blocks)
    ends = [offset_of(blocks, i) for i in range(len(blocks) + 1)]
    path = tmp_path / "cut.pcapng"
    for cut in range(4, len(data)):
        path.write_bytes(data[:cut])
        frames, err = read_until_error(path)
        complete = sum(1 for i in range(2, len(blocks)) if ends[i + 1] <= cut)
        assert frames == FRAMES[:complete], cut
        if cut in ends:
            assert err is None, cut
        else:
            assert isinstance(err, TruncatedFile), (cut, err)
            assert f"truncated at byte {max(e for e in ends if e <= cut)}" in str(err)


def test_random_damage_is_only_ever_a_capture_error(tmp_path: Path) -> None:
    """Flipped bytes anywhere: packets or a CaptureError, never another exception."""
    data = b"".join(good_blocks())
    rng = random.Random(7)
    path = tmp_path / "fuzz.pcapng"
    for _ in range(3000):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(4, len(buf))] = rng.randrange(256)
        path.write_bytes(bytes(buf))
        read_until_error(path)


def test_unknown_interface_and_bad_option_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "a.pcapng"
    path.write_bytes(shb() + idb() + epb(TS, b"x" * 40, iface=1))
    with pytest.raises(CaptureError, match="at byte 48: packet on interface 1"):
        read(path)
    # An if_tsresol option claiming 9 bytes in an IDB with room for 4.
    opt = struct.pack("<HHI", 9, 9, 6)
    body = struct.pack("<HHI", 1, 0, 65535) + opt
    bad_idb = struct.pack("<II", 1, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    path.write_bytes(shb() + bad_idb + epb(TS, b"x" * 40))
    with pytest.raises(CaptureError, match="interface option 9 of 9 bytes overruns"):
        read(path)


def test_if_tsresol_and_if_tsoffset(tmp_path: Path) -> None:
    path = tmp_path / "clock.pcapng"
    path.write_bytes(
        shb()
        + idb(tsresol=9)  # nanoseconds
        + idb(tsresol=0x80 | 10)  # 1/1024 s: not a whole number of microseconds
        + idb(tsresol=0, tsoffset_s=1_000)  # seconds, shifted
        + epb((TS + 5) * 1000 + 999, b"a" * 40, 0)
        + epb(1024 * 1_700_000_000 + 1, b"b" * 40, 1)
        + epb(1_700_000_000, b"c" * 40, 2)
    )
    counts: dict[str, int] = {}
    _, stamps = read(path, counts)
    assert stamps == [TS + 5, 1_700_000_000_000_000 + 976, 1_700_001_000_000_000]
    assert counts.get("capture.bad_timestamp", 0) == 0


def test_timestamps_beyond_rfc3339_are_clamped_and_counted(tmp_path: Path) -> None:
    """if_tsresol=0 on microsecond ticks, or an if_tsoffset far in the past: kept, clamped."""
    path = tmp_path / "lying.pcapng"
    path.write_bytes(
        shb()
        + idb()
        + idb(tsresol=0)
        + idb(tsoffset_s=-(10**12))
        + epb(TS, b"a" * 40, 0)
        + epb(TS, b"b" * 40, 1)
        + epb(TS, b"c" * 40, 2)
        + epb(TS + 1, b"d" * 40, 0)
    )
    n, stats, err = capture(path)
    assert err is None and n == 4
    assert stats["capture.bad_timestamp"] == 2
    counts: dict[str, int] = {}
    assert read(path, counts)[1] == [TS, TS_MAX_US, 0, TS + 1]


def test_big_endian_section(tmp_path: Path) -> None:
    def block(btype: int, body: bytes) -> bytes:
        n = len(body) + 12
        return struct.pack(">II", btype, n) + body + struct.pack(">I", n)

    frame = b"z" * 40
    path = tmp_path / "be.pcapng"
    path.write_bytes(
        block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
        + block(1, struct.pack(">HHI", 1, 0, 65535))
        + block(6, struct.pack(">5I", 0, TS >> 32, TS & 0xFFFFFFFF, 40, 40) + frame)
    )
    batches = list(read_batches(str(path)))
    assert [(b.linktype, b.frames, b.ts_us) for b in batches] == [(1, [frame], [TS])]


def test_pcap_record_too_large_mid_file_keeps_the_records_before(tmp_path: Path) -> None:
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    rec = struct.pack("<IIII", 1, 0, 40, 40) + b"r" * 40
    bad = struct.pack("<IIII", 2, 0, 0x7FFFFFFF, 0x7FFFFFFF)
    path = tmp_path / "bad.pcap"
    path.write_bytes(hdr + rec * 3 + bad + b"x" * 100)
    frames, err = read_until_error(path)
    assert frames == [b"r" * 40] * 3
    assert err is not None and not isinstance(err, TruncatedFile)
    assert f"corrupt at byte {24 + 3 * 56}: record of 2147483647 bytes" in str(err)
