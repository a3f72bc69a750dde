"""TCP stream reassembly for SIP: flows, sequence numbers, out-of-order segments, gaps, bounds.

Flows are keyed by the TCP 4-tuple (the protocol is implied), both directions one flow, in a
:class:`~otus.decoder.flows.FlowRegistry` (``max_flows``, LRU eviction, idle expiry). VLAN tags
and tunnels are not part of the key: a segment mirrored twice (or seen with and without a tag,
or on two interfaces) is a retransmission of the same stream, dropped once. Each direction
(:class:`~otus.plugins.parser.sip.framing.Half`) tracks the next expected sequence number in
32-bit modular arithmetic (wraparound is ordinary), starting at the SYN, or at the first
segment seen when the capture started mid-stream (then the framer resynchronises on the next
SIP start line). A segment

- in order is handed to the framer (:mod:`otus.plugins.parser.sip.framing`), then any held
  segments it makes contiguous;
- wholly before the next expected byte is a retransmission (``parse.drop.tcp_retransmit``);
  one that overlaps it is trimmed (``tcp.overlaps``); the bytes already seen win;
- ahead of it is held (``tcp.out_of_order``) while it fits the window: at most
  ``max_out_of_order`` segments and ``max_stream_buffer`` bytes past the next expected byte. A
  hole is given up (``parse.drop.tcp_gap``, its size in ``tcp.bytes_missing``) when the window
  would overflow, when it stayed unfilled for ``gap_timeout_ms`` (packet time), or when the
  flow ends: the message it cut is dropped, the framer resynchronises after it.

A flow ends on RST, on FIN from both directions, idle for ``flow_idle_timeout_s``, evicted
when ``max_flows`` are tracked, or at the end of the capture (:meth:`TcpStreams.drain`); held
segments are delivered then (past their holes), and a message still incomplete is
``parse.drop.tcp_closed``. When all streams together hold more than ``max_total_buffer`` bytes,
the direction that crosses it drops what it holds (``parse.drop.tcp_memory``).

The accounting identity (every payload byte handed to the parser over TCP)::

    tcp.bytes = tcp.bytes_sip + tcp.bytes_keepalive + tcp.bytes_websocket
              + tcp.bytes_duplicate + tcp.bytes_skipped + tcp.bytes_dropped
              + tcp.buffered_bytes (a gauge: held right now)

and every message cut from ``tcp.bytes_sip`` is counted once by the parser (``sip.*``, or a
``parse.drop.*`` reason). Every TCP segment handed to the parser is counted in
``tcp.segments``; those carrying nothing new end in ``parse.drop.tcp_retransmit``, or are SYN,
FIN or RST segments without payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from otus.core.packet import DecodedPacket, OutputPacket
from otus.decoder.flows import Flow, FlowRegistry
from otus.plugins.parser.sip.framing import DROPPED, MAYBE, Emit, Framer, Half

__all__ = ["COUNTERS", "StreamLimits", "TcpFlow", "TcpStreams"]

_M: Final = 0xFFFF_FFFF
_HALF: Final = 0x8000_0000
_FIN, _SYN, _RST = 0x01, 0x02, 0x04
DUPLICATE: Final = "tcp.bytes_duplicate"
COUNTERS: Final = (
    DUPLICATE,
    "tcp.bytes_missing",
    "tcp.out_of_order",
    "tcp.overlaps",
    "parse.drop.tcp_retransmit",
    "parse.drop.tcp_gap",
    "parse.drop.tcp_closed",
    "parse.drop.tcp_memory",
)

Key = tuple[str, int, str, int]


@dataclass(slots=True)
class StreamLimits:
    """The bounds of TCP reassembly (from the parser's ``tcp`` config)."""

    max_flows: int = 65536
    flow_idle_timeout_us: int = 300_000_000
    max_stream_buffer: int = 131072
    max_total_buffer: int = 64 << 20
    max_out_of_order: int = 64
    gap_timeout_us: int = 1_000_000


class TcpFlow(Flow):
    """Both directions of one connection: ``a`` from the key's first endpoint, ``b`` back."""

    __slots__ = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.a: Half | None = None
        self.b: Half | None = None


class _Closed(Flow):
    """What is left of a flow closed by FIN or RST: where each direction ended."""

    __slots__ = ("a_end", "b_end")

    def __init__(self, a_end: int, b_end: int) -> None:
        super().__init__()
        self.a_end = a_end
        self.b_end = b_end


_LINGER_US: Final = 10_000_000  # how long a closed flow absorbs late retransmissions
SEG_COST: Final = 256  # a held segment's object overhead, charged against the byte bounds


class TcpStreams:
    """Every TCP flow of one parser: segments in, SIP messages out through the framer."""

    __slots__ = (
        "_c",
        "_check_us",
        "_closed",
        "_flows",
        "_framer",
        "_gap_us",
        "_granule",
        "_lookup",
        "_max_held",
        "_next_check",
        "_pending",
        "_stalled",
        "_total_max",
        "_window",
        "bytes",
        "held",
        "held_segs",
        "segments",
    )

    def __init__(
        self, limits: StreamLimits, max_message: int, counters: dict[str, int], emit: Emit
    ) -> None:
        self._c = counters
        for k in COUNTERS:
            counters.setdefault(k, 0)
        self._flows: FlowRegistry[Key, TcpFlow] = FlowRegistry(
            limits.max_flows, limits.flow_idle_timeout_us, self._on_end
        )
        self._lookup = self._flows.lookup  # a found flow is refreshed inline (see touch)
        self._granule = self._flows.granule
        # Closed flows linger (bounded, not counted as flows) so that a late copy of a segment
        # is a retransmission, not the start of a new stream reported again.
        self._closed: FlowRegistry[Key, _Closed] = FlowRegistry(
            max(16, limits.max_flows // 4), _LINGER_US
        )
        self._framer = Framer(counters, emit, min(max_message, limits.max_stream_buffer))
        self._window = limits.max_stream_buffer
        self._max_held = limits.max_out_of_order
        self._gap_us = limits.gap_timeout_us
        self._total_max = limits.max_total_buffer
        self._check_us = min(1_000_000, max(1, limits.gap_timeout_us // 2))
        self._next_check = 0
        self._stalled: dict[Half, Half] = {}  # directions holding out-of-order segments
        self._pending: list[OutputPacket] = []  # completed outside segment(): next call's
        self.segments = 0  # tcp.segments
        self.bytes = 0  # tcp.bytes
        self.held = 0  # bytes of held out-of-order segments (with the framer's: buffered)
        self.held_segs = 0  # how many: each is charged SEG_COST more against the bounds

    # -- per packet ----------------------------------------------------------------------

    def known(self, pkt: DecodedPacket) -> bool:
        """Whether ``pkt`` belongs to a tracked flow."""
        s, sp, d, dp = pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port
        if sp < dp or (sp == dp and s < d):
            return (s, sp, d, dp) in self._flows
        return (d, dp, s, sp) in self._flows

    def segment(self, pkt: DecodedPacket, out: list[OutputPacket]) -> None:
        """One TCP segment: track its flow, append the messages it completes to ``out``."""
        self.segments += 1
        ts = pkt.ts_us
        if ts >= self._next_check:
            self._housekeep(ts, out)
        s, sp, d, dp = pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port
        if sp < dp or (sp == dp and s < d):
            key = (s, sp, d, dp)
            fwd = True
        else:
            key = (d, dp, s, sp)
            fwd = False
        # Literals below, not the named flags: a global lookup costs as much as the test.
        flow = self._lookup(key)
        if flow is None:
            flow = self._new_flow(key, fwd, pkt, out)
            if flow is None:
                return
        elif ts - flow.moved_us > self._granule:
            self._flows.touch(key, ts)
        else:
            flow.last_us = ts
        h = flow.a if fwd else flow.b
        if h is None:
            h = Half()
            if fwd:
                flow.a = h
            else:
                flow.b = h
        flags = pkt.tcp_flags
        seq = self._syn(h, pkt, out) if flags & 2 else pkt.tcp_seq  # SYN
        p = pkt.payload
        if p:
            self.bytes += len(p)
            if seq == h.nxt and h.held is None:  # in order, nothing waiting: the common case
                h.nxt = (seq + len(p)) & 0xFFFF_FFFF
                self._framer.feed(h, p, pkt, out)
            else:
                self._data(h, seq, p, pkt, out)
                if h.held is not None and ts - h.held_since > self._gap_us:
                    self._give_up_holes(h, pkt, out)
        if flags & 5:  # FIN or RST
            self._fin(key, flow, h, fwd, pkt, out)
        elif self._framer.buffered + self.held + self.held_segs * SEG_COST > self._total_max:
            self._shed(h)
        if self._pending:
            self._flush_pending(out)

    def _new_flow(
        self, key: Key, fwd: bool, pkt: DecodedPacket, out: list[OutputPacket]
    ) -> TcpFlow | None:
        """A segment of no tracked flow: start one, unless it is late news of a closed one."""
        if (self._closed and self._late(key, fwd, pkt)) or (
            not pkt.payload and not pkt.tcp_flags & _SYN  # FIN/RST of an untracked flow
        ):
            if self._pending:
                self._flush_pending(out)
            return None
        return self._flows.add(key, TcpFlow(), pkt.ts_us)

    def _syn(self, h: Half, pkt: DecodedPacket, out: list[OutputPacket]) -> int:
        """A SYN sets the initial sequence number; returns where its payload (if any) starts."""
        seq = pkt.tcp_seq
        if h.isn != seq:
            if h.nxt >= 0:  # a new connection reusing the 4-tuple
                self._end_half(h, out)
                self._reset(h)
            h.isn = seq
            h.nxt = (seq + 1) & _M
            h.synced = True
        return (seq + 1) & _M  # data on a SYN (TCP Fast Open) follows it

    def _fin(
        self,
        key: Key,
        flow: TcpFlow,
        h: Half,
        fwd: bool,
        pkt: DecodedPacket,
        out: list[OutputPacket],
    ) -> None:
        """FIN or RST: the flow ends on RST, or once both directions sent FIN."""
        if pkt.tcp_flags & _FIN:
            h.fin = True
        other = flow.b if fwd else flow.a
        if pkt.tcp_flags & _RST or (
            (other is None or (other.fin and not other.held)) and not h.held
        ):  # with a hole left, a retransmission may still come: wait for it (or expiry)
            self._flows.remove(key)
            self._end_flow(flow, out)
            a, b = flow.a, flow.b
            ends = _Closed(-1 if a is None else a.nxt, -1 if b is None else b.nxt)
            self._closed.add(key, ends, pkt.ts_us)

    def _late(self, key: Key, fwd: bool, pkt: DecodedPacket) -> bool:
        """A segment of a flow closed moments ago: True if it is old news (and counted)."""
        t = self._closed.get(key)
        if t is None:
            return False
        p = pkt.payload
        end = t.a_end if fwd else t.b_end
        if pkt.tcp_flags & _SYN or end < 0:
            self._closed.remove(key)  # a new connection on the same 4-tuple
            return False
        if not p:
            return True  # a FIN or RST again
        n = len(p)
        if (pkt.tcp_seq + n - end - 1) & _M >= _HALF:  # ends at or before the old end
            self.bytes += n
            self._c[DUPLICATE] += n
            self._c["parse.drop.tcp_retransmit"] += 1
            return True
        self._closed.remove(key)
        return False

    def _data(
        self, h: Half, seq: int, p: bytes, pkt: DecodedPacket, out: list[OutputPacket]
    ) -> None:
        """Payload ``p`` at ``seq``: deliver it in order, trim it, drop it, or hold it."""
        c = self._c
        n = len(p)
        if h.nxt < 0:  # mid-stream: the first segment seen starts the stream, out of step
            h.nxt = seq
        while True:
            d = (seq - h.nxt) & _M
            if d >= _HALF:
                d -= 1 << 32
            if d == 0:
                h.nxt = (seq + n) & _M
                self._framer.feed(h, p, pkt, out)
                break
            if d < 0:
                if d + n <= 0:
                    c[DUPLICATE] += n
                    c["parse.drop.tcp_retransmit"] += 1
                    return
                c[DUPLICATE] += -d
                c["tcp.overlaps"] += 1
                h.nxt = (seq + n) & _M
                self._framer.feed(h, p[-d:], pkt, out)
                break
            held = h.held
            k = 0 if held is None else len(held)
            if (
                d + n <= self._window
                and k < self._max_held
                and h.size() + n + (k + 1) * SEG_COST <= self._window
            ):
                self._hold(h, seq, p, pkt)
                return
            if held:
                self._skip_gap(h, pkt, out)  # the window is full: the oldest hole is lost
            else:  # too far ahead to wait for: a gap of d bytes
                self._gap(h, d)
                h.nxt = seq
        if h.held:
            self._drain_held(h, pkt, out)

    def _hold(self, h: Half, seq: int, p: bytes, pkt: DecodedPacket) -> None:
        """Keep an out-of-order segment until the bytes before it arrive."""
        c = self._c
        held = h.held
        if held is None:
            held = h.held = {}
            h.held_since = pkt.ts_us
            self._stalled[h] = h
        old = held.get(seq)
        if old is not None:
            if len(old.payload) >= len(p):
                c[DUPLICATE] += len(p)
                c["parse.drop.tcp_retransmit"] += 1
                return
            c[DUPLICATE] += len(old.payload)
            h.held_bytes -= len(old.payload)
            self.held -= len(old.payload)
        else:
            self.held_segs += 1
        held[seq] = pkt
        h.held_bytes += len(p)
        self.held += len(p)
        c["tcp.out_of_order"] += 1

    def _drain_held(self, h: Half, pkt: DecodedPacket | None, out: list[OutputPacket]) -> None:
        """Deliver the held segments that are now in order (``pkt``: the one that made them)."""
        c = self._c
        held = h.held
        feed = self._framer.feed
        while held:
            nxt = h.nxt
            seg = held.pop(nxt, None)
            if seg is None:
                for s in held:
                    if (s - nxt) & _M >= _HALF:  # starts before the next expected byte
                        break
                else:
                    break
                seg = held.pop(s)
                q = seg.payload
                h.held_bytes -= len(q)
                self.held -= len(q)
                self.held_segs -= 1
                d = (nxt - s) & _M  # an overlap: the bytes already delivered win
                if d >= len(q):
                    c[DUPLICATE] += len(q)
                    continue
                c[DUPLICATE] += d
                q = q[d:]
            else:
                q = seg.payload
                h.held_bytes -= len(q)
                self.held -= len(q)
                self.held_segs -= 1
            h.nxt = (nxt + len(q)) & _M
            feed(h, q, pkt or seg, out)
        if held is not None:
            if held:
                h.held_since = pkt.ts_us if pkt is not None else h.held_since
            else:
                h.held = None
                self._stalled.pop(h, None)

    def _gap(self, h: Half, missing: int) -> None:
        """``missing`` bytes will never come: drop the message they cut, resynchronise after."""
        c = self._c
        c["parse.drop.tcp_gap"] += 1
        c["tcp.bytes_missing"] += missing
        if h.skip >= missing:  # inside a message being skipped anyway: still in step
            h.skip -= missing
            return
        self._framer.abandon(h)
        h.synced = False
        h.bol = MAYBE
        h.skipping = False
        h.ws = False  # WebSocket framing cannot be found again mid-stream; SIP start lines can

    def _skip_gap(self, h: Half, pkt: DecodedPacket | None, out: list[OutputPacket]) -> None:
        """Give up the hole before the lowest held segment and deliver what follows it."""
        held = h.held
        if not held:
            return
        nxt = h.nxt
        lo = min(held, key=lambda s: (s - nxt) & _M)
        self._gap(h, (lo - nxt) & _M)
        h.nxt = lo
        self._drain_held(h, pkt, out)

    def _give_up_holes(self, h: Half, pkt: DecodedPacket | None, out: list[OutputPacket]) -> None:
        """Every hole of ``h`` is given up: what is held past them is delivered."""
        while h.held:
            self._skip_gap(h, pkt, out)

    # -- ends ----------------------------------------------------------------------------

    def _end_half(self, h: Half, out: list[OutputPacket]) -> None:
        """The direction is over: deliver held segments past their holes, drop the rest."""
        self._give_up_holes(h, None, out)
        if self._framer.abandon(h):
            self._c["parse.drop.tcp_closed"] += 1

    def _end_flow(self, flow: TcpFlow, out: list[OutputPacket]) -> None:
        """Finish both directions of a flow that is gone from the registry."""
        if flow.a is not None:
            self._end_half(flow.a, out)
        if flow.b is not None:
            self._end_half(flow.b, out)

    def _on_end(self, key: Key, flow: TcpFlow, reason: str) -> None:
        """The registry evicted or expired a flow: its messages go out with the next call."""
        self._end_flow(flow, self._pending)

    def _reset(self, h: Half) -> None:
        """Forget a direction's state (its bytes are already accounted for)."""
        h.__init__()  # type: ignore[misc]

    def _shed(self, h: Half) -> None:
        """Over the total bound: this direction drops everything it holds."""
        if not h.size():
            return
        c = self._c
        c["parse.drop.tcp_memory"] += 1
        if h.held:
            for seg in h.held.values():
                c[DROPPED] += len(seg.payload)
            self.held -= h.held_bytes
            self.held_segs -= len(h.held)
            h.held = None
            h.held_bytes = 0
            self._stalled.pop(h, None)
        self._framer.abandon(h)
        h.synced = False
        h.bol = MAYBE

    def _flush_pending(self, out: list[OutputPacket]) -> None:
        out.extend(self._pending)
        self._pending.clear()

    # -- housekeeping --------------------------------------------------------------------

    def _housekeep(self, now_us: int, out: list[OutputPacket]) -> None:
        """Expire idle flows, give up holes older than the gap timeout."""
        self._next_check = now_us + self._check_us
        self._flows.expire(now_us)
        self._closed.expire(now_us)
        gap_us = self._gap_us
        for h in list(self._stalled):
            if h.held is not None and now_us - h.held_since > gap_us:
                self._give_up_holes(h, None, out)

    def expire(self, now_us: int) -> None:
        """Idle housekeeping (packet time): messages it completes go out with the next segment."""
        self._housekeep(now_us, self._pending)

    def drain(self, out: list[OutputPacket]) -> None:
        """End of capture: deliver what is held past its holes, end every flow."""
        self._flush_pending(out)
        self._flows.clear("closed")  # each through _on_end, into _pending
        self._flush_pending(out)
        self._closed.clear()
        self._stalled.clear()

    def stats(self) -> dict[str, int]:
        """``tcp.segments``, ``tcp.bytes``, the ``tcp.buffered_bytes`` gauge and ``flows.*``."""
        s = self._flows.stats()
        s["tcp.segments"] = self.segments
        s["tcp.bytes"] = self.bytes
        s["tcp.buffered_bytes"] = self._framer.buffered + self.held
        return s
