"""Packet by packet, the decoder agrees with tshark on the committed real captures.

For every frame tshark dissects down to UDP/TCP at its innermost network layer (IP fragments:
on the frame completing the datagram), the decoder emits a packet from that same frame with the
same addresses, ports, payload bytes, TCP sequence number and flags, VLAN ids and tunnel
layers; for every other frame it emits nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from scapy.utils import RawPcapReader

from otus.core.packet import DecodedPacket, RawBatch
from otus.decoder import Decoder
from tests.decoder.frames import assert_balanced
from tests.infra.skips import requires_tool

DATA = Path(__file__).resolve().parents[1] / "data"
CAPTURES = sorted(p.name for p in DATA.glob("*.pcap"))

pytestmark = requires_tool("tshark")

FIELDS = [
    "frame.number",
    "frame.protocols",
    "_ws.col.Source",
    "_ws.col.Destination",
    "udp.srcport",
    "udp.dstport",
    "tcp.srcport",
    "tcp.dstport",
    "udp.payload",
    "tcp.payload",
    "tcp.seq_raw",
    "tcp.flags",
]
_NET = {"ip", "ipv6"}
_SKIP = {"ethertype", "vlan", "ieee8021ad", "sll", "ipv6.hopopts", "ipv6.routing", "ipv6.dstopts"}
_SKIP.add("ipv6.fraghdr")
_IPIP = {
    ("ip", "ip"): "ipip",
    ("ip", "ipv6"): "ip6ip",
    ("ipv6", "ipv6"): "ip6ip6",
    ("ipv6", "ip"): "ipip6",
}


def tshark(path: Path, fields: list[str], occurrence: str) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", f"occurrence={occurrence}"]
    cmd += ["-E", "aggregator=,"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout
    return [line.split("\t") for line in out.decode().splitlines()]


def expected_tunnels(protocols: list[str]) -> tuple[bool, list[str]]:
    """From tshark's protocol path: (ends in UDP/TCP at the innermost IP, tunnel types)."""
    toks = [t for t in protocols if t not in _SKIP]
    tunnels: list[str] = []
    for i, t in enumerate(toks[:-1]):
        nxt = toks[i + 1]
        if t in _NET and nxt in _NET:
            tunnels.append(_IPIP[t, nxt])
        elif t == "udp" and nxt in ("vxlan", "geneve"):
            tunnels.append(nxt)
        elif t == "gre":
            tunnels.append("erspan" if nxt == "erspan" else "gretap" if nxt == "eth" else "gre")
    last_net = max((i for i, t in enumerate(toks) if t in _NET), default=-1)
    l4 = 0 <= last_net < len(toks) - 1 and toks[last_net + 1] in ("udp", "tcp")
    # ...and that UDP is not a tunnel whose inner frame is not IP (ARP in VXLAN).
    l4 = l4 and not ({"vxlan", "geneve"} & set(toks[last_net + 2 : last_net + 3]))
    l4 = l4 and not ({"icmp", "icmpv6"} & set(toks))
    return l4, tunnels


def decode_per_frame(path: Path) -> list[DecodedPacket | None]:
    reader = RawPcapReader(str(path))
    linktype = reader.linktype
    d = Decoder()
    got: list[DecodedPacket | None] = []
    for data, meta in reader:
        out: list[DecodedPacket] = []
        ts = meta.sec * 1_000_000 + meta.usec
        d.decode_batch(RawBatch(linktype, [bytes(data)], [ts]), out)
        got.append(out[0] if out else None)
    reader.close()
    assert_balanced(d)
    return got


@pytest.mark.parametrize("name", CAPTURES)
def test_packets_equal_tshark(name: str) -> None:
    path = DATA / name
    rows = tshark(path, FIELDS, "l")
    vlan_rows = tshark(path, ["ieee8021ad.id", "vlan.id"], "a")  # outer 802.1ad tags first
    got = decode_per_frame(path)
    assert len(rows) == len(got)
    emitted = 0
    for row, vlans, pkt in zip(rows, vlan_rows, got, strict=True):
        f = dict(zip(FIELDS, row, strict=False))
        l4, tunnels = expected_tunnels(f["frame.protocols"].split(":"))
        where = f"{name} frame {f['frame.number']} ({f['frame.protocols']})"
        if not l4:
            assert pkt is None, where
            continue
        assert pkt is not None, where
        emitted += 1
        assert (pkt.src_ip, pkt.dst_ip) == (f["_ws.col.Source"], f["_ws.col.Destination"]), where
        if pkt.transport == 17:
            assert (pkt.src_port, pkt.dst_port) == (int(f["udp.srcport"]), int(f["udp.dstport"]))
            assert pkt.payload.hex() == f["udp.payload"].replace(":", ""), where
        else:
            assert (pkt.src_port, pkt.dst_port) == (int(f["tcp.srcport"]), int(f["tcp.dstport"]))
            assert pkt.payload.hex() == f["tcp.payload"].replace(":", ""), where
            assert pkt.tcp_seq == int(f["tcp.seq_raw"]), where
            assert pkt.tcp_flags == int(f["tcp.flags"], 16), where
        encap = pkt.encap
        ours_vlans = [] if encap is None else list(encap.vlans)
        ours_tunnels = [] if encap is None else [t.type for t in encap.tunnels]
        if encap is not None:
            for t in encap.tunnels:
                ours_vlans += t.vlans or []
        assert ours_vlans == [int(v) for v in ",".join(vlans).split(",") if v], where
        assert [t[:6] if t.startswith("erspan") else t for t in ours_tunnels] == tunnels, where
    assert emitted > 0
