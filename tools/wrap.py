"""Rewrite a capture's frames into each encapsulation Otus decodes; writes encap-<kind>.pcap.

Run: ``.venv/bin/python -m tools.wrap --src tests/data --out tests/data``. Inner frames are kept
byte for byte (checksums included); outer headers are built with scapy (IP, UDP, Ethernet)
and by hand (VXLAN, Geneve, GRE options, ERSPAN). Timestamps are the source frames'.
Non-IP frames (ARP, ...) are left out so every kind carries the same SIP frames.
"""

from __future__ import annotations

import argparse
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import GRE, Ether
from scapy.packet import Raw

from tools.pcapio import Frame, read_pcap, write_pcap

__all__ = ["KINDS", "WrapKind", "wrap_file"]

OUTER_MAC = ("02:00:5e:00:00:0a", "02:00:5e:00:00:14")
OUTER_IP = ("192.0.2.10", "192.0.2.20")
ETH_IPV4, ETH_IPV6, ETH_8021Q, ETH_8021AD, ETH_QINQ_OLD = 0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100
ETH_TEB, ETH_ERSPAN2, ETH_ERSPAN3 = 0x6558, 0x88BE, 0x22EB


@dataclass(frozen=True, slots=True)
class WrapKind:
    """One encapsulation: source capture, rewrite, and what a decoder must report for it."""

    name: str
    source: str
    vlans: tuple[int, ...] = ()  # every VLAN id in the frame, outermost first
    tunnels: tuple[tuple[str, int | None], ...] = ()  # (Otus tunnel type, id) outer first
    outer_vlans: tuple[int, ...] = ()  # encap.vlans (before the first tunnel)
    inner_vlans: tuple[int, ...] = ()  # the first tunnel's vlans
    build: Callable[[bytes, int], bytes] = field(default=lambda f, d: f, repr=False)


def _tag(tpid: int, vid: int) -> bytes:
    return struct.pack("!HH", tpid, vid & 0x0FFF)


def _insert_tags(frame: bytes, *tags: bytes) -> bytes:
    """Insert VLAN tags after the MAC addresses (outermost first)."""
    return frame[:12] + b"".join(tags) + frame[12:]


def _ip_payload(frame: bytes) -> tuple[int, bytes]:
    """(ethertype, L3 bytes) of an untagged Ethernet frame."""
    return struct.unpack_from("!H", frame, 12)[0], frame[14:]


def _outer_ip(direction: int, proto: int, payload: bytes, ident: int) -> bytes:
    """Ethernet + IPv4 (+ payload) from one tunnel endpoint to the other."""
    src, dst = (OUTER_IP[0], OUTER_IP[1]) if direction == 0 else (OUTER_IP[1], OUTER_IP[0])
    smac, dmac = (OUTER_MAC[0], OUTER_MAC[1]) if direction == 0 else (OUTER_MAC[1], OUTER_MAC[0])
    pkt = Ether(src=smac, dst=dmac) / IP(src=src, dst=dst, proto=proto, id=ident & 0xFFFF, ttl=64)
    return bytes(pkt / Raw(payload))


def _outer_udp(direction: int, dport: int, payload: bytes, inner: bytes, ident: int) -> bytes:
    """Ethernet/IPv4/UDP to ``dport``; the source port is a hash of the inner frame's flow."""
    sport = 49152 + zlib.crc32(inner[26:38] if len(inner) >= 38 else inner) % 16384
    src, dst = (OUTER_IP[0], OUTER_IP[1]) if direction == 0 else (OUTER_IP[1], OUTER_IP[0])
    smac, dmac = (OUTER_MAC[0], OUTER_MAC[1]) if direction == 0 else (OUTER_MAC[1], OUTER_MAC[0])
    pkt = (
        Ether(src=smac, dst=dmac)
        / IP(src=src, dst=dst, id=ident & 0xFFFF, ttl=64)
        / UDP(sport=sport, dport=dport, chksum=0)
    )
    return bytes(pkt / Raw(payload))


def _vxlan(vni: int) -> bytes:
    return struct.pack("!II", 0x08000000, vni << 8)


def _geneve(vni: int) -> bytes:
    return struct.pack("!BBHI", 0, 0, ETH_TEB, vni << 8)


def _gre(proto: int, key: int | None = None, seq: int | None = None) -> bytes:
    return bytes(
        GRE(
            proto=proto,
            key_present=key is not None,
            key=key,
            seqnum_present=seq is not None,
            sequence_number=seq,
        )
    )


def _erspan2(session: int, vlan: int = 0, index: int = 0) -> bytes:
    """ERSPAN type II header: ver 1, VLAN, COS 0, En 0 (untagged original), session, index."""
    return struct.pack("!HHI", (1 << 12) | vlan, session & 0x3FF, index & 0xFFFFF)


def _erspan3(session: int, ts: int) -> bytes:
    """ERSPAN type III header: ver 2, BSO 0, session, timestamp, SGT 0, HW id 1, no subheader."""
    word2 = (0 << 15) | (0 << 10) | (1 << 4) | (0 << 3) | (1 << 1)  # P=0 FT=0 HW=1 D=0 Gra=1
    return struct.pack("!HHIHH", 2 << 12, session & 0x3FF, ts & 0xFFFFFFFF, 0, word2)


def _dir(frame: bytes) -> int:
    """0 for frames from the lower inner source address, 1 for the other direction."""
    etype, l3 = _ip_payload(frame)
    if etype == ETH_IPV4:
        return int(l3[12:16] > l3[16:20])
    return int(l3[8:24] > l3[24:40])


