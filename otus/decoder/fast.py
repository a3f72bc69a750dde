"""The fast path: the shapes nearly all captured SIP has, inlined in one batch loop.

Shapes: Ethernet or Linux cooked (v1, v2); no VLAN tag, one or two (802.1Q, 802.1ad, 0x9100
outer); IPv4 without options or fragmentation, or IPv6 without extension headers; UDP or TCP,
or one tunnel layer (VXLAN, Geneve, GRE, gretap, ERSPAN II/III, IP-in-IP) around the same
shapes. A frame that leaves them, even halfway, is decoded again from its start by the general
path (:mod:`otus.decoder.walk`), so both paths must agree on everything they both decode (a
test compares them frame by frame).

One ``struct`` unpack reads the IP header and the first 14 bytes of UDP/TCP: cheaper than a
dozen bytes subscripts once more than a few fields are needed. Packets of the same VLAN tags
or the same tunnel share one :class:`Encap` (read-only by convention), address strings come
from a cache keyed by the address bytes, and counters are derived after the batch.
"""

from __future__ import annotations

from struct import Struct

from otus.core.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    DecodedPacket,
    Encap,
    Tunnel,
)
from otus.decoder.common import ETH_IPV4, ETH_IPV6, ETH_TEB
from otus.decoder.tunnel import GRE_ERSPAN2, GRE_ERSPAN3, ipip_type
from otus.decoder.walk import Walker

__all__ = ["FastPath"]

# After the ethertype: the IPv4 header (version/IHL, total length, flags+offset, protocol, both
# addresses), then ports, the UDP length or TCP sequence number as two halves, TCP offset+flags.
_IP4_L4 = "BxHxxHxBxx8sHHHH4xH"
_IP6_L4 = "IHBx32sHHHH4xH"  # the same after the fixed IPv6 header (version word, length, nh)
_ETH_V4 = Struct("!H" + _IP4_L4)  # from the ethertype of Ethernet/cooked v1 (or a VLAN tag)
_ETH_V6 = Struct("!2x" + _IP6_L4)
_SLL2_V4 = Struct("!H18x" + _IP4_L4)  # cooked v2: protocol first, IP at 20
_SLL2_V6 = Struct("!20x" + _IP6_L4)
_VLAN_V4 = Struct("!HHH" + _IP4_L4)  # one 802.1Q tag (TPID, TCI), the ethertype, IPv4...

# Tunnel kinds handed to FastPath.tunnel: UDP ones by number, the others by IP protocol.
_VXLAN = 0
_GENEVE = 1
_GRE = 47

_ENCAP_CACHE_LIMIT = 4096
_new = object.__new__


