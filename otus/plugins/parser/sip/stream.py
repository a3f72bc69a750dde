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
from otus.plugins.parser.sip.framing import DROPPED, Emit, Framer, Half

__all__ = ["COUNTERS", "StreamLimits", "TcpFlow", "TcpStreams"]

_M: Final = 0xFFFF_FFFF
_HALF: Final = 0x8000_0000
_FIN, _SYN, _RST = 0x01, 0x02, 0x04
DUPLICATE: Final = "tcp.bytes_duplicate"
COUNTERS: Final = (
    "tcp.segments",
    "tcp.bytes",
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


class TcpStreams:
    """Every TCP flow of one parser: segments in, SIP messages out through the framer."""

    __slots__ = (
        "_c",
        "_check_us",
        "_flows",
        "_framer",
        "_gap_us",
        "_max_held",
        "_next_check",
        "_pending",
        "_stalled",
        "_total_max",
        "_window",
        "buffered",
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
        self._framer = Framer(counters, emit, min(max_message, limits.max_stream_buffer))
        self._window = limits.max_stream_buffer
        self._max_held = limits.max_out_of_order
        self._gap_us = limits.gap_timeout_us
        self._total_max = limits.max_total_buffer
        self._check_us = min(1_000_000, max(1, limits.gap_timeout_us // 2))
        self._next_check = 0
        self._stalled: dict[Half, Half] = {}  # directions holding out-of-order segments
        self._pending: list[OutputPacket] = []  # completed outside segment(): next call's
        self.buffered = 0

    # -- per packet ----------------------------------------------------------------------

    def known(self, pkt: DecodedPacket) -> bool:
        """Whether ``pkt`` belongs to a tracked flow."""
        s, sp, d, dp = pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port
        if sp < dp or (sp == dp and s < d):
            return (s, sp, d, dp) in self._flows
        return (d, dp, s, sp) in self._flows

    def segment(self, pkt: DecodedPacket, out: list[OutputPacket]) -> None:
        """One TCP segment: track its flow, append the messages it completes to ``out``."""
        c = self._c
        c["tcp.segments"] += 1
        ts = pkt.ts_us
        if ts >= self._next_check:
            self._housekeep(ts, out)
        p = pkt.payload
        flags = pkt.tcp_flags
        s, sp, d, dp = pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port
        if sp < dp or (sp == dp and s < d):
            key = (s, sp, d, dp)
            fwd = True
        else:
            key = (d, dp, s, sp)
            fwd = False
        flow = self._flows.touch(key, ts)
        if flow is None:
            if not p and not flags & _SYN:
                if self._pending:
                    self._flush_pending(out)
                return  # FIN/RST of a flow not (or no longer) tracked
            flow = self._flows.add(key, TcpFlow(), ts)
        h = flow.a if fwd else flow.b
        if h is None:
            h = Half()
            if fwd:
                flow.a = h
            else:
                flow.b = h
        before = h.size()
        seq = pkt.tcp_seq
        if flags & _SYN:
            if h.isn != seq:
                if h.nxt >= 0:  # a new connection reusing the 4-tuple
                    self._end_half(h, out)
                    self._reset(h)
                h.isn = seq
                h.nxt = (seq + 1) & _M
                h.synced = True
            seq = (seq + 1) & _M  # data on a SYN (TCP Fast Open) follows the SYN
        if p:
            c["tcp.bytes"] += len(p)
            self._data(h, seq, p, pkt, out)
            if h.held is not None and ts - h.held_since > self._gap_us:
                while h.held:
                    self._skip_gap(h, pkt, out)
        self.buffered += h.size() - before
        if flags & (_FIN | _RST):
            if flags & _FIN:
                h.fin = True
            other = flow.b if fwd else flow.a
            if flags & _RST or (
                (other is None or (other.fin and not other.held)) and not h.held
            ):  # with a hole left, a retransmission may still come: wait for it (or expiry)
                self._flows.remove(key)
                self._end_flow(flow, out)
        elif self.buffered > self._total_max:
            self._shed(h)
        if self._pending:
            self._flush_pending(out)

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
            if (
                d + n <= self._window
                and (0 if held is None else len(held)) < self._max_held
                and h.size() + n <= self._window
            ):
                self._hold(h, seq, p, pkt)
                return
            if held:
                self._skip_gap(h, pkt, out)  # the window is full: the oldest hole is lost
            else:  # too far ahead to wait for: a gap of d bytes
                self._gap(h, d, out)
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
        held[seq] = pkt
        h.held_bytes += len(p)
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
                d = (nxt - s) & _M  # an overlap: the bytes already delivered win
                if d >= len(q):
                    c[DUPLICATE] += len(q)
                    continue
                c[DUPLICATE] += d
                q = q[d:]
            else:
                q = seg.payload
                h.held_bytes -= len(q)
            h.nxt = (nxt + len(q)) & _M
            feed(h, q, pkt or seg, out)
        if held is not None:
            if held:
                h.held_since = pkt.ts_us if pkt is not None else h.held_since
            else:
                h.held = None
                h.held_bytes = 0
                self._stalled.pop(h, None)

    def _gap(self, h: Half, missing: int, out: list[OutputPacket]) -> None:
        """``missing`` bytes will never come: drop the message they cut, resynchronise after."""
        c = self._c
        c["parse.drop.tcp_gap"] += 1
        c["tcp.bytes_missing"] += missing
        if h.skip >= missing:  # inside a message being skipped anyway: still in step
            h.skip -= missing
            return
        if h.skip:
            h.skip = 0
        self._framer.abandon(h)
        h.synced = False
        h.bol = True
        h.skipping = False
        h.ws = False  # WebSocket framing cannot be found again mid-stream; SIP start lines can

    def _skip_gap(self, h: Half, pkt: DecodedPacket | None, out: list[OutputPacket]) -> None:
        """Give up the hole before the lowest held segment and deliver what follows it."""
        held = h.held
        if not held:
            return
        nxt = h.nxt
        lo = min(held, key=lambda s: (s - nxt) & _M)
        self._gap(h, (lo - nxt) & _M, out)
        h.nxt = lo
        self._drain_held(h, pkt, out)

    # -- ends ----------------------------------------------------------------------------

    def _end_half(self, h: Half, out: list[OutputPacket]) -> None:
        """The direction is over: deliver held segments past their holes, drop the rest."""
        while h.held:
            self._skip_gap(h, None, out)
        if self._framer.abandon(h):
            self._c["parse.drop.tcp_closed"] += 1

    def _end_flow(self, flow: TcpFlow, out: list[OutputPacket]) -> None:
        """Finish both directions of a flow that is gone from the registry."""
        for h in (flow.a, flow.b):
            if h is not None:
                before = h.size()
                self._end_half(h, out)
                self.buffered += h.size() - before

    def _on_end(self, key: Key, flow: TcpFlow, reason: str) -> None:
        """The registry evicted or expired a flow: its messages go out with the next call."""
        self._end_flow(flow, self._pending)

    def _reset(self, h: Half) -> None:
        """Forget a direction's state (its bytes are already accounted for)."""
        h.__init__()  # type: ignore[misc]

    def _shed(self, h: Half) -> None:
        """Over the total bound: this direction drops everything it holds."""
        c = self._c
        before = h.size()
        if not before:
            return
        c["parse.drop.tcp_memory"] += 1
        if h.held:
            for seg in h.held.values():
                c[DROPPED] += len(seg.payload)
            h.held = None
            h.held_bytes = 0
            self._stalled.pop(h, None)
        self._framer.abandon(h)
        h.synced = False
        h.bol = True
        self.buffered -= before - h.size()

    def _flush_pending(self, out: list[OutputPacket]) -> None:
        out.extend(self._pending)
        self._pending.clear()

    # -- housekeeping --------------------------------------------------------------------

    def _housekeep(self, now_us: int, out: list[OutputPacket]) -> None:
        """Expire idle flows, give up holes older than the gap timeout."""
        self._next_check = now_us + self._check_us
        self._flows.expire(now_us)
        gap_us = self._gap_us
        for h in list(self._stalled):
            if h.held is not None and now_us - h.held_since > gap_us:
                before = h.size()
                while h.held:
                    self._skip_gap(h, None, out)
                self.buffered += h.size() - before

    def expire(self, now_us: int) -> None:
        """Idle housekeeping (packet time): messages it completes go out with the next segment."""
        self._housekeep(now_us, self._pending)

    def drain(self, out: list[OutputPacket]) -> None:
        """End of capture: deliver what is held past its holes, end every flow."""
        self._flush_pending(out)
        self._flows.clear("closed")  # each through _on_end, into _pending
        self._flush_pending(out)
        self._stalled.clear()

    def stats(self) -> dict[str, int]:
        """``flows.*`` and the ``tcp.buffered_bytes`` gauge (the rest are in the counters)."""
        s = self._flows.stats()
        s["tcp.buffered_bytes"] = self.buffered
        return s
