"""The decoder: raw frames in, DecodedPackets with the innermost addresses out, drops counted.

Two paths. ``decode_batch`` inlines the shapes nearly all SIP traffic has (Ethernet or Linux
cooked; no tag or one 802.1Q tag; IPv4 without options or fragmentation, or IPv6 without
extension headers; UDP or TCP); any frame that leaves that shape, even halfway, is decoded
again from the start by the general path (:mod:`otus.decoder.walk`), which handles every link
type, VLAN stack, tunnel and IPv6 extension chain, and hands fragments to the reassembler.

Counting: every frame ends in exactly one of ``decode.packets``, ``decode.drop.<reason>`` or
``reassembly.fragments``; see :mod:`otus.decoder.reassembly` for what fragments become.

Packets with the same single VLAN tag share one :class:`Encap`: treat ``encap`` as read-only.
"""

from __future__ import annotations

from struct import Struct

from otus.core.packet import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    DecodedPacket,
    Encap,
    RawBatch,
    RawPacket,
    Tunnel,
)
from otus.decoder.common import ETH_IPV4, ETH_IPV6, ETH_TEB
from otus.decoder.options import DecoderOptions
from otus.decoder.tunnel import GRE_ERSPAN2, GRE_ERSPAN3
from otus.decoder.walk import Walker

__all__ = ["Decoder"]

# The fast path reads, in one unpack, the IPv4 header (version/IHL, total length, flags+offset,
# protocol, both addresses) and the first 14 bytes of UDP/TCP (ports; UDP length or TCP
# sequence number as two halves; TCP data offset and flags), after the ethertype...
_IP4_L4 = "BxHxxHxBxx8sHHHH4xH"
_ETH_V4 = Struct("!H" + _IP4_L4)  # ...of Ethernet or Linux cooked v1
_SLL2_V4 = Struct("!H18x" + _IP4_L4)  # ...of Linux cooked v2 (protocol first)
_VLAN_V4 = Struct("!HHH" + _IP4_L4)  # ...and one 802.1Q tag (TPID, TCI, ethertype)
# The same with the fixed IPv6 header (version word, payload length, next header, addresses).
_IP6_L4 = "IHBx32sHHHH4xH"
_ETH_V6 = Struct("!2x" + _IP6_L4)
_SLL2_V6 = Struct("!20x" + _IP6_L4)

_TUNNEL_CACHE_LIMIT = 4096


