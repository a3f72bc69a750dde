"""Rewrite the TCP streams of a capture: re-cut, shuffle, duplicate, overlap, drop, shift seqs.

Run: ``.venv/bin/python -m tools.tcpmangle IN.pcap OUT.pcap --seed 3 --drop 0.05 ...``.
Frames are Ethernet + IPv4/IPv6 + TCP as tcpdump wrote them; each direction's payload bytes are
taken in sequence order (the source must be clean: no holes), then

1. ``resegment`` re-cuts every direction into segments of ``lo..hi`` bytes (several SIP
   messages per segment, or many segments per message); each new segment goes out at the time
   of the original segment holding its last byte;
2. per data segment, with the given probabilities: ``drop`` it, send a ``duplicate`` a few
   frames later, ``overlap`` it (split in two pieces that share some bytes), or ``shuffle`` it
   (swap with the next data segment of the same direction);
3. ``seq_offset`` shifts every sequence number (and the peer's ACKs) so the streams cross 2**32.

Control segments (SYN, FIN, RST, pure ACKs) are kept in place. Timestamps stay monotonic (a
frame moved later takes its new neighbour's time). Headers are rebuilt by scapy (lengths and
checksums recomputed). Same seed, same output.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from tools.pcapio import Frame, read_pcap, write_pcap

__all__ = ["MangleReport", "mangle", "mangle_file"]

_M = 0xFFFF_FFFF


@dataclass(slots=True)
class MangleReport:
    """What :func:`mangle` did."""

    data_in: int = 0  # data segments read
    data_out: int = 0  # data segments written
    dropped: int = 0
    dropped_bytes: int = 0
    duplicated: int = 0
    overlapped: int = 0
    shuffled: int = 0
    directions: dict[str, int] = field(default_factory=dict)  # direction -> payload bytes


@dataclass(slots=True)
class _Seg:
    ts_us: int
    pkt: Packet  # Ether / IP(v6) / TCP, payload replaced on output
    direction: str
    seq: int  # sequence number of the first payload byte (after the SYN)
    payload: bytes
    order: tuple[int, int] = (0, 0)  # (source frame index, piece): output order
    ack: int | None = None  # replaces the source frame's ACK number


def _dir(pkt: Packet) -> str:
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    t = pkt[TCP]
    return f"{ip.src}:{t.sport}>{ip.dst}:{t.dport}"


def _build(seg: _Seg, seq_offset: int) -> bytes:
    p = seg.pkt.copy()
    t = p[TCP]
    t.seq = (seg.seq - bool(t.flags & 0x02) + seq_offset) & _M
    if seg.ack is not None:
        t.ack = seg.ack
    if t.flags & 0x10:  # ACK: shift the peer's numbers the same way
        t.ack = (t.ack + seq_offset) & _M
    t.remove_payload()
    if seg.payload:
        t.add_payload(Raw(seg.payload))
    del t.chksum
    if IP in p:
        del p[IP].len
        del p[IP].chksum
    else:
        del p[IPv6].plen
    return bytes(p)


_Stream = tuple[int, bytes, list[tuple[int, int]]]


def _streams(segs: list[_Seg], report: MangleReport) -> dict[str, _Stream]:
    """Per direction: (first seq, payload in order, (ts, frame index) of each byte's segment)."""
    by_dir: dict[str, list[_Seg]] = {}
    for s in segs:
        if s.payload:
            by_dir.setdefault(s.direction, []).append(s)
    out = {}
    for d, ss in by_dir.items():
        base = ss[0].seq
        ss.sort(key=lambda s: (s.seq - base) & _M)
        data = bytearray()
        ends: list[tuple[int, int]] = []
        for s in ss:
            off = (s.seq - base) & _M
            if off + len(s.payload) <= len(data):
                continue  # a retransmission in the source
            new = s.payload[len(data) - off :]
            data += new
            ends += [(s.ts_us, s.order[0])] * len(new)
        out[d] = (base, bytes(data), ends)
        report.directions[d] = len(data)
    return out


def _resegment(
    segs: list[_Seg], lo: int, hi: int, rng: random.Random, r: MangleReport
) -> list[_Seg]:
    streams = _streams(segs, r)
    template = {s.order[0]: s.pkt for s in segs}  # headers (ACK, options) of the source frame
    new: list[_Seg] = [s for s in segs if not s.payload]
    for d, (base, data, ends) in streams.items():
        pos = 0
        piece = 0
        while pos < len(data):
            n = min(rng.randint(lo, hi), len(data) - pos)
            ts, idx = ends[pos + n - 1]
            piece += 1
            chunk = data[pos : pos + n]
            new.append(_Seg(ts, template[idx], d, (base + pos) & _M, chunk, (idx, piece)))
            pos += n
    new.sort(key=lambda s: s.order)
    # A peer cannot acknowledge bytes not sent yet: hold its ACKs back to what was delivered;
    # segments without payload carry the sender's next sequence number as it now is.
    sent = {d: base for d, (base, _, _) in streams.items()}
    for s in new:
        if s.payload:
            sent[s.direction] = (s.seq + len(s.payload)) & _M
        elif s.direction in sent and not s.pkt[TCP].flags & 0x02:
            s.seq = sent[s.direction]
        src, _, dst = s.direction.partition(">")
        rev = f"{dst}>{src}"
        t = s.pkt[TCP]
        if rev in streams and t.flags & 0x10:
            base = streams[rev][0]
            if (t.ack - base) & _M > (sent[rev] - base) & _M:
                s.ack = sent[rev]
    return new


def mangle(
    linktype_frames: tuple[int, Sequence[Frame]],
    *,
    seed: int = 1,
    resegment: tuple[int, int] | None = None,
    drop: float = 0.0,
    duplicate: float = 0.0,
    overlap: float = 0.0,
    shuffle: float = 0.0,
    seq_offset: int = 0,
) -> tuple[list[Frame], MangleReport]:
    """Mangle the TCP segments of ``(linktype, frames)`` (Ethernet only); see the module doc."""
    linktype, frames = linktype_frames
    if linktype != 1:
        raise ValueError("tcpmangle reads Ethernet captures only")
    rng = random.Random(seed)
    report = MangleReport()
    segs: list[_Seg] = []
    for i, f in enumerate(frames):
        pkt = Ether(f.data)
        if TCP not in pkt or (IP not in pkt and IPv6 not in pkt):
            continue  # ARP and the like: left out
        t = pkt[TCP]
        seq = (t.seq + bool(t.flags & 0x02)) & _M
        segs.append(_Seg(f.ts_us, pkt, _dir(pkt), seq, bytes(t.payload), (i, 0)))
    report.data_in = sum(1 for s in segs if s.payload)
    if resegment is not None:
        segs = _resegment(segs, resegment[0], resegment[1], rng, report)
    else:
        _streams(segs, report)
    out: list[_Seg] = []
    later: list[tuple[int, _Seg]] = []  # (emit after this many more frames, segment)
    i = 0
    while i < len(segs):
        s = segs[i]
        i += 1
        keep = True
        if s.payload:
            x = rng.random()
            if x < drop:
                report.dropped += 1
                report.dropped_bytes += len(s.payload)
                keep = False
            elif x < drop + duplicate:
                report.duplicated += 1
                later.append((rng.randint(0, 4), s))
            elif x < drop + duplicate + overlap and len(s.payload) > 4:
                report.overlapped += 1
                cut = rng.randint(1, len(s.payload) - 2)
                back = rng.randint(1, cut)
                a = _Seg(s.ts_us, s.pkt, s.direction, s.seq, s.payload[:cut])
                bseq = (s.seq + cut - back) & _M
                b = _Seg(s.ts_us, s.pkt, s.direction, bseq, s.payload[cut - back :])
                out.append(a)
                s = b
            elif x < drop + duplicate + overlap + shuffle:
                j = next((k for k in range(i, len(segs)) if segs[k].direction == s.direction), None)
                if j is not None and segs[j].payload:
                    report.shuffled += 1
                    segs[i - 1], segs[j] = segs[j], s
                    s = segs[i - 1]
        if keep:
            out.append(s)
        due = [(n - 1, q) for n, q in later]
        later = [(n, q) for n, q in due if n >= 0]
        out.extend(q for n, q in due if n < 0)
    out.extend(q for _, q in later)
    report.data_out = sum(1 for s in out if s.payload)
    frames_out: list[Frame] = []
    ts_prev = 0
    for s in out:
        ts_prev = max(s.ts_us, ts_prev)
        frames_out.append(Frame(ts_prev, _build(s, seq_offset)))
    return frames_out, report


def mangle_file(src: str | Path, dst: str | Path, **options: object) -> MangleReport:
    """Read ``src``, mangle, write ``dst``; return the report."""
    frames, report = mangle(read_pcap(src), **options)  # type: ignore[arg-type]
    write_pcap(dst, frames)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: IN OUT and the mangle options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--resegment", type=int, nargs=2, metavar=("LO", "HI"))
    for name in ("drop", "duplicate", "overlap", "shuffle"):
        ap.add_argument(f"--{name}", type=float, default=0.0)
    ap.add_argument("--seq-offset", type=int, default=0)
    a = ap.parse_args(argv)
    r = mangle_file(
        a.src,
        a.dst,
        seed=a.seed,
        resegment=tuple(a.resegment) if a.resegment else None,
        drop=a.drop,
        duplicate=a.duplicate,
        overlap=a.overlap,
        shuffle=a.shuffle,
        seq_offset=a.seq_offset,
    )
    print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