def _make(kind: str) -> Callable[[bytes, int], bytes]:
    """The frame rewrite for ``kind`` (frame, sequence number) -> new frame."""

    def dot1q(f: bytes, n: int) -> bytes:
        return _insert_tags(f, _tag(ETH_8021Q, 100))

    def qinq_88a8(f: bytes, n: int) -> bytes:
        return _insert_tags(f, _tag(ETH_8021AD, 200), _tag(ETH_8021Q, 100))

    def qinq_9100(f: bytes, n: int) -> bytes:
        return _insert_tags(f, _tag(ETH_QINQ_OLD, 300), _tag(ETH_8021Q, 100))

    def vxlan(f: bytes, n: int) -> bytes:
        return _outer_udp(_dir(f), 4789, _vxlan(4242) + f, f, n)

    def geneve(f: bytes, n: int) -> bytes:
        return _outer_udp(_dir(f), 6081, _geneve(4243) + f, f, n)

    def gre(f: bytes, n: int) -> bytes:
        etype, l3 = _ip_payload(f)
        return _outer_ip(_dir(f), 47, _gre(etype) + l3, n)

    def gre_key(f: bytes, n: int) -> bytes:
        etype, l3 = _ip_payload(f)
        return _outer_ip(_dir(f), 47, _gre(etype, key=0x1234) + l3, n)

    def gretap(f: bytes, n: int) -> bytes:
        return _outer_ip(_dir(f), 47, _gre(ETH_TEB, key=77) + f, n)

    def erspan2(f: bytes, n: int) -> bytes:
        return _outer_ip(_dir(f), 47, _gre(ETH_ERSPAN2, seq=n) + _erspan2(7) + f, n)

    def erspan3(f: bytes, n: int) -> bytes:
        return _outer_ip(_dir(f), 47, _gre(ETH_ERSPAN3, seq=n) + _erspan3(8, n * 1000) + f, n)

    def ipip(f: bytes, n: int) -> bytes:
        return _outer_ip(_dir(f), 4, _ip_payload(f)[1], n)

    def ip6ip(f: bytes, n: int) -> bytes:
        return _outer_ip(_dir(f), 41, _ip_payload(f)[1], n)

    def vlan_vxlan_vlan(f: bytes, n: int) -> bytes:
        inner = _insert_tags(f, _tag(ETH_8021Q, 20))
        return _insert_tags(
            _outer_udp(_dir(f), 4789, _vxlan(4244) + inner, f, n), _tag(ETH_8021Q, 10)
        )

    fns: dict[str, Callable[[bytes, int], bytes]] = {
        "dot1q": dot1q,
        "qinq-88a8": qinq_88a8,
        "qinq-9100": qinq_9100,
        "vxlan": vxlan,
        "vxlan-frag": vxlan,
        "geneve": geneve,
        "gre": gre,
        "gre-key": gre_key,
        "gretap": gretap,
        "erspan2": erspan2,
        "erspan3": erspan3,
        "ipip": ipip,
        "ip6ip": ip6ip,
        "vlan-vxlan-vlan": vlan_vxlan_vlan,
    }
    return fns[kind]


def _k(name: str, source: str = "sip-udp4.pcap", **kw: object) -> WrapKind:
    return WrapKind(name, source, build=_make(name), **kw)  # type: ignore[arg-type]


KINDS: dict[str, WrapKind] = {
    k.name: k
    for k in (
        _k("dot1q", vlans=(100,), outer_vlans=(100,)),
        _k("qinq-88a8", vlans=(200, 100), outer_vlans=(200, 100)),
        _k("qinq-9100", vlans=(300, 100), outer_vlans=(300, 100)),
        _k("vxlan", tunnels=(("vxlan", 4242),)),
        _k("vxlan-frag", "sip-udp4-frag.pcap", tunnels=(("vxlan", 4242),)),
        _k("geneve", tunnels=(("geneve", 4243),)),
        _k("gre", tunnels=(("gre", None),)),
        _k("gre-key", tunnels=(("gre", 0x1234),)),
        _k("gretap", tunnels=(("gretap", 77),)),
        _k("erspan2", tunnels=(("erspan2", 7),)),
        _k("erspan3", tunnels=(("erspan3", 8),)),
        _k("ipip", tunnels=(("ipip", None),)),
        _k("ip6ip", "sip-udp6.pcap", tunnels=(("ip6ip", None),)),
        _k(
            "vlan-vxlan-vlan",
            vlans=(10, 20),
            tunnels=(("vxlan", 4244),),
            outer_vlans=(10,),
            inner_vlans=(20,),
        ),
    )
}


def wrap_file(kind: WrapKind, src_dir: Path, out_dir: Path) -> Path:
    """Write ``encap-<kind>.pcap`` from the kind's source capture; returns its path."""
    linktype, frames = read_pcap(src_dir / kind.source)
    if linktype != 1:
        raise ValueError(f"{kind.source}: expected Ethernet frames, got linktype {linktype}")
    out = []
    for n, fr in enumerate(frames):
        etype = struct.unpack_from("!H", fr.data, 12)[0]
        if etype not in (ETH_IPV4, ETH_IPV6):
            continue
        out.append(Frame(fr.ts_us, kind.build(fr.data, n)))
    path = out_dir / f"encap-{kind.name}.pcap"
    write_pcap(path, out)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write every (or the named) encapsulated capture."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path("tests/data"))
    ap.add_argument("--out", type=Path, default=Path("tests/data"))
    ap.add_argument("kinds", nargs="*", help=f"subset of: {' '.join(KINDS)}")
    args = ap.parse_args(argv)
    for name in args.kinds or list(KINDS):
        print(wrap_file(KINDS[name], args.src, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
