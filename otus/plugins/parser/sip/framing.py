"""One TCP direction's in-order bytes cut into SIP messages: Content-Length framing and resync.

:class:`Half` is the state of one direction (the sequence bookkeeping of
:mod:`otus.plugins.parser.sip.stream` and the message in progress); :class:`Framer` consumes the
bytes that :mod:`~otus.plugins.parser.sip.stream` delivers in order:

- at a message boundary CRLF keep-alives (RFC 5626) are skipped, then a SIP start line must
  follow; the header block ends at the first empty line, and Content-Length (or its compact
  form ``l``) says where the body ends (RFC 3261 §18.3). Without a usable Content-Length the
  message cannot be delimited: ``parse.drop.tcp_framing``, and the framer looks for the next
  start line;
- a message longer than the bound (``parse.drop.too_large``) is skipped by its Content-Length,
  staying in step; a header block that never ends within the bound is dropped and the framer
  resynchronises;
- out of step (a capture that starts mid-stream, after a gap, after a framing error, non-SIP
  bytes), it skips to the next line that is a SIP request or status line
  (``parse.drop.tcp_resync``, once per skipped run), keeping only the last partial line;
- a direction that starts with an HTTP Upgrade to WebSocket/sip switches to WebSocket frames
  (:mod:`otus.plugins.parser.sip.websocket`), each message one SIP message.

Byte accounting (``tcp.*``): every delivered byte ends in ``tcp.bytes_sip`` (cut into a message
and handed to the parser), ``tcp.bytes_keepalive``, ``tcp.bytes_websocket`` (handshake, frame
headers, control frames), ``tcp.bytes_skipped`` (not part of a message), ``tcp.bytes_dropped``
(part of a message given up), or stays in :meth:`Half.size` (the ``tcp.buffered_bytes`` gauge).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from otus.core.packet import DecodedPacket, OutputPacket
from otus.plugins.parser.sip.message import METHODS, looks_like_sip
from otus.plugins.parser.sip.websocket import handshake, next_frame, unmask

__all__ = ["COUNTERS", "Emit", "Framer", "Half"]

Emit = Callable[[DecodedPacket, bytes, list[OutputPacket]], None]
Buf = bytes | bytearray

SIP_BYTES: Final = "tcp.bytes_sip"
KEEPALIVE: Final = "tcp.bytes_keepalive"
WS_BYTES: Final = "tcp.bytes_websocket"
SKIPPED: Final = "tcp.bytes_skipped"
DROPPED: Final = "tcp.bytes_dropped"
COUNTERS: Final = (
    SIP_BYTES,
    KEEPALIVE,
    WS_BYTES,
    SKIPPED,
    DROPPED,
    "tcp.websocket_handshakes",
    "tcp.websocket_frames",
    "parse.drop.keepalive",
    "parse.drop.too_large",
    "parse.drop.tcp_framing",
    "parse.drop.tcp_resync",
    "parse.drop.ws_protocol",
)

_CRLFS: Final = re.compile(rb"[\r\n]+")
_CONTENT_LENGTH: Final = re.compile(rb"\n(?:content-length|l)[ \t]*:([^\n]*)", re.I)
_START_LINE_MAX: Final = 2048  # as looks_like_sip: a longer first line is not a start line
_CSEQ: Final = re.compile(rb"\ncseq[ \t]*:[ \t]*[0-9]+[ \t]+([!-~]+)", re.I)
NO, YES, MAYBE = 0, 1, 2  # Half.bol


class Half:
    """One direction of a TCP flow: its sequence space and the message in progress."""

    __slots__ = (
        "bol",
        "buf",
        "fin",
        "frag",
        "fresh",
        "held",
        "held_bytes",
        "held_since",
        "isn",
        "need",
        "nxt",
        "scan",
        "skip",
        "skipping",
        "synced",
        "unsure",
        "ws",
        "ws_drop",
    )

    def __init__(self) -> None:
        self.nxt = -1  # sequence number of the next in-order byte; -1 before any segment
        self.isn = -1  # initial sequence number when the SYN was seen
        self.buf: bytearray | None = None  # in-order bytes not yet framed
        self.need = -1  # end of the message in progress within buf, once its header is read
        self.scan = 0  # where to resume looking for the end of the header block
        self.skip = 0  # bytes still to skip (the rest of a message too large to keep)
        self.synced = False  # buf starts at a message boundary
        self.bol = MAYBE  # whether buf starts a line: NO, YES, or MAYBE (after a gap)
        self.unsure = False  # synced on a request line at a MAYBE: checked before use
        self.skipping = False  # inside a run of skipped bytes (one tcp_resync per run)
        self.fresh = True  # nothing delivered yet: a WebSocket handshake may come first
        self.ws = False  # WebSocket frames, after the handshake
        self.ws_drop = False  # dropping the rest of a fragmented WebSocket message
        self.frag: bytearray | None = None  # WebSocket fragments of the message in progress
        self.held: dict[int, DecodedPacket] | None = None  # out-of-order segments by seq
        self.held_bytes = 0
        self.held_since = 0  # packet time the oldest unfilled hole was first seen
        self.fin = False

    def size(self) -> int:
        """Bytes held: the unframed in-order bytes, out-of-order segments, WebSocket fragments."""
        buf = self.buf
        frag = self.frag
        n = self.held_bytes if buf is None else self.held_bytes + len(buf)
        return n if frag is None else n + len(frag)


class Framer:
    """Cuts the in-order bytes of :class:`Half` objects into messages, counting every byte."""

    __slots__ = ("_c", "_emit", "buffered", "max")

    def __init__(self, counters: dict[str, int], emit: Emit, max_message: int) -> None:
        self._c = counters
        self._emit = emit
        self.max = max_message
        self.buffered = 0  # bytes in every Half's buf and frag: part of tcp.buffered_bytes
        for k in COUNTERS:
            counters.setdefault(k, 0)

    def feed(self, h: Half, data: bytes, pkt: DecodedPacket, out: list[OutputPacket]) -> None:
        """Append ``data`` (the next in-order bytes of ``h``); emit what it completes."""
        # Hot path: a segment that starts at a message boundary and holds whole messages is
        # framed in place, never copied into a buffer.
        if h.skip:
            data = self._skip(h, data)
            if not data:
                return
        buf = h.buf
        if buf is None:
            if h.ws:
                pos = self._ws(h, data, 0, pkt, out)
            elif data[0] in (13, 10) and h.need < 0:
                if not data.strip(b"\r\n"):  # a keep-alive segment
                    self._c[KEEPALIVE] += len(data)
                    self._c["parse.drop.keepalive"] += 1
                    h.bol = YES
                    return
                pos = self._sip(h, data, pkt, out)
            else:
                pos = self._sip(h, data, pkt, out)
            if pos < len(data):
                h.buf = bytearray(data[pos:]) if pos else bytearray(data)
                self.buffered += len(data) - pos
        else:
            old = len(buf)
            buf += data
            pos = self._ws(h, buf, 0, pkt, out) if h.ws else self._sip(h, buf, pkt, out)
            if pos:
                del buf[:pos]
            self.buffered += len(buf) - old
            if not buf:
                h.buf = None
        if pos:
            if h.need >= 0:
                h.need -= pos
            if h.scan:
                h.scan = h.scan - pos if h.scan > pos else 0

    def _skip(self, h: Half, data: bytes) -> bytes:
        """Consume what is left of a message being skipped; return the bytes after it."""
        k = h.skip if h.skip < len(data) else len(data)
        h.skip -= k
        self._c[DROPPED] += k
        return data[k:] if k < len(data) else b""

    def _sip(self, h: Half, b: Buf, pkt: DecodedPacket, out: list[OutputPacket]) -> int:
        """Frame SIP messages from ``b[0]``; return where the unframed rest starts."""
        n = len(b)
        if h.fresh:
            pos = self._fresh(h, b, pkt, out)
            if pos >= 0:
                return pos
        c = self._c
        mx = self.max
        pos = 0
        framed = 0
        while pos < n:
            need = h.need
            if need < 0:
                if not h.synced:
                    pos = self._resync(h, b, pos)
                    if not h.synced:
                        break
                c0 = b[pos]
                if c0 in (13, 10):
                    m = _CRLFS.match(b, pos)
                    q = m.end() if m is not None else pos
                    c[KEEPALIVE] += q - pos
                    pos = q
                    if pos >= n:
                        break
                    c0 = b[pos]
                # The start line: "SIP/2.0 " or an upper-case method, then " SIP/2.0".
                eol = b.find(b"\n", pos, pos + _START_LINE_MAX)
                if eol < 0 and n - pos < _START_LINE_MAX:
                    break  # not all there yet
                crlf = b[eol - 1] == 13
                if eol < 0 or not (
                    (c0 == 83 and b.startswith(b"SIP/2.0 ", pos))
                    or (65 <= c0 <= 90 and b.endswith(b" SIP/2.0", pos, eol - crlf))
                ):
                    h.synced = False  # not SIP at a message boundary: resync
                    h.bol = YES
                    continue
                # The header block ends at the first empty line, with the start line's line
                # ends (one scan); a block that mixes CRLF and bare LF needs two more.
                s0 = h.scan if h.scan > eol else eol - crlf
                he = b.find(b"\r\n\r\n" if crlf else b"\n\n", s0)
                if he >= 0:
                    bs = he + 4 if crlf else he + 2
                else:
                    he, bs = _mixed_end(b, s0)
                    if he < 0:
                        if n - pos > mx:  # a header block that does not end within the bound
                            c["parse.drop.too_large"] += 1
                            c[DROPPED] += n - pos
                            h.synced = False
                            h.bol = NO
                            h.scan = 0
                            pos = n
                            break
                        h.scan = n - 3 if n - 3 > eol else eol
                        break
                h.scan = 0
                if h.unsure:  # right after a gap: its first bytes may be lost ("VITE sip:...")
                    h.unsure = False
                    if not _plausible(b, pos, he):
                        c[SKIPPED] += eol + 1 - pos
                        c["parse.drop.tcp_resync"] += 1
                        h.skipping = True
                        pos = eol + 1
                        h.synced = False
                        h.bol = YES
                        continue
                # Content-Length is nearly always written so, and last: found from the end.
                # (With two different ones the message is broken anyway; either delimits it.)
                i = b.rfind(b"\nContent-Length:", pos, he)
                if i >= 0:
                    e = b.find(b"\n", i + 16, he + 2)
                    v = b[i + 16 : e if e >= 0 else he]
                else:
                    m = _CONTENT_LENGTH.search(b, pos, he)
                    v = m[1] if m is not None else b"-1"
                try:
                    cl = int(v)
                except ValueError:
                    cl = -1
                if cl < 0:  # none, or not a number: the message cannot be delimited
                    c["parse.drop.tcp_framing"] += 1
                    c[DROPPED] += bs - pos
                    pos = bs
                    h.synced = False
                    h.bol = YES
                    continue
                need = bs + cl
                if need - pos > mx:
                    c["parse.drop.too_large"] += 1
                    if need > n:  # skip the rest as it comes, staying in step
                        c[DROPPED] += n - pos
                        h.skip = need - n
                        pos = n
                        break
                    c[DROPPED] += need - pos
                    pos = need
                    continue
            if need > n:
                h.need = need
                break
            framed += need - pos
            h.need = -1
            self._emit(pkt, b[pos:need] if type(b) is bytes else bytes(b[pos:need]), out)
            pos = need
        if framed:
            c[SIP_BYTES] += framed
        return pos

    def _fresh(self, h: Half, b: Buf, pkt: DecodedPacket, out: list[OutputPacket]) -> int:
        """The first bytes of a direction: -1 not a WebSocket handshake, else where it ends."""
        if b[0] in (71, 72):  # "G"ET or "H"TTP: maybe a WebSocket handshake
            e = handshake(b, 0)
            if e == 0:
                return 0  # not all there yet (h.fresh stays)
            if e > 0:
                h.fresh = False
                h.ws = True
                h.synced = True
                c = self._c
                c[WS_BYTES] += e
                c["tcp.websocket_handshakes"] += 1
                return self._ws(h, b, e, pkt, out)
        h.fresh = False
        return -1

    def _resync(self, h: Half, b: Buf, pos: int) -> int:
        """Skip to the next SIP start line (then ``h.synced``), or keep only the last line."""
        c = self._c
        if h.bol and b[pos] in (13, 10):  # keep-alives where a message could start
            m = _CRLFS.match(b, pos)
            if m is not None:
                c[KEEPALIVE] += m.end() - pos
                pos = m.end()
                if pos >= len(b):
                    return pos
        start, tail, bol, unsure = _find_start(b, pos, h.bol)
        if start >= 0:
            if start > pos:
                c[SKIPPED] += start - pos
                if not h.skipping:
                    c["parse.drop.tcp_resync"] += 1
            h.synced = True
            h.unsure = unsure
            h.skipping = False
            h.bol = YES
            return start
        if tail > pos:
            c[SKIPPED] += tail - pos
            if not h.skipping:
                c["parse.drop.tcp_resync"] += 1
                h.skipping = True
        h.bol = bol
        return tail

    def _ws(self, h: Half, b: Buf, pos: int, pkt: DecodedPacket, out: list[OutputPacket]) -> int:
        """WebSocket frames from ``b[pos]``; each whole message is one SIP message."""
        c = self._c
        n = len(b)
        mx = self.max
        while pos < n:
            f = next_frame(b, pos)
            if f is None:
                break
            op, fin, ps, pe, key = f
            ln = pe - ps
            bad = op > 10 or 2 < op < 8 or (op >= 8 and (ln > 125 or not fin))
            if not bad and op < 8:
                if op == 0:
                    bad = h.frag is None and not h.ws_drop
                elif h.frag is not None or h.ws_drop:  # a new message inside a fragmented one
                    self._ws_abandon(h)
                    c["parse.drop.ws_protocol"] += 1
            if bad or (op < 8 and (h.ws_drop or ln + _flen(h) > mx)):
                if bad:
                    c["parse.drop.ws_protocol"] += 1
                elif not h.ws_drop:
                    c["parse.drop.too_large"] += 1
                self._ws_abandon(h)
                h.ws_drop = not fin and op < 8
                c[WS_BYTES] += ps - pos
                c["tcp.websocket_frames"] += 1
                if pe > n:
                    c[DROPPED] += n - ps
                    h.skip = pe - n
                    return n
                c[DROPPED] += ln
                pos = pe
                continue
            if pe > n:
                break  # bounded: ln <= the message bound, or a control frame
            c["tcp.websocket_frames"] += 1
            c[WS_BYTES] += ps - pos
            pos = pe
            if op >= 8:  # close, ping, pong
                c[WS_BYTES] += ln
                continue
            payload = unmask(key, b[ps:pe])
            frag = h.frag
            if not fin:
                if frag is None:
                    h.frag = bytearray(payload)
                else:
                    frag += payload
                self.buffered += len(payload)
                continue
            if frag is not None:
                self.buffered -= len(frag)
                frag += payload
                payload = bytes(frag)
                h.frag = None
            c[SIP_BYTES] += len(payload)
            if payload:
                self._emit(pkt, payload, out)
        return pos

    def _ws_abandon(self, h: Half) -> None:
        """Drop the fragments of a WebSocket message in progress."""
        if h.frag is not None:
            self._c[DROPPED] += len(h.frag)
            self.buffered -= len(h.frag)
            h.frag = None
        h.ws_drop = False

    def abandon(self, h: Half) -> bool:
        """Drop the unframed bytes of ``h`` (a gap, the flow's end); True if a message was cut."""
        c = self._c
        cut = False
        buf = h.buf
        if buf is not None:
            if h.synced and (h.need >= 0 or buf.strip(b"\r\n")):
                c[DROPPED] += len(buf)
                cut = True
            else:
                c[SKIPPED] += len(buf)
            self.buffered -= len(buf)
            h.buf = None
        if h.frag is not None:
            cut = True
        self._ws_abandon(h)
        h.need = -1
        h.scan = 0
        h.skip = 0
        return cut


def _flen(h: Half) -> int:
    return len(h.frag) if h.frag is not None else 0


def _mixed_end(b: Buf, s: int) -> tuple[int, int]:
    """The span of the first ``\\r?\\n\\r?\\n`` from ``s``, or (-1, -1)."""
    # Two finds, not that regex: it tries every byte, five times slower on a partial header.
    i = b.find(b"\n\n", s)
    j = b.find(b"\n\r\n", s)
    if j >= 0 and (i < 0 or j < i):
        i, e = j, j + 3
    elif i >= 0:
        e = i + 2
    else:
        return -1, -1
    return (i - 1, e) if i > s and b[i - 1] == 13 else (i, e)


def _plausible(b: Buf, pos: int, he: int) -> bool:
    """A request line found where a line only *may* start: a known method, and its CSeq's."""
    sp = b.find(b" ", pos, he)
    method = bytes(b[pos:sp])
    if sp < 0 or method.decode("latin-1") not in METHODS:
        return False
    m = _CSEQ.search(b, pos, he)
    return m is not None and m[1] == method


def _find_start(b: Buf, pos: int, bol: int) -> tuple[int, int, int, bool]:
    """The next SIP start line: (its index, -1, YES, unsure), or (-1, tail, bol, False).

    With nothing found, the partial last line (``tail`` on) is kept, as it may begin a start
    line, unless it is already too long to be one; ``bol`` says whether the kept bytes (or the
    next ones) begin a line. ``unsure``: a request line at ``pos`` where ``bol`` was MAYBE.
    """
    n = len(b)
    i = b.find(b"SIP/2.0", pos)
    while i >= 0:
        e = i + 7
        if e >= n:
            break
        nx = b[e]
        if nx == 32:  # "SIP/2.0 " at a line start: a status line
            at_bol = (i > pos and b[i - 1] == 10) or (i == pos and bol != NO)
            if at_bol and n - i > 11 and b[i + 8 : i + 11].isdigit():
                return i, -1, YES, False
        elif nx in (13, 10) and i > pos and b[i - 1] == 32:  # the end of a request line
            j = b.rfind(b"\n", pos, i)
            ls = j + 1 if j >= 0 else (pos if bol != NO else -1)
            if ls >= 0 and looks_like_sip(b, ls):  # type: ignore[arg-type]
                return ls, -1, YES, ls == pos and bol == MAYBE
        i = b.find(b"SIP/2.0", e)
    j = b.rfind(b"\n", pos)
    if j >= 0:
        tail, bol = j + 1, YES
    else:
        tail = pos
    if n - tail >= _START_LINE_MAX:
        return -1, n, NO, False
    return -1, tail, bol, False
