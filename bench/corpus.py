"""The fixed benchmark corpus: real sipp captures from tests/data, in every encapsulation."""

from __future__ import annotations

from pathlib import Path

from otus.core.packet import RawBatch
from otus.plugins.capture.pcapfile import read_batches

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"

# Varied SIP over UDP: plain IPv4 and IPv6, large fragmented INVITEs, tcpdump -i any (SLL2),
# VLAN, QinQ and every tunnel. Weighted towards the common case (plain IPv4 on Ethernet).
UDP_FILES = {
    "sip-udp4.pcap": 6,
    "sip-udp6.pcap": 2,
    "sip-udp4-frag.pcap": 1,
    "sip-udp6-frag.pcap": 1,
    "sip-any.pcap": 1,
    "sip-udp4-vlan.pcap": 2,
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


def load(files: dict[str, int], batch_size: int = 128) -> list[RawBatch]:
    """Batches of the named captures, each repeated by its weight, in a fixed order."""
    out: list[RawBatch] = []
    for name, weight in files.items():
        path = DATA / name
        if not path.exists():
            continue
        batches = list(read_batches(str(path), batch_size))
        for _ in range(weight):
            out.extend(batches)
    if not out:
        raise SystemExit(f"bench: no captures found in {DATA}")
    return out


def shift(batches: list[RawBatch], offset_us: int) -> list[RawBatch]:
    """The same frames later in time, so reassembly and flow state see fresh traffic."""
    return [RawBatch(b.linktype, b.frames, [t + offset_us for t in b.ts_us]) for b in batches]