class FastPath:
    """The batch loop and the shared caches it needs; the general path takes the rest."""

    __slots__ = ("_tag_encaps", "_tunnel_encaps", "_vlan_encaps", "_walker")

    def __init__(self, walker: Walker) -> None:
        self._walker = walker
        self._tag_encaps: dict[bytes, Encap] = {}
        self._vlan_encaps: dict[int, Encap] = {}  # by 802.1Q TCI
        self._tunnel_encaps: dict[tuple[object, ...], Encap] = {}

    def run(self, frames: list[bytes], tss: list[int], lt: int, out: list[DecodedPacket]) -> int:
        """Decode a batch into ``out``; return how many packets the fast path itself emitted."""
        walker = self._walker
        general = walker.frame
        append = out.append
        if lt in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL):
            # Ethertype at 12 (Ethernet) or 14 (cooked v1, where libpcap also re-inserts a
            # stripped VLAN tag, as in Ethernet); the IP header follows it.
            ep, ipd, tags = (12 if lt == LINKTYPE_ETHERNET else 14), 2, True
            unpack4, size4 = _ETH_V4.unpack_from, _ETH_V4.size
            unpack6, size6 = _ETH_V6.unpack_from, _ETH_V6.size
        elif lt == LINKTYPE_LINUX_SLL2:
            ep, ipd, tags = 0, 20, False
            unpack4, size4 = _SLL2_V4.unpack_from, _SLL2_V4.size
            unpack6, size6 = _SLL2_V6.unpack_from, _SLL2_V6.size
        else:
            for f, ts in zip(frames, tss, strict=False):
                dp = general(f, ts, lt)
                if dp is not None:
                    append(dp)
            return 0
        ip0 = ep + ipd
        ep1 = ep + 1
        # The shortest frame each unpack can read: shorter ones go to the general path without
        # raising (in CPython 3.11 a traceback through this function costs more than decoding).
        min4 = ep + size4
        min6 = ep + size6
        min_vlan = ep + _VLAN_V4.size
        unpack_vlan = _VLAN_V4.unpack_from
        vlan_encaps = self._vlan_encaps
        vlan_encap = self._vlan_encap
        pairs = walker.pairs
        pair = walker.pair
        tag_encaps = self._tag_encaps
        tag_encap = self._tag_encap
        tunnel_ports = walker.udp_tunnel_ports
        vxlan_ports = walker.vxlan_ports
        ipip = walker.ipip
        drops = walker.drops
        tunnel = self.tunnel
        DP = DecodedPacket  # locals: one lookup per packet less
        new = _new
        start = len(out)
        by_walker = walker.packets + walker.reasm.datagrams
        for f, ts in zip(frames, tss, strict=False):
            try:
                n = len(f)
                t = 0
                enc = None
                b = f[ep] if n >= min4 else 0
                if b == 0x08:
                    et, vihl, tl, frag, pr, ak, sport, dport, w1, w2, of = unpack4(f, ep)
                    if et == 0x0800 and vihl == 0x45 and not frag & 0x3FFF:  # no options
                        t = ip0 + 20
                        e = ip0 + tl
                    elif et == 0x0806:  # ARP: common enough to be counted right here
                        drops["not_ip"] += 1
                        continue
                elif b == 0x86:
                    if n >= min6 and f[ep1] == 0xDD:
                        vtf, plen, pr, ak, sport, dport, w1, w2, of = unpack6(f, ep)
                        if vtf >> 28 == 6:  # extension headers are not UDP/TCP: general path
                            t = ip0 + 40
                            e = t + plen
                elif tags and n >= min_vlan:
                    if b == 0x81:  # one 802.1Q tag and IPv4, the commonest tagged shape
                        tpid, tci, et, vihl, tl, frag, pr, ak, sport, dport, w1, w2, of = (
                            unpack_vlan(f, ep)
                        )
                        if tpid == 0x8100 and et == 0x0800 and vihl == 0x45 and not frag & 0x3FFF:
                            t = ip0 + 24
                            e = ip0 + 4 + tl
                            enc = vlan_encaps.get(tci) or vlan_encap(tci)
                    # 802.1Q, 802.1ad or 0x9100 outside, maybe 802.1Q inside; more: general.
                    if not t and (
                        (b in (0x81, 0x91) and f[ep1] == 0) or (b == 0x88 and f[ep1] == 0xA8)
                    ):
                        p = ep + 4
                        if f[p] == 0x81 and f[p + 1] == 0:  # an inner 802.1Q tag
                            p += 4
                        enc = tag_encaps.get(f[ep:p]) or tag_encap(f[ep:p])
                        b = f[p] if n > p + 1 else 0
                        if b == 0x08 and n >= p + size4:
                            et, vihl, tl, frag, pr, ak, sport, dport, w1, w2, of = unpack4(f, p)
                            if et == 0x0800 and vihl == 0x45 and not frag & 0x3FFF:
                                t = p + 22
                                e = p + 2 + tl
                        elif b == 0x86 and n >= p + size6 and f[p + 1] == 0xDD:
                            vtf, plen, pr, ak, sport, dport, w1, w2, of = unpack6(f, p)
                            if vtf >> 28 == 6:
                                t = p + 42
                                e = t + plen
                if t and e <= n:
                    if pr == 17:
                        ue = t + w1
                        if t + 8 <= ue <= e:
                            if dport not in tunnel_ports:
                                # Slots filled here: a third cheaper than the dataclass
                                # __init__, whose Python frame costs more than the stores.
                                dp = new(DP)
                                dp.ts_us = ts
                                dp.src_ip, dp.dst_ip = pairs.get(ak) or pair(ak)
                                dp.src_port = sport
                                dp.dst_port = dport
                                dp.transport = 17
                                dp.payload = f[t + 8 : ue]
                                dp.encap = enc
                                dp.tcp_seq = dp.tcp_flags = 0
                                dp.reassembled = False
                                append(dp)
                                continue
                            kind = _VXLAN if dport in vxlan_ports else _GENEVE
                            dp = tunnel(f, ts, t + 8, ue, enc, ak, kind)
                            if dp is not None:
                                append(dp)
                                continue
                    elif pr == 6:
                        pl = t + ((of >> 10) & 0x3C)
                        if t + 20 <= pl <= e:
                            dp = new(DP)
                            dp.ts_us = ts
                            dp.src_ip, dp.dst_ip = pairs.get(ak) or pair(ak)
                            dp.src_port = sport
                            dp.dst_port = dport
                            dp.transport = 6
                            dp.payload = f[pl:e]
                            dp.encap = enc
                            dp.tcp_seq = (w1 << 16) | w2
                            dp.tcp_flags = of & 0x0FFF
                            dp.reassembled = False
                            append(dp)
                            continue
                    elif pr == 47 or (pr in (4, 41) and ipip):
                        dp = tunnel(f, ts, t, e, enc, ak, pr)
                        if dp is not None:
                            append(dp)
                            continue
                    elif pr in (1, 58) and e >= t:  # ICMP, ICMPv6 (neighbour discovery)
                        drops["not_udp_tcp"] += 1
                        continue
            except Exception:  # noqa: S110 -- odd frames: the general path decodes and counts them
                pass
            dp = general(f, ts, lt)
            if dp is not None:
                append(dp)
        return len(out) - start - (walker.packets + walker.reasm.datagrams - by_walker)

    def _vlan_encap(self, tci: int) -> Encap:
        """The Encap shared by packets with one 802.1Q tag of this TCI."""
        cache = self._vlan_encaps
        if len(cache) >= _ENCAP_CACHE_LIMIT:
            cache.clear()
        enc = cache[tci] = Encap([tci & 0x0FFF], [])
        return enc

    def _tag_encap(self, tags: bytes) -> Encap:
        """The Encap shared by packets with these VLAN tags (TPID and TCI, 4 bytes each)."""
        cache = self._tag_encaps
        if len(cache) >= _ENCAP_CACHE_LIMIT:
            cache.clear()
        vlans = [((tags[i + 2] & 0x0F) << 8) | tags[i + 3] for i in range(0, len(tags), 4)]
        enc = cache[tags] = Encap(vlans, [])
        return enc

    def tunnel(
        self, f: bytes, ts: int, h: int, lim: int, enc: Encap | None, ak: bytes, kind: int
    ) -> DecodedPacket | None:
        """Through one tunnel header at ``h`` to a fast-shaped inner packet; else None."""
        w = self._walker
        n = len(f)
        tid: int | None = None
        if kind == _VXLAN:
            if h + 8 > lim or not f[h] & 0x08:
                return None
            tid = (f[h + 4] << 16) | (f[h + 5] << 8) | f[h + 6]
            typ = "vxlan"
            i = h + 8
            et = ETH_TEB
        elif kind == _GENEVE:
            if h + 8 > lim or f[h] >> 6:
                return None
            tid = (f[h + 4] << 16) | (f[h + 5] << 8) | f[h + 6]
            typ = "geneve"
            i = h + 8 + ((f[h] & 0x3F) << 2)
            et = (f[h + 2] << 8) | f[h + 3]
        elif kind == _GRE:
            if h + 4 > lim:
                return None
            flags = f[h]
            if f[h + 1] or flags & 0x4F:  # version, routing, recursion: the general path says
                return None
            et = (f[h + 2] << 8) | f[h + 3]
            i = h + 8 if flags & 0x80 else h + 4
            if flags & 0x20:
                if i + 4 > lim:
                    return None
                tid = (f[i] << 24) | (f[i + 1] << 16) | (f[i + 2] << 8) | f[i + 3]
                i += 4
            if flags & 0x10:
                i += 4
            if et in (ETH_IPV4, ETH_IPV6, ETH_TEB):
                if not w.gre:
                    return None
                typ = "gretap" if et == ETH_TEB else "gre"
            elif i + 12 > lim or not w.erspan:
                return None
            elif et == GRE_ERSPAN2 and flags & 0x10:
                tid = ((f[i + 2] & 0x03) << 8) | f[i + 3]
                typ = "erspan2"
                i += 8
                et = ETH_TEB
            elif et == GRE_ERSPAN3 and not (f[i + 10] >> 2) & 0x1F:  # frame type Ethernet
                tid = ((f[i + 2] & 0x03) << 8) | f[i + 3]
                typ = "erspan3"
                i += 20 if f[i + 11] & 0x01 else 12
                et = ETH_TEB
            else:
                return None
        else:  # IP in IP: protocol 4 or 41
            typ = ipip_type(len(ak) == 32, kind)
            i = h
            et = ETH_IPV4 if kind == 4 else ETH_IPV6
        # The unpacks may read past ``lim`` (into outer padding) but never past the frame;
        # what they read there is used only once the lengths are checked against ``lim``.
        inner_vid = -1
        if et == ETH_TEB:  # an Ethernet frame: its ethertype, maybe one 802.1Q tag
            p = i + 12
            if p + _VLAN_V4.size > n:
                return None
            et, vihl, tl, frag, pr, iak, sport, dport, w1, w2, of = _ETH_V4.unpack_from(f, p)
            if et == 0x8100:
                _, tci, et, vihl, tl, frag, pr, iak, sport, dport, w1, w2, of = (
                    _VLAN_V4.unpack_from(f, p)
                )
                inner_vid = tci & 0x0FFF
                p += 4
            if et == ETH_IPV6:
                if p + _ETH_V6.size > n:
                    return None
                vtf, plen, pr, iak, sport, dport, w1, w2, of = _ETH_V6.unpack_from(f, p)
        else:  # a bare IP header: the two bytes before it are not an ethertype
            p = i - 2
            if et == ETH_IPV4:
                if p + _ETH_V4.size > n:
                    return None
                _, vihl, tl, frag, pr, iak, sport, dport, w1, w2, of = _ETH_V4.unpack_from(f, p)
            elif et == ETH_IPV6:
                if p + _ETH_V6.size > n:
                    return None
                vtf, plen, pr, iak, sport, dport, w1, w2, of = _ETH_V6.unpack_from(f, p)
        if et == ETH_IPV4:
            if vihl != 0x45 or frag & 0x3FFF:
                return None
            t = p + 22
            e = p + 2 + tl
        elif et == ETH_IPV6:
            if vtf >> 28 != 6:
                return None
            t = p + 42
            e = t + plen
        else:
            return None
        if e > lim:
            return None
        key: tuple[object, ...] = (typ, tid, ak, enc.vlans[0] if enc else -1, inner_vid)
        if enc is not None and len(enc.vlans) > 1:
            key += tuple(enc.vlans)
        tenc = self._tunnel_encaps.get(key)
        if tenc is None:
            tenc = self._tunnel_encap(key, enc, typ, tid, ak, inner_vid)
        if pr == 17:
            ue = t + w1
            if t + 8 <= ue <= e and dport not in w.udp_tunnel_ports:
                # Slots filled here, as in run(): a Python __init__ frame costs more.
                dp = _new(DecodedPacket)
                dp.ts_us = ts
                dp.src_ip, dp.dst_ip = w.pairs.get(iak) or w.pair(iak)
                dp.src_port = sport
                dp.dst_port = dport
                dp.transport = 17
                dp.payload = f[t + 8 : ue]
                dp.encap = tenc
                dp.tcp_seq = dp.tcp_flags = 0
                dp.reassembled = False
                return dp
        elif pr == 6:
            pl = t + ((of >> 10) & 0x3C)
            if t + 20 <= pl <= e:
                dp = _new(DecodedPacket)
                dp.ts_us = ts
                dp.src_ip, dp.dst_ip = w.pairs.get(iak) or w.pair(iak)
                dp.src_port = sport
                dp.dst_port = dport
                dp.transport = 6
                dp.payload = f[pl:e]
                dp.encap = tenc
                dp.tcp_seq = (w1 << 16) | w2
                dp.tcp_flags = of & 0x0FFF
                dp.reassembled = False
                return dp
        return None

    def _tunnel_encap(
        self,
        key: tuple[object, ...],
        enc: Encap | None,
        typ: str,
        tid: int | None,
        ak: bytes,
        inner_vid: int,
    ) -> Encap:
        """The Encap shared by fast-path packets of one tunnel, outer VLANs and inner VLAN."""
        cache = self._tunnel_encaps
        if len(cache) >= _ENCAP_CACHE_LIMIT:
            cache.clear()
        src, dst = self._walker.pair(ak)
        tun = Tunnel(typ, src, dst, tid, [inner_vid] if inner_vid >= 0 else None)
        tenc = cache[key] = Encap(list(enc.vlans) if enc is not None else [], [tun])
        return tenc
