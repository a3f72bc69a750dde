"""The capture-file reader against files written by scapy's independent writers."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgWriter, PcapWriter

from otus.core.errors import CaptureError
from otus.core.packet import LINKTYPE_ETHERNET, LINKTYPE_RAW
from otus.plugins.base import PluginContext
from otus.plugins.capture.pcapfile import PcapConfig, PcapFileCapturer, read_batches


def _frames(n: int) -> list[Ether]:
    out = []
    for i in range(n):
        p = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5060, dport=5060)
        p = p / f"OPTIONS sip:{i}@x SIP/2.0\r\n\r\n".encode()
        p.time = 1_700_000_000 + i + 0.123456
        out.append(p)
    return out


def _all(path: Path, batch_size: int = 256) -> tuple[list[bytes], list[int], set[int]]:
    frames: list[bytes] = []
    stamps: list[int] = []
    types = set()
    for b in read_batches(str(path), batch_size):
        frames += b.frames
        stamps += b.ts_us
        types.add(b.linktype)
    return frames, stamps, types


@pytest.mark.parametrize("nano", [False, True])
def test_pcap_frames_and_timestamps(tmp_path: Path, nano: bool) -> None:
    pkts = _frames(700)
    path = tmp_path / "a.pcap"
    with PcapWriter(str(path), nano=nano) as w:
        for p in pkts:
            w.write(p)
    frames, stamps, types = _all(path, batch_size=64)
    assert frames == [bytes(p) for p in pkts]
    assert stamps == [(1_700_000_000 + i) * 1_000_000 + 123456 for i in range(700)]
    assert types == {LINKTYPE_ETHERNET}


def test_pcapng_frames_timestamps_and_linktypes(tmp_path: Path) -> None:
    pkts = _frames(10)
    path = tmp_path / "a.pcapng"
    with PcapNgWriter(str(path)) as w:
        for p in pkts:
            w.write(p)
    frames, stamps, types = _all(path)
    assert frames == [bytes(p) for p in pkts]
    assert stamps == [(1_700_000_000 + i) * 1_000_000 + 123456 for i in range(10)]
    assert types == {LINKTYPE_ETHERNET}


def test_raw_ip_linktype(tmp_path: Path) -> None:
    path = tmp_path / "raw.pcap"
    with PcapWriter(str(path), linktype=LINKTYPE_RAW) as w:
        w.write(IP() / UDP())
    _, _, types = _all(path)
    assert types == {LINKTYPE_RAW}


def test_missing_and_garbage_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot open"):
        list(read_batches(str(tmp_path / "nope.pcap")))
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"hello world, not a capture")
    with pytest.raises(CaptureError, match="not a pcap"):
        list(read_batches(str(bad)))


def test_truncated_tail_keeps_complete_records(tmp_path: Path) -> None:
    pkts = _frames(5)
    path = tmp_path / "cut.pcap"
    with PcapWriter(str(path)) as w:
        for p in pkts:
            w.write(p)
    data = path.read_bytes()
    path.write_bytes(data[:-10])  # tcpdump killed mid-write

    async def collect() -> tuple[int, dict[str, int]]:
        cap = PcapFileCapturer(PcapConfig(path=str(path)), PluginContext())
        n = 0
        async for b in cap.batches():
            n += len(b)
        return n, cap.stats()

    n, stats = asyncio.run(collect())
    assert n == 4
    assert stats["capture.packets"] == 4
    assert stats["capture.file_truncated"] == 1


def test_absurd_record_length_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "huge.pcap"
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    path.write_bytes(hdr + struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 0x7FFFFFFF) + b"x" * 100)
    with pytest.raises(CaptureError, match="corrupt"):
        list(read_batches(str(path)))
