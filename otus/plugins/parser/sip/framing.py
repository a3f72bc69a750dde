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
from otus.plugins.parser.sip.message import looks_like_sip
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
_HDR_END: Final = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH: Final = re.compile(rb"\n(?:content-length|l)[ \t]*:([^\n]*)", re.I)
_START_LINE_MAX: Final = 2048  # as looks_like_sip: a longer first line is not a start line
_EMPTY: Final = b""


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
        "ws",
        "ws_drop",
    )

    def __init__(self) -> None:
        self.nxt = -1  # sequence number of the next in-order byte; -1 before any segment
        self.isn = -1  # initial sequence number when the SYN was seen
        self.buf: Buf = _EMPTY  # in-order bytes not yet framed (a bytearray once it grows)
        self.need = -1  # end of the message in progress within buf, once its header is read
        self.scan = 0  # where to resume looking for the end of the header block
        self.skip = 0  # bytes still to skip (the rest of a message too large to keep)
        self.synced = False  # buf starts at a message boundary
        self.bol = True  # buf may start at a line start (a resync may match there)
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
        frag = self.frag
        return len(self.buf) + self.held_bytes + (len(frag) if frag is not None else 0)


class Framer:
    """Cuts the in-order bytes of :class:`Half` objects into messages, counting every byte."""

    __slots__ = ("_c", "_emit", "max")

    def __init__(self, counters: dict[str, int], emit: Emit, max_message: int) -> None:
        self._c = counters
        self._emit = emit
        self.max = max_message
        for k in COUNTERS:
            counters.setdefault(k, 0)

    def feed(self, h: Half, data: bytes, pkt: DecodedPacket, out: list[OutputPacket]) -> None:
        """Append ``data`` (the next in-order bytes of ``h``); emit what it completes."""
        c = self._c
        if h.skip:
            k = h.skip if h.skip < len(data) else len(data)
            h.skip -= k
            c[DROPPED] += k
            if k == len(data):
                return
            data = data[k:]
        buf = h.buf
        b: Buf
        if buf:
            buf += data  # type: ignore[operator] # a non-empty buf is always a bytearray
            b = buf
        else:
            if data[0] in (13, 10) and h.synced and h.need < 0 and not data.strip(b"\r\n"):
                c[KEEPALIVE] += len(data)  # a keep-alive segment (the common case, fast)
                c["parse.drop.keepalive"] += 1
                return
            b = data
        pos = self._ws(h, b, 0, pkt, out) if h.ws else self._sip(h, b, pkt, out)
        n = len(b)
        if pos >= n:
            h.buf = _EMPTY
        elif b is data:
            h.buf = bytearray(data[pos:]) if pos else bytearray(data)
        else:
            del buf[:pos]  # type: ignore[union-attr]
        if pos:
            if h.need >= 0:
                h.need -= pos
            h.scan = h.scan - pos if h.scan > pos else 0

    def _sip(self, h: Half, b: Buf, pkt: DecodedPacket, out: list[OutputPacket]) -> int:
        """Frame SIP messages from ``b[0]``; return where the unframed rest starts."""
        c = self._c
        n = len(b)
        pos = 0
        mx = self.max
        if h.fresh:
            if b[0] in (71, 72):  # "G"ET or "H"TTP: maybe a WebSocket handshake
                e = handshake(b, 0)
                if e == 0:
                    return 0
                if e > 0:
                    h.fresh = False
                    h.ws = True
                    h.synced = True
                    c[WS_BYTES] += e
                    c["tcp.websocket_handshakes"] += 1
                    return self._ws(h, b, e, pkt, out)
            h.fresh = False
        while pos < n:
            need = h.need
            if need < 0:
                if not h.synced:
                    pos = self._resync(h, b, pos)
                    if not h.synced:
                        return pos
                if b[pos] in (13, 10):
                    m = _CRLFS.match(b, pos)
                    q = m.end() if m is not None else pos
                    c[KEEPALIVE] += q - pos
                    pos = q
                    if pos >= n:
                        break
                st = _start(b, pos, n)
                if st <= 0:
                    if st == 0:
                        break  # the start line is not all there yet
                    h.synced = False  # not SIP at a message boundary
                    h.bol = True
                    continue
                he, bs = _header_end(b, h.scan if h.scan > pos else pos)
                if he < 0:
                    if n - pos > mx:  # a header block that does not end within the bound
                        c["parse.drop.too_large"] += 1
                        c[DROPPED] += n - pos
                        h.synced = h.bol = False
                        h.scan = 0
                        return n
                    h.scan = n - 3 if n - 3 > pos else pos
                    break
                h.scan = 0
                cl = _content_length(b, pos, he)
                if cl < 0:
                    c["parse.drop.tcp_framing"] += 1
                    c[DROPPED] += bs - pos
                    pos = bs
                    h.synced = False
                    h.bol = True
                    continue
                need = bs + cl
                if need - pos > mx:
                    c["parse.drop.too_large"] += 1
                    if need > n:  # skip the rest as it comes, staying in step
                        c[DROPPED] += n - pos
                        h.skip = need - n
                        return n
                    c[DROPPED] += need - pos
                    pos = need
                    continue
            if need > n:
                h.need = need
                break
            c[SIP_BYTES] += need - pos
            h.need = -1
            self._emit(pkt, b[pos:need] if type(b) is bytes else bytes(b[pos:need]), out)
            pos = need
        return pos

    def _resync(self, h: Half, b: Buf, pos: int) -> int:
        """Skip to the next SIP start line (then ``h.synced``), or keep only the last line."""
        c = self._c
        start, tail = _find_start(b, pos, h.bol)
        if start >= 0:
            if start > pos:
                c[SKIPPED] += start - pos
                if not h.skipping:
                    c["parse.drop.tcp_resync"] += 1
            h.synced = True
            h.skipping = False
            h.bol = True
            return start
        if tail > pos:
            c[SKIPPED] += tail - pos
            if not h.skipping:
                c["parse.drop.tcp_resync"] += 1
                h.skipping = True
            h.bol = tail < len(b)  # kept from a line start; nothing kept: mid-line
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
                continue
            if frag is not None:
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
            h.frag = None
        h.ws_drop = False

    def abandon(self, h: Half) -> bool:
        """Drop the unframed bytes of ``h`` (a gap, the flow's end); True if a message was cut."""
        c = self._c
        cut = False
        n = len(h.buf)
        if n:
            if h.synced and (h.need >= 0 or h.buf.strip(b"\r\n")):
                c[DROPPED] += n
                cut = True
            else:
                c[SKIPPED] += n
            h.buf = _EMPTY
        if h.frag is not None:
            cut = True
        self._ws_abandon(h)
        h.need = -1
        h.scan = 0
        h.skip = 0
        return cut


