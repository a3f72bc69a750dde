"""The general decoding path: any link type, VLAN stack, tunnel nesting and IPv6 chain.

A frame is walked layer by layer in one loop; the state is the offset, the end of the current
layer (IP and UDP lengths shrink it) and an ethertype saying what starts at the offset.
Tunnels push a :class:`Tunnel` and set the inner ethertype; fragments go to the reassembler,
whose completed datagrams are walked again from their transport header. Anything unusable
ends the walk with its drop reason (a ``str``), counted by the caller.
"""

from __future__ import annotations

from struct import Struct

from otus.core.packet import LINKTYPE_ETHERNET, DecodedPacket, Encap, Tunnel
from otus.decoder.common import DECODE_DROPS, ETH_IPV4, ETH_IPV6, ETH_TEB, MAX_TUNNELS, ntoa
from otus.decoder.ethernet import TPIDS, link, vlan_tags
from otus.decoder.ip import IPV6_EXT, ctx_key, ipv6_ext
from otus.decoder.options import DecoderOptions
from otus.decoder.reassembly import Completed, Reassembler
from otus.decoder.transport import tcp
from otus.decoder.tunnel import GRE_ERSPAN2, GRE_ERSPAN3, erspan, geneve, gre, ipip_type, vxlan

__all__ = ["Walker"]

# Pseudo-ethertypes to resume after reassembly: at the transport header, or (IPv6) at the
# extension headers that follow the fragment header.
_L4 = -1
_V6_EXT = -2

_PAIR_CACHE_LIMIT = 16384

_IP4 = Struct("!BxHxxHxBxx8s")  # version/IHL, total length, flags+offset, protocol, addresses
_IP6 = Struct("!B3xHBx32s")  # version, payload length, next header, addresses
_UDP = Struct("!HHH")  # ports, length

# Context saved with a fragment: VLANs, tunnels, address bytes, IPv6.
_Ctx = tuple[list[int], list[Tunnel], bytes, bool]


