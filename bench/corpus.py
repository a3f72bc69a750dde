"""The fixed benchmark corpus: real sipp captures from tests/data, in every encapsulation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from otus.core.packet import RawBatch
from otus.plugins.capture.pcapfile import read_batches

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"

# Varied SIP over UDP: plain IPv4 and IPv6, large fragmented INVITEs, tcpdump -i any (SLL2),
# VLAN, QinQ and every tunnel. Weighted towards the common case (plain or VLAN-tagged IPv4 on
# Ethernet, about two thirds of the frames); a third is IPv6, fragments, cooked and tunnels.
UDP_FILES = {
    "sip-udp4.pcap": 12,
    "sip-udp6.pcap": 3,
    "sip-udp4-frag.pcap": 1,
    "sip-udp6-frag.pcap": 1,
    "sip-any.pcap": 2,
    "sip-udp4-vlan.pcap": 3,
    "encap-dot1q.pcap": 1,
    "encap-qinq-88a8.pcap": 1,
    "encap-vxlan.pcap": 1,
    "encap-geneve.pcap": 1,
    "encap-gre.pcap": 1,
    "encap-gretap.pcap": 1,
    "encap-erspan2.pcap": 1,
    "encap-ipip.pcap": 1,
    "encap-ip6ip.pcap": 1,
    "encap-vlan-vxlan-vlan.pcap": 1,
}
TCP_FILES = {"sip-tcp-mtu576.pcap": 1}

# sipp derives Call-IDs, tags and branches from its pid: rewriting it (same length) gives every
# copy of a capture its own calls, as real traffic has, so parser caches are not flattered.
_PID = re.compile(rb"(?:Call-ID|i): \d+-(\d+)@")


@dataclass(slots=True)
class Unit:
    """One copy of one capture, and the pid its call identifiers carry."""

    batches: list[RawBatch]
    pid: bytes | None


def load(files: dict[str, int], batch_size: int = 128) -> list[Unit]:
    """The named captures, each repeated by its weight, in a fixed order."""
    out: list[Unit] = []
    for name, weight in files.items():
        path = DATA / name
        if not path.exists():
            continue
        batches = list(read_batches(str(path), batch_size))
        pid = next((m.group(1) for b in batches for f in b.frames for m in _PID.finditer(f)), None)
        out.extend(Unit(batches, pid) for _ in range(weight))
    if not out:
        raise SystemExit(f"bench: no captures found in {DATA}")
    return out


def frames(units: list[Unit]) -> int:
    """Frames in one round of the corpus."""
    return sum(len(b) for u in units for b in u.batches)


def make_round(units: list[Unit], round_no: int) -> list[RawBatch]:
    """One round: every unit with fresh call identifiers and timestamps after the last round."""
    offset = 100_000_000 * round_no  # 100 s apart: reassembly and flow state see new traffic
    out = []
    for i, u in enumerate(units):
        serial = round_no * len(units) + i
        pid, new = u.pid, b""
        if pid is not None:
            new = str(serial % 10 ** len(pid)).zfill(len(pid)).encode()
        for b in u.batches:
            fr = b.frames if pid is None else [f.replace(pid, new) for f in b.frames]
            out.append(RawBatch(b.linktype, fr, [t + offset for t in b.ts_us]))
    return out