def _flen(h: Half) -> int:
    return len(h.frag) if h.frag is not None else 0


def _start(b: Buf, pos: int, n: int) -> int:
    """At a message boundary: 1 a SIP start line, -1 not one, 0 not all there yet."""
    if b.startswith(b"SIP/2.0 ", pos):
        return 1
    c = b[pos]
    if not 65 <= c <= 90:  # methods are upper-case tokens
        return -1
    eol = b.find(b"\n", pos, pos + _START_LINE_MAX)
    if eol < 0:
        return 0 if n - pos < _START_LINE_MAX else -1
    return 1 if looks_like_sip(b, pos) else -1  # type: ignore[arg-type]


def _header_end(b: Buf, start: int) -> tuple[int, int]:
    """(end of the header block, start of the body) from ``start``, or (-1, -1)."""
    j = b.find(b"\r\n\r\n", start)
    if j >= 0 and b.find(b"\n\n", start, j) < 0:
        return j, j + 4
    m = _HDR_END.search(b, start)
    if m is None:
        return -1, -1
    return m.start(), m.end()


def _content_length(b: Buf, pos: int, hend: int) -> int:
    """The first Content-Length (or ``l``) of the header block; -1 absent or not a number."""
    m = _CONTENT_LENGTH.search(b, pos, hend)
    if m is None:
        return -1
    try:
        v = int(m[1])
    except ValueError:
        return -1
    return v if v >= 0 else -1


def _find_start(b: Buf, pos: int, bol: bool) -> tuple[int, int]:
    """(index of the next SIP start line, -1), or (-1, where the partial last line starts)."""
    n = len(b)
    i = b.find(b"SIP/2.0", pos)
    while i >= 0:
        e = i + 7
        if e >= n:
            break
        nx = b[e]
        if nx == 32:  # "SIP/2.0 " at a line start: a status line
            if (i > pos and b[i - 1] == 10) or (i == pos and bol):
                if b.startswith(b"SIP/2.0 ", i) and n - i > 11 and b[i + 8 : i + 11].isdigit():
                    return i, -1
        elif (nx == 13 or nx == 10) and i > pos and b[i - 1] == 32:  # the end of a request line
            j = b.rfind(b"\n", pos, i)
            ls = j + 1 if j >= 0 else (pos if bol else -1)
            if ls >= 0 and looks_like_sip(b, ls):  # type: ignore[arg-type]
                return ls, -1
        i = b.find(b"SIP/2.0", e)
    j = b.rfind(b"\n", pos)
    tail = j + 1 if j >= 0 else pos
    if n - tail >= _START_LINE_MAX:
        tail = n
    return -1, tail