class Walker:
    """Decodes frames of any shape; holds the address caches, drop counters and reassembler."""

    __slots__ = (
        "_addr",
        "_frag_protos",
        "_reassembly",
        "drops",
        "erspan",
        "gre",
        "ipip",
        "packets",
        "pairs",
        "reasm",
        "udp_tunnel_ports",  # UDP destination ports of the enabled tunnels (VXLAN, Geneve)
        "vxlan_ports",
    )

    def __init__(self, o: DecoderOptions) -> None:
        tunnels = o.tunnels
        self.vxlan_ports = frozenset(o.vxlan_ports) if "vxlan" in tunnels else frozenset()
        geneve_ports = frozenset(o.geneve_ports) if "geneve" in tunnels else frozenset()
        self.udp_tunnel_ports = self.vxlan_ports | geneve_ports
        self.gre = "gre" in tunnels
        self.erspan = "erspan" in tunnels
        self.ipip = "ipip" in tunnels
        # Fragments of anything else could never become a DecodedPacket: not worth holding.
        protos = {6, 17}
        if self.ipip:
            protos |= {4, 41}
        if self.gre or self.erspan:
            protos.add(47)
        self._frag_protos = frozenset(protos)
        self._reassembly = o.ip_reassembly
        self.reasm = Reassembler(
            o.max_datagrams, o.max_fragments, o.max_datagram_size, o.reassembly_timeout_us
        )
        self.packets = 0  # packets this path emitted directly (not reassembled)
        self.drops: dict[str, int] = dict.fromkeys(DECODE_DROPS, 0)
        self._addr: dict[bytes, str] = {}
        self.pairs: dict[bytes, tuple[str, str]] = {}

    def pair(self, key: bytes) -> tuple[str, str]:
        """Text of the source and destination addresses held back to back in ``key``, cached."""
        ad = self.pairs.get(key)
        if ad is None:
            pairs = self.pairs
            if len(pairs) >= _PAIR_CACHE_LIMIT:
                pairs.clear()  # cheaper than LRU bookkeeping; conversations repeat
            addr = self._addr
            half = len(key) >> 1
            ad = pairs[key] = (ntoa(addr, key[:half]), ntoa(addr, key[half:]))
        return ad

    def frame(self, f: bytes, ts: int, lt: int) -> DecodedPacket | None:
        """Decode one frame, counting its fate; never raises."""
        try:
            vlans: list[int] = []
            if lt == LINKTYPE_ETHERNET and len(f) >= 14:
                et = (f[12] << 8) | f[13]
                off = 14
                if et in TPIDS:
                    lr = vlan_tags(f, off, len(f), et, vlans)
                    if isinstance(lr, str):
                        self.drops[lr] = self.drops.get(lr, 0) + 1
                        return None
                    off, et = lr
            else:
                lr = link(lt, f, vlans)
                if isinstance(lr, str):
                    self.drops[lr] = self.drops.get(lr, 0) + 1
                    return None
                off, et = lr
            r = self.walk(f, off, len(f), et, ts, vlans, [], 1, False)
        except Exception:  # a bug must cost one frame, not the pipeline
            self.drops["internal_error"] += 1
            return None
        if r is None:
            return None
        if type(r) is DecodedPacket:
            self.packets += 1
            return r
        if isinstance(r, str):
            self.drops[r] = self.drops.get(r, 0) + 1
            return None
        # A datagram completed: decode it; with nested tunnels its payload may be a fragment
        # of an inner datagram, completing that one too, hence the loop. Its frames were
        # counted as fragments, so its fate is counted in reassembly, weighted by frames.
        reasm = self.reasm
        while isinstance(r, tuple):
            data, weight, proto, (vl, tn, ak, v6) = r
            try:
                r = self.walk(
                    data, 0, len(data), _V6_EXT if v6 else _L4, ts, vl, tn, weight, True,
                    proto, ak, v6,
                )  # fmt: skip
            except Exception:  # as above
                reasm.count("internal_error", weight)
                return None
            if isinstance(r, str):
                reasm.count(r, weight)
                return None
            if r is not None and type(r) is DecodedPacket:
                reasm.emitted(weight)
                return r
        return None

    def walk(
        self,
        f: bytes,
        off: int,
        end: int,
        et: int,
        ts: int,
        vlans: list[int],
        tunnels: list[Tunnel],
        weight: int,
        reassembled: bool,
        proto: int = 0,
        ak: bytes = b"",
        v6: bool = False,
    ) -> DecodedPacket | Completed | str | None:
        """Decode from ``off`` (a layer of ethertype ``et``): packet, datagram, reason or None."""
        # Returns the packet, a datagram this fragment completed, a drop reason, or None when
        # the fragment was held. ``ak`` is the current IP layer's source and destination
        # address bytes back to back. Drops are returned, not raised: in CPython 3.11 a
        # traceback through a function this long costs more than decoding a whole packet.
        while True:
            if et == ETH_IPV4:
                if off + 20 > end:
                    return "truncated"
                vihl, tl, frag, proto, ak = _IP4.unpack_from(f, off)
                hl = (vihl & 0x0F) << 2
                if vihl >> 4 != 4 or hl < 20:
                    return "malformed"
                if off + hl > end:
                    return "truncated"
                # The total length, not the frame, bounds the packet: Ethernet pads short ones.
                if tl < hl or off + tl > end:
                    return "bad_length"
                end = off + tl
                v6 = False
                if frag & 0x3FFF:  # MF or an offset; DF does not matter
                    ident = (f[off + 4] << 8) | f[off + 5]
                    key = (ak, ident, proto, ctx_key(vlans, tunnels))
                    return self._hold(
                        key, ts, (frag & 0x1FFF) << 3, bool(frag & 0x2000), f[off + hl : end],
                        hl, proto, (vlans, tunnels, ak, False), weight, reassembled,
                    )  # fmt: skip
                off += hl
            elif et == ETH_IPV6:
                if off + 40 > end:
                    return "truncated"
                ver, plen, proto, ak = _IP6.unpack_from(f, off)
                if ver >> 4 != 6:
                    return "malformed"
                # Zero with hop-by-hop would be a jumbogram: never on a capture link.
                ip = off
                off += 40
                end_ = off + plen
                if end_ > end:
                    return "bad_length"
                end = end_
                v6 = True
                if proto in IPV6_EXT:
                    x = ipv6_ext(f, off, end, proto)
                    if isinstance(x, str):
                        return x
                    off, proto, fh = x
                    if fh >= 0:
                        fo = (f[fh + 2] << 8) | f[fh + 3]
                        ident = int.from_bytes(f[fh + 4 : fh + 8], "big")
                        key6 = (ak, ident, ctx_key(vlans, tunnels))
                        # Its length field is the payload length: what precedes the fragment
                        # header counts, the fixed header does not.
                        return self._hold(
                            key6, ts, fo & 0xFFF8, bool(fo & 1), f[off:end], fh - ip - 40,
                            proto, (vlans, tunnels, ak, True), weight, reassembled,
                        )  # fmt: skip
            elif et == ETH_TEB:
                if not tunnels:  # only a tunnel sets it; a link header saying so is not IP
                    return "not_ip"
                if off + 14 > end:
                    return "truncated"
                et = (f[off + 12] << 8) | f[off + 13]
                off += 14
                if et in TPIDS:
                    inner: list[int] = []
                    v = vlan_tags(f, off, end, et, inner)
                    if isinstance(v, str):
                        return v
                    off, et = v
                    tunnels[-1].vlans = inner
                continue
            elif et == _V6_EXT:
                if proto in IPV6_EXT:
                    x = ipv6_ext(f, off, end, proto)
                    if isinstance(x, str):
                        return x
                    off, proto, fh = x
                    if fh >= 0:  # a second fragment header inside the reassembled payload
                        return "malformed"
            elif et != _L4:
                return "not_ip"

            if proto == 17:
                if off + 8 > end:
                    return "truncated"
                sport, dport, ulen = _UDP.unpack_from(f, off)
                uend = off + ulen
                if ulen < 8 or uend > end:
                    return "bad_length"
                if dport in self.udp_tunnel_ports:
                    if len(tunnels) >= MAX_TUNNELS:
                        return "tunnel_too_deep"
                    if dport in self.vxlan_ports:
                        vx = vxlan(f, off + 8, uend)
                        if isinstance(vx, str):
                            return vx
                        off, vni = vx
                        typ = "vxlan"
                        et = ETH_TEB
                    else:
                        gn = geneve(f, off + 8, uend)
                        if isinstance(gn, str):
                            return gn
                        off, et, vni = gn
                        typ = "geneve"
                    ad = self.pair(ak)
                    tunnels.append(Tunnel(typ, ad[0], ad[1], vni))
                    end = uend
                    continue
                ad = self.pair(ak)
                return DecodedPacket(
                    ts, ad[0], ad[1], sport, dport, 17, f[off + 8 : uend],
                    Encap(vlans, tunnels) if vlans or tunnels else None, 0, 0, reassembled,
                )  # fmt: skip
            if proto == 6:
                tc = tcp(f, off, end)
                if isinstance(tc, str):
                    return tc
                sport, dport, poff, seq, flags = tc
                ad = self.pair(ak)
                return DecodedPacket(
                    ts, ad[0], ad[1], sport, dport, 6, f[poff:end],
                    Encap(vlans, tunnels) if vlans or tunnels else None, seq, flags, reassembled,
                )  # fmt: skip
            if proto in (4, 41):
                if not self.ipip:
                    return "tunnel_disabled"
                if len(tunnels) >= MAX_TUNNELS:
                    return "tunnel_too_deep"
                ad = self.pair(ak)
                tunnels.append(Tunnel(ipip_type(v6, proto), ad[0], ad[1]))
                et = ETH_IPV4 if proto == 4 else ETH_IPV6
                continue
            if proto == 47:
                gr = gre(f, off, end)
                if isinstance(gr, str):
                    return gr
                off, gp, tid, has_seq = gr
                if gp in (GRE_ERSPAN2, GRE_ERSPAN3):
                    if not self.erspan:
                        return "tunnel_disabled"
                    es = erspan(f, off, end, gp, has_seq)
                    if isinstance(es, str):
                        return es
                    off, et, typ, tid = es
                else:
                    if not self.gre:
                        return "tunnel_disabled"
                    et = gp  # IPv4, IPv6, Ethernet (gretap); anything else ends as not_ip
                    typ = "gretap" if gp == ETH_TEB else "gre"
                if len(tunnels) >= MAX_TUNNELS:
                    return "tunnel_too_deep"
                ad = self.pair(ak)
                tunnels.append(Tunnel(typ, ad[0], ad[1], tid))
                continue
            return "not_udp_tcp"

    def _hold(
        self,
        key: tuple[object, ...],
        ts: int,
        start: int,
        more: bool,
        data: bytes,
        hdr_len: int,
        proto: int,
        ctx: _Ctx,
        weight: int,
        reassembled: bool,
    ) -> Completed | str | None:
        """Give a fragment to the reassembler, unless it could never become a packet."""
        if not self._reassembly:
            return "fragment"
        # IPv6: an extension header may follow the fragment header; settled once whole.
        if proto not in self._frag_protos and not (ctx[3] and proto in IPV6_EXT):
            return "tunnel_disabled" if proto in (4, 41, 47) else "not_udp_tcp"
        return self.reasm.add(
            key, ts, start, more, data, hdr_len, proto, ctx, weight, not reassembled
        )
