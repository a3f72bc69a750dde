"""Capture-file variants read by Otus and by tshark, frame by frame: lengths and times agree."""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from otus.core.errors import CaptureError
from otus.plugins.capture.pcapfile import read_batches
from tests.infra.cli import ROOT, run_otus
from tests.infra.skips import requires_tool
from tests.infra.tshark import diff_messages, normalize_otus, sip_messages
from tools.pcapio import Frame, read_pcap

pytestmark = requires_tool("tshark")

DATA = ROOT / "tests" / "data"
LT_ETH, LT_SLL = 1, 113
_, ETH = read_pcap(DATA / "sip-udp4.pcap")  # 35 frames, 33 SIP messages
_, SLL = read_pcap(DATA / "sip-any-sll.pcap")
_, ETH6 = read_pcap(DATA / "sip-udp6.pcap")


def tshark_frames(path: Path, display: str = "") -> list[tuple[int | None, int, int]]:
    """(timestamp in microseconds or None, captured length, length) of each frame, per tshark."""
    args = ["tshark", "-n", "-r", str(path), "-T", "fields"]
    if display:
        args += ["-Y", display]
    args += ["-e", "frame.time_epoch", "-e", "frame.cap_len", "-e", "frame.len"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    rows = []
    for line in out.splitlines():
        epoch, cap, length = line.split("\t")
        sec, _, frac = epoch.partition(".")
        ts = int(sec) * 1_000_000 + int((frac + "000000")[:6]) if epoch else None
        rows.append((ts, int(cap), int(length)))
    return rows


def otus_frames(path: Path, counts: dict[str, int] | None = None) -> list[tuple[int, int]]:
    """(timestamp, captured length) of every frame, as the reader yields them."""
    return [
        (ts, len(f))
        for b in read_batches(str(path), 64, counts)
        for f, ts in zip(b.frames, b.ts_us, strict=True)
    ]


def otus_records(path: Path) -> tuple[list[dict[str, object]], str]:
    """Normalized records of `otus run -r` and its summary line; asserts a clean exit."""
    proc = run_otus("run", "-r", str(path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    recs = [normalize_otus(json.loads(line)) for line in proc.stdout.splitlines()]
    return recs, proc.stderr


def assert_same_as_tshark(path: Path, *, sip: bool = True) -> None:
    """Frames (timestamps, lengths) and, with ``sip``, SIP messages equal to tshark's."""
    want = tshark_frames(path)
    got = otus_frames(path)
    assert [(ts, cap) for ts, cap, _ in want] == got
    if sip:
        recs, _ = otus_records(path)
        ref = sip_messages(path)
        assert recs == ref, diff_messages(recs, ref)


def block(e: str, btype: int, body: bytes) -> bytes:
    """A pcapng block in byte order ``e``, body padded to 4 bytes."""
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(f"{e}II", btype, n) + body + struct.pack(f"{e}I", n)


def shb(e: str) -> bytes:
    """A Section Header Block in byte order ``e``."""
    return block(e, 0x0A0D0D0A, struct.pack(f"{e}IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(e: str, linktype: int, tsresol: int | None = None, tsoff: int = 0, snap: int = 0) -> bytes:
    """An Interface Description Block with if_tsresol and if_tsoffset when given."""
    opts = b""
    if tsresol is not None:
        opts += struct.pack(f"{e}HHB3x", 9, 1, tsresol)
    if tsoff:
        opts += struct.pack(f"{e}HHq", 14, 8, tsoff)
    if opts:
        opts += struct.pack(f"{e}HH", 0, 0)
    return block(e, 1, struct.pack(f"{e}HHI", linktype, 0, snap) + opts)


def ticks(ts_us: int, tsresol: int | None) -> int:
    """``ts_us`` in an interface's if_tsresol units."""
    if tsresol is None:
        return ts_us
    units: int = (2 if tsresol & 0x80 else 10) ** (tsresol & 0x7F)
    return ts_us * units // 1_000_000


def epb(e: str, iface: int, t: int, f: Frame) -> bytes:
    """An Enhanced Packet Block of ``f`` at ``t`` ticks of its interface's clock."""
    orig = f.orig_len or len(f.data)
    return block(
        e, 6, struct.pack(f"{e}5I", iface, t >> 32, t & 0xFFFFFFFF, len(f.data), orig) + f.data
    )


def pcap(
    frames: list[Frame],
    *,
    e: str = "<",
    version: tuple[int, int] = (2, 4),
    linktype: int = 1,
    swapped: bool = False,
) -> bytes:
    """A microsecond pcap; ``swapped`` writes orig_len before incl_len (pcap before 2.3)."""
    out = struct.pack(f"{e}IHHiIII", 0xA1B2C3D4, *version, 0, 0, 262144, linktype)
    for f in frames:
        incl, orig = len(f.data), f.orig_len or len(f.data)
        if swapped:
            incl, orig = orig, incl
        out += struct.pack(f"{e}IIII", *divmod(f.ts_us, 1_000_000), incl, orig) + f.data
    return out


def snapped(frames: list[Frame], n: int) -> list[Frame]:
    """The frames cut to ``n`` bytes, with their length on the wire kept."""
    return [Frame(f.ts_us, f.data[:n], len(f.data)) for f in frames]


@pytest.mark.parametrize(
    ("version", "swapped"),
    [
        ((2, 0), True),
        ((2, 2), True),
        ((2, 3), True),
        ((2, 3), False),
        ((2, 4), False),
        ((543, 0), True),
    ],
    ids=["2.0", "2.2", "2.3-old-order", "2.3", "2.4", "543.0"],
)
@pytest.mark.parametrize("e", ["<", ">"], ids=["le", "be"])
def test_pcap_versions_and_length_order_read_like_tshark(
    tmp_path: Path, version: tuple[int, int], swapped: bool, e: str
) -> None:
    """Before 2.3 the two lengths of a record come the other way round; 2.3 has both orders."""
    path = tmp_path / "v.pcap"
    path.write_bytes(pcap(snapped(ETH, 200), e=e, version=version, swapped=swapped))
    want = tshark_frames(path)
    assert len(want) == len(ETH)
    counts: dict[str, int] = {}
    assert otus_frames(path, counts) == [(ts, cap) for ts, cap, _ in want]
    assert counts["capture.snap_cut"] == sum(1 for _, cap, n in want if cap < n) == 33


def test_pcap_version_1_is_refused_like_tshark(tmp_path: Path) -> None:
    path = tmp_path / "v1.pcap"
    path.write_bytes(pcap(ETH, version=(1, 0)))
    proc = subprocess.run(["tshark", "-r", str(path)], capture_output=True, timeout=60, check=False)
    assert proc.returncode != 0
    with pytest.raises(
        CaptureError, match=r"corrupt at byte 4: pcap version 1\.0 is not supported"
    ):
        otus_frames(path)


def test_linktype_with_fcs_bits_is_still_ethernet(tmp_path: Path) -> None:
    """The top bits of the pcap linktype say frames end in a 4-byte FCS (libpcap's LT_FCS)."""
    with_fcs = [Frame(f.ts_us, f.data + struct.pack("<I", zlib.crc32(f.data))) for f in ETH]
    path = tmp_path / "fcs.pcap"
    path.write_bytes(pcap(with_fcs, linktype=(4 << 28) | 0x04000000 | LT_ETH))
    assert {b.linktype for b in read_batches(str(path))} == {LT_ETH}
    assert_same_as_tshark(path)


def test_pcapng_obsolete_packet_blocks_are_read(tmp_path: Path) -> None:
    """Packet Blocks (type 2, pcapng before EPBs): a 16-bit interface id and drop count."""
    blocks = [shb(">"), idb(">", LT_ETH, tsresol=9)]
    for f in ETH:
        t = ticks(f.ts_us, 9)
        head = struct.pack(">HH4I", 0, 3, t >> 32, t & 0xFFFFFFFF, len(f.data), len(f.data))
        blocks.append(block(">", 2, head + f.data))
    path = tmp_path / "pb.pcapng"
    path.write_bytes(b"".join(blocks))
    assert len(otus_frames(path)) == len(ETH)
    assert_same_as_tshark(path)


def test_pcapng_interfaces_clocks_and_sections(tmp_path: Path) -> None:
    """Several linktypes and clocks (ns, 2^-20 s, ms, if_tsoffset), a big-endian second section,
    and blocks that are no packets (NRB, ISB, DSB, custom, systemd journal) skipped."""
    clocks = {0: 9, 1: 0x80 | 20, 2: 3, 3: None}
    sec1 = [shb("<"), idb("<", LT_ETH, 9), idb("<", LT_SLL, 0x80 | 20), idb("<", LT_ETH, 3)]
    sec1 += [idb("<", LT_ETH, tsoff=1000)]
    sec1 += [block("<", 4, struct.pack("<HH4s4sHH", 1, 8, b"\x0a\x2f\0\x02", b"uas\0", 0, 0))]
    sec1 += [block("<", 10, struct.pack("<II", 0x544C534B, 4) + b"abcd")]
    items = sorted([(f.ts_us, 0, f) for f in ETH] + [(f.ts_us, 1, f) for f in SLL])
    items += [(f.ts_us, 2, f) for f in ETH6[:10]] + [(ETH[0].ts_us - 10**9, 3, ETH[0])]
    sec1 += [epb("<", i, ticks(ts, clocks[i]), f) for ts, i, f in items]
    sec1 += [block("<", 5, struct.pack("<III", 0, 0, 0)), block("<", 0xBAD, b"\0\0\x7e\xd9hello")]
    sec2 = [shb(">"), block(">", 0x40000BAD, b"\0\0\x7e\xd9x"), idb(">", LT_ETH, tsresol=6)]
    sec2 += [block(">", 9, b"__REALTIME_TIMESTAMP=1\n")]
    sec2 += [epb(">", 0, f.ts_us, f) for f in ETH6[10:]]
    path = tmp_path / "multi.pcapng"
    path.write_bytes(b"".join(sec1 + sec2))
    got = otus_frames(path)
    assert len(got) == len(ETH) + len(SLL) + len(ETH6) + 1
    # tshark also shows the custom and journal blocks as frames; they carry no packet.
    assert len(tshark_frames(path)) == len(got) + 3
    assert [(ts, cap) for ts, cap, _ in tshark_frames(path, "eth || sll")] == got
    recs, _ = otus_records(path)
    ref = sip_messages(path)
    assert recs == ref, diff_messages(recs, ref)


def test_snap_cut_is_counted_like_tshark(tmp_path: Path) -> None:
    """Frames captured shorter than on the wire (editcap -s): counted, still decoded."""
    for fmt, name in (("pcap", "cut.pcap"), ("pcapng", "cut.pcapng")):
        path = tmp_path / name
        args = ["editcap", "-F", fmt, "-s", "200", str(DATA / "sip-udp4.pcap"), str(path)]
        subprocess.run(args, capture_output=True, timeout=60, check=True)
        want = tshark_frames(path)
        counts: dict[str, int] = {}
        assert otus_frames(path, counts) == [(ts, cap) for ts, cap, _ in want]
        assert counts["capture.snap_cut"] == sum(1 for _, cap, n in want if cap < n) == 33
        _, summary = otus_records(path)
        assert "capture.snap_cut=33" in summary
        assert "packets=35 " in summary


def test_simple_packet_blocks_stop_at_the_snaplen(tmp_path: Path) -> None:
    """An SPB holds min(length, snaplen) bytes, then padding that is not packet data."""
    blocks = [shb("<"), idb("<", LT_ETH, snap=201)]
    blocks += [block("<", 3, struct.pack("<I", len(f.data)) + f.data[:201]) for f in ETH]
    path = tmp_path / "spb.pcapng"
    path.write_bytes(b"".join(blocks))
    want = tshark_frames(path)
    counts: dict[str, int] = {}
    assert [cap for _, cap in otus_frames(path, counts)] == [cap for _, cap, _ in want]
    assert counts["capture.snap_cut"] == sum(1 for _, cap, n in want if cap < n) == 33


@requires_tool("gzip")
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_gzipped_captures_are_read_like_tshark(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / f"a.{fmt}"
    subprocess.run(["editcap", "-F", fmt, str(DATA / "sip-udp4.pcap"), str(src)], check=True)
    subprocess.run(["gzip", "-9", str(src)], check=True, timeout=60)
    path = src.with_name(src.name + ".gz")
    assert_same_as_tshark(path)


def test_cut_gzip_keeps_the_complete_records(tmp_path: Path) -> None:
    data = gzip.compress((DATA / "sip-udp4.pcap").read_bytes())
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    proc = run_otus("run", "-r", str(path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "capture.file_truncated=1" in proc.stderr
    # tshark reads the same complete frames, then says the file was cut short.
    args = ["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "frame.number"]
    ref = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert "cut short" in ref.stderr
    assert f"packets={len(ref.stdout.split())} " in proc.stderr


def test_damaged_gzip_fails_after_its_good_records(tmp_path: Path) -> None:
    data = bytearray(gzip.compress((DATA / "sip-udp4.pcap").read_bytes()))
    data[-6] ^= 0xFF  # the CRC of the uncompressed data
    path = tmp_path / "crc.pcap.gz"
    path.write_bytes(bytes(data))
    args = ["tshark", "-r", str(path)]
    ref = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert "cannot be decompressed" in ref.stderr
    proc = run_otus("run", "-r", str(path), "--format", "json")
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == 33
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"otus: task failed: {str(path)!r} is corrupt at byte 15533: cannot read"
    )
    assert "CRC check failed" in last