class Decoder:
    """Decodes raw frames to DecodedPackets; counts, never raises, on anything else."""

    __slots__ = ("_frames", "_packets", "_tunnel_encaps", "_vlan_encaps", "_walker", "options")

    def __init__(self, options: DecoderOptions | None = None) -> None:
        self.options = options if options is not None else DecoderOptions()
        self._walker = Walker(self.options)
        self._frames = 0
        self._packets = 0  # fast-path packets; the walker counts its own
        self._vlan_encaps: dict[int, Encap] = {}
        self._tunnel_encaps: dict[tuple[str, int | None, bytes, int, int], Encap] = {}

    # -- public API ---------------------------------------------------------------------------

    def decode_batch(self, batch: RawBatch, out: list[DecodedPacket]) -> None:
        """Append a DecodedPacket per decodable frame of ``batch`` to ``out``; never raises."""
        frames = batch.frames
        tss = batch.ts_us
        lt = batch.linktype
        self._frames += len(frames)
        append = out.append
        walker = self._walker
        general = walker.frame
        if lt == LINKTYPE_ETHERNET:
            ep, vlan_ok = 12, True
        elif lt == LINKTYPE_LINUX_SLL:
            ep, vlan_ok = 14, True  # libpcap puts a VLAN tag where Ethernet has it
        elif lt == LINKTYPE_LINUX_SLL2:
            ep, vlan_ok = 0, False  # protocol first, the IP header at 20
        else:
            for f, ts in zip(frames, tss, strict=False):
                dp = general(f, ts, lt)
                if dp is not None:
                    append(dp)
            walker.reasm.expire_oldest(tss[-1] if tss else 0)
            return
        if lt == LINKTYPE_LINUX_SLL2:
            ip0, unpack, unpack6 = 20, _SLL2_V4.unpack_from, _SLL2_V6.unpack_from
        else:
            ip0, unpack, unpack6 = ep + 2, _ETH_V4.unpack_from, _ETH_V6.unpack_from
        unpack_vlan = _VLAN_V4.unpack_from
        ep1 = ep + 1
        pairs = walker.pairs
        pair = walker.pair
        vlan_encaps = self._vlan_encaps
        tunnel_ports = walker.udp_tunnel_ports
        vxlan_ports = walker.vxlan_ports
        tunnel = self._tunnel
        DP = DecodedPacket  # a local: one lookup per packet less
        # Fast-path packets are counted from the output afterwards, not one by one.
        start = len(out)
        by_walker = walker.packets + walker.reasm.datagrams
        for f, ts in zip(frames, tss, strict=False):
            try:
                # One unpack reads the ethertype, the IP header and the first 14 bytes of
                # UDP/TCP: cheaper than a dozen bytes subscripts once more than a few fields are
                # needed. A frame too short for it raises and takes the general path. The
                # first byte of the ethertype picks the layout, so each shape unpacks once.
                t = 0
                b = f[ep]
                if b == 0x08:
                    et, vihl, tl, frag, p, ak, sport, dport, w1, w2, of = unpack(f, ep)
                    if et == 0x0800 and vihl == 0x45 and not frag & 0x3FFF:  # no options
                        t = ip0 + 20
                        e = ip0 + tl
                        enc = None
                elif b == 0x81:
                    tpid, tci, et, vihl, tl, frag, p, ak, sport, dport, w1, w2, of = unpack_vlan(
                        f, ep
                    )
                    if (
                        tpid == 0x8100
                        and et == 0x0800
                        and vihl == 0x45
                        and not frag & 0x3FFF
                        and vlan_ok
                    ):
                        t = ip0 + 24
                        e = ip0 + 4 + tl
                        enc = vlan_encaps.get(tci)
                        if enc is None:
                            enc = self._vlan_encap(tci)
                elif b == 0x86 and f[ep1] == 0xDD:
                    vtf, plen, p, ak, sport, dport, w1, w2, of = unpack6(f, ep)
                    if vtf >> 28 == 6:  # next header straight to UDP/TCP below, or general
                        t = ip0 + 40
                        e = t + plen
                        enc = None
                if t and e <= len(f):
                    if p == 17:
                        ue = t + w1
                        if t + 8 <= ue <= e:
                            if dport not in tunnel_ports:
                                ad = pairs.get(ak) or pair(ak)
                                append(DP(ts, ad[0], ad[1], sport, dport, 17, f[t + 8 : ue], enc))
                                continue
                            if dport in vxlan_ports:
                                dp = tunnel(f, ts, t + 8, ue, enc, ak, True)
                                if dp is not None:
                                    append(dp)
                                    continue
                    elif p == 6:
                        pl = t + ((of >> 10) & 0x3C)
                        if t + 20 <= pl <= e:
                            ad = pairs.get(ak) or pair(ak)
                            append(
                                DP(
                                    ts, ad[0], ad[1], sport, dport, 6, f[pl:e], enc,
                                    (w1 << 16) | w2, of & 0x0FFF,
                                )
                            )  # fmt: skip
                            continue
                    elif p == 47:
                        dp = tunnel(f, ts, t, e, enc, ak, False)
                        if dp is not None:
                            append(dp)
                            continue
            except Exception:  # noqa: S110 -- short or odd frames: the general path counts them
                pass
            dp = general(f, ts, lt)
            if dp is not None:
                append(dp)
        by_walker = walker.packets + walker.reasm.datagrams - by_walker
        self._packets += len(out) - start - by_walker
        if tss:
            walker.reasm.expire_oldest(tss[-1])

    def decode(self, pkt: RawPacket) -> DecodedPacket | None:
        """Decode one frame (counted like a batch of one); None when dropped or held."""
        out: list[DecodedPacket] = []
        self.decode_batch(RawBatch(pkt.linktype, [pkt.data], [pkt.ts_us], pkt.ifindex), out)
        return out[0] if out else None

    def expire(self, now_us: int) -> None:
        """Drop reassembly state older than the timeout (the pipeline calls this when idle)."""
        self._walker.reasm.expire(now_us)

    def stats(self) -> dict[str, int]:
        """``decode.*`` and ``reassembly.*`` counters (see the module docstring for the sums)."""
        w = self._walker
        s = {"decode.frames": self._frames, "decode.packets": self._packets + w.packets}
        for reason, n in w.drops.items():
            s["decode.drop." + reason] = n
        s.update(w.reasm.stats())
        return s

    def _vlan_encap(self, tci: int) -> Encap:
        """The Encap of a frame with one 802.1Q tag, shared by every packet of that tag."""
        enc = self._vlan_encaps[tci] = Encap([tci & 0x0FFF], [])
        return enc

    def _tunnel(
        self, f: bytes, ts: int, h: int, lim: int, enc: Encap | None, ak: bytes, udp: bool
    ) -> DecodedPacket | None:
        """Fast path through a VXLAN (``udp``) or GRE/ERSPAN header at ``h`` to a plain inner
        packet ending by ``lim``; None sends the frame to the general path."""
        w = self._walker
        if udp:
            if not f[h] & 0x08:
                return None
            tid: int | None = (f[h + 4] << 16) | (f[h + 5] << 8) | f[h + 6]
            typ = "vxlan"
            i = h + 8
            et = ETH_TEB
        else:
            flags = f[h]
            if f[h + 1] or flags & 0x4F:  # version, routing, recursion: the general path says
                return None
            gp = (f[h + 2] << 8) | f[h + 3]
            i = h + 8 if flags & 0x80 else h + 4
            tid = None
            if flags & 0x20:
                tid = int.from_bytes(f[i : i + 4], "big")
                i += 4
            if flags & 0x10:
                i += 4
            if gp in (ETH_IPV4, ETH_IPV6, ETH_TEB):
                if not w.gre:
                    return None
                typ = "gretap" if gp == ETH_TEB else "gre"
                et = gp
            elif gp == GRE_ERSPAN2 and flags & 0x10 and w.erspan:
                tid = ((f[i + 2] & 0x03) << 8) | f[i + 3]
                typ = "erspan2"
                i += 8
                et = ETH_TEB
            elif gp == GRE_ERSPAN3 and not (f[i + 10] >> 2) & 0x1F and w.erspan:
                tid = ((f[i + 2] & 0x03) << 8) | f[i + 3]
                typ = "erspan3"
                i += 20 if f[i + 11] & 0x01 else 12
                et = ETH_TEB
            else:
                return None
        inner_vid = -1
        if et == ETH_TEB:
            et, vihl, tl, frag, p, iak, sport, dport, w1, w2, of = _ETH_V4.unpack_from(f, i + 12)
            o = i + 14
            if et == 0x8100:
                _, tci, et, vihl, tl, frag, p, iak, sport, dport, w1, w2, of = _VLAN_V4.unpack_from(
                    f, i + 12
                )
                inner_vid = tci & 0x0FFF
                o += 4
        else:
            o = i
            if et == ETH_IPV4:  # the two bytes before the IP header are ignored
                _, vihl, tl, frag, p, iak, sport, dport, w1, w2, of = _ETH_V4.unpack_from(f, o - 2)
        if et == ETH_IPV4:
            if vihl != 0x45 or frag & 0x3FFF:
                return None
            t = o + 20
            e = o + tl
        elif et == ETH_IPV6:
            vtf, plen, p, iak, sport, dport, w1, w2, of = _ETH_V6.unpack_from(f, o - 2)
            if vtf >> 28 != 6:
                return None
            t = o + 40
            e = t + plen
        else:
            return None
        if e > lim:
            return None
        key = (typ, tid, ak, enc.vlans[0] if enc is not None else -1, inner_vid)
        tenc = self._tunnel_encaps.get(key)
        if tenc is None:
            tenc = self._tunnel_encap(key)
        if p == 17:
            ue = t + w1
            if t + 8 <= ue <= e and dport not in w.udp_tunnel_ports:
                ad = w.pair(iak)
                return DecodedPacket(ts, ad[0], ad[1], sport, dport, 17, f[t + 8 : ue], tenc)
        elif p == 6:
            pl = t + ((of >> 10) & 0x3C)
            if t + 20 <= pl <= e:
                ad = w.pair(iak)
                return DecodedPacket(
                    ts, ad[0], ad[1], sport, dport, 6, f[pl:e], tenc, (w1 << 16) | w2, of & 0x0FFF
                )
        return None

    def _tunnel_encap(self, key: tuple[str, int | None, bytes, int, int]) -> Encap:
        """The Encap shared by fast-path packets of one tunnel (type, id, outer addresses and
        VLAN, inner VLAN)."""
        cache = self._tunnel_encaps
        if len(cache) >= _TUNNEL_CACHE_LIMIT:
            cache.clear()
        typ, tid, ak, vid, inner_vid = key
        src, dst = self._walker.pair(ak)
        tun = Tunnel(typ, src, dst, tid, [inner_vid] if inner_vid >= 0 else None)
        enc = cache[key] = Encap([vid] if vid >= 0 else [], [tun])
        return enc
