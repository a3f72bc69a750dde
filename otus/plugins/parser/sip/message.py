"""Parse one SIP message (RFC 3261) into the ``sip`` object of an Otus record.

Shape of the object (every key always present; absent values are ``null``)::

    {
      "method": "INVITE" | null,             # null on responses
      "status_code": 200 | null,             # null on requests
      "reason": "OK" | null,                 # response reason phrase; null on requests
      "request_uri": "sip:bob@b.example" | null,
      "call_id": "a84b4c76e66710@pc33",
      "cseq": {"seq": 314159, "method": "INVITE"},
      "from": {"display": "Alice" | null, "uri": "sip:alice@a.example", "tag": "1928" | null},
      "to":   {"display": ..., "uri": ..., "tag": ...},
      "via": [{"transport": "UDP", "host": "pc33.a.example" | "2001:db8::1",  # no [] on IPv6
               "port": 5060 | null, "branch": "z9hG4bK.." | null,
               "received": "192.0.2.1" | null,
               "rport": 5060 | 0 | null}],    # 0: ";rport" without a value (a request for it)
      "contact": "<sip:alice@pc33.a.example>" | null,   # raw value of the first Contact
      "max_forwards": 70 | null,
      "user_agent": "softphone/1.0" | null,  # User-Agent, else Server
      "content_type": "application/sdp" | null,
      "content_length": 142 | null,          # null when the header is absent
      "p_asserted_identity": "<sip:+1555@a.example>" | null,   # raw, first occurrence
      "reason_header": "SIP ;cause=200 ;text=\"Call completed elsewhere\"" | null,
      "sdp": null | {...}                    # see otus.plugins.parser.sip.sdp
    }

Display names are unquoted and unescaped; URIs are returned as written. Header names are
case-insensitive and may use compact forms; folded (LWS continuation) lines and bare-LF line
ends are accepted. When a single-valued header repeats, the first occurrence wins; every Via is
kept, in message order, comma-joined ones split.

A message is **malformed** (``SipParseError("malformed")``) when its start line is not a SIP
request or response line, or a header Otus reads cannot be read (CSeq without a number and a
method, From/To without a URI, a Via without sent-protocol and host, a Content-Length that is
not a non-negative integer). It is **missing_header** when Call-ID, CSeq, From, To or Via is
absent or empty: the headers RFC 3261 §8.1.1 requires that identify a transaction and dialog
(Max-Forwards is also required of requests but often missing in the wild, so it is optional
here). It is **truncated** when Content-Length promises more body bytes than the datagram holds.

Text: ASCII input (nearly all SIP) is decoded once; anything else is decoded as UTF-8 with
replacement characters, so every string in the result is valid for JSON.
"""

from __future__ import annotations

import re
from typing import Any, Final

from otus.plugins.parser.sip.headers import (
    ADDRS,
    CSEQS,
    NAMES,
    NSLOTS,
    SMALL_INTS,
    VIAS,
    learn,
    parse_addr,
    parse_cseq,
    parse_vias,
)
from otus.plugins.parser.sip.sdp import parse_sdp

__all__ = [
    "METHODS",
    "SipParseError",
    "frame_end",
    "looks_like_sip",
    "parse_message",
]

# The methods counted by name (RFC 3261, 3262, 3265/6665, 3903, 6086, 3515, 3428, 3311).
METHODS: Final = frozenset(
    (
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "REGISTER",
        "OPTIONS",
        "PRACK",
        "SUBSCRIBE",
        "NOTIFY",
        "PUBLISH",
        "INFO",
        "REFER",
        "MESSAGE",
        "UPDATE",
    )
)

_TOKEN: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_HDR_END: Final = re.compile(rb"\r?\n\r?\n")
_STATUS_ONLY: Final = re.compile(rb"SIP/2\.0 [1-6][0-9][0-9]")
_FOLD: Final = re.compile(rb"\n[ \t]+")


class SipParseError(Exception):
    """A payload is not a usable SIP message; ``reason`` names the drop counter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_reparsing = False  # guards the single re-entry of parse_message after normalising its input


def parse_message(data: bytes, sdp: bool = True) -> dict[str, Any]:
    """Parse one whole SIP message; raise :class:`SipParseError` if it is not usable."""
    # Hot path. Each C-level call (a str method, int(), a dict build) costs ~1,000 instructions
    # on CPython 3.11, so the code counts them: one decode, one find, one split, a partition
    # and a dict subscript per header line; only the headers Otus reports go further, and
    # values that repeat across a dialog come from caches (see headers.py).
    # isascii() first: a failed ascii decode raises, and raising costs more than parsing a line.
    is_ascii = data.isascii()
    s = data.decode("ascii") if is_ascii else data.decode("utf-8", "replace")
    he = s.find("\r\n\r\n")
    if he <= 0:  # none, or CRLFs before the start line
        return _reparse(data, sdp)
    lines = s[:he].split("\r\n")
    if "\n" in "".join(lines):
        # A bare LF ends a line too (as tshark reads it): it would run two headers into one
        # value, and the header block may end at "\r\n\n" before the "\r\n\r\n" found.
        # (A join and a memchr: 130 ns a message, against 340 for counting the LFs.)
        return _reparse(data, sdp)

    # One dict subscript per header line; reversed so the first occurrence of a name wins.
    vals: list[str | None] = [None] * NSLOTS
    vias: list[str] = []
    names = NAMES
    while True:
        try:
            for line in lines[:0:-1]:
                name, _, value = line.partition(":")
                k = names[name]
                if k > 0:
                    vals[k] = value
                elif k:
                    vias.append(value)
            break
        except KeyError:
            if learn(lines):
                return _reparse(data, sdp)
            vias.clear()
    _, call_id, frm, to, cseq, contact, mf, ua, server, ctype, clen, pai, reason_h = vals

    try:
        start = lines[0]
        try:
            a, b, c = start.split(" ", 2)
        except ValueError:
            return _reparse(data, sdp)  # bare LF, no reason phrase, trailing blanks
        if a == "SIP/2.0":
            status: int | None = _CODES.get(b)  # 3 ASCII digits, 100-699
            if status is None:
                raise SipParseError("malformed")
            reason: str | None = c
            method = ruri = None
        elif c == "SIP/2.0" and (a in METHODS or _TOKEN.fullmatch(a) is not None) and b:
            method = a
            ruri = b
            status = reason = None
        else:
            return _reparse(data, sdp)  # bare LF, no reason phrase, trailing blanks

        if call_id is None or frm is None or to is None or cseq is None or not vias:
            raise SipParseError("missing_header")
        call_id = call_id.strip()
        if not call_id:
            raise SipParseError("missing_header")
        seq, cseq_method = _cseqs_get(cseq) or parse_cseq(cseq)
        if len(vias) == 1:  # the usual case: one cache probe, no call
            v = _vias_get(vias[0])
            via = [v.copy()] if v is not None else parse_vias(vias)
        else:
            vias.reverse()
            via = parse_vias(vias)
        f = _addrs_get(frm)
        f = parse_addr(frm) if f is None else f.copy()
        t = _addrs_get(to)
        t = parse_addr(to) if t is None else t.copy()

        # Body: Content-Length counts bytes; on a datagram more than that is discarded
        # (RFC 3261 §18.3) and less is a truncated message.
        bstart = he + 4
        if is_ascii:
            blen = len(s) - bstart
        else:
            blen = len(data) - data.find(b"\r\n\r\n") - 4
        if clen is None:
            length = None
        else:
            length = _ints_get(clen)
            if length is None:  # sipp pads the value with blanks: int() takes those
                length = int(clen)
                if "_" in clen or "+" in clen or not is_ascii:  # int() takes these too
                    length = _digits(clen)
            if length > blen:
                raise SipParseError("truncated")
            if length < 0:
                raise SipParseError("malformed")
        sdp_out = None
        if ctype is not None:
            ctype = ctype.strip()
            if blen and sdp:
                sdp_out = _body_sdp(s, data, bstart, blen, length, ctype, is_ascii)
        max_forwards = None if mf is None else _ints_get(mf)
        if max_forwards is None and mf is not None:
            try:
                max_forwards = _digits(mf)
            except ValueError:
                max_forwards = None
    except ValueError:  # a bad number, CSeq not "<seq> <method>", bad From/To/Via
        raise SipParseError("malformed") from None

    if ua is not None:
        ua = ua.strip()
    elif server is not None:
        ua = server.strip()
    return {
        "method": method,
        "status_code": status,
        "reason": reason,
        "request_uri": ruri,
        "call_id": call_id,
        "cseq": {"seq": seq, "method": cseq_method},
        "from": f,
        "to": t,
        "via": via,
        "contact": None if contact is None else contact.strip(),
        "max_forwards": max_forwards,
        "user_agent": ua,
        "content_type": ctype,
        "content_length": length,
        "p_asserted_identity": None if pai is None else pai.strip(),
        "reason_header": None if reason_h is None else reason_h.strip(),
        "sdp": sdp_out,
    }


_CODES: Final = {str(i): i for i in range(100, 700)}


def _digits(text: str) -> int:
    """1*DIGIT with optional blanks around (``int()`` also takes ``+1``, ``1_0``, other digits)."""
    t = text.strip(" \t")
    if not (t.isascii() and t.isdigit()):
        raise ValueError(text)
    return int(t)


_addrs_get: Final = ADDRS.get
_vias_get: Final = VIAS.get
_cseqs_get: Final = CSEQS.get
_ints_get: Final = SMALL_INTS.get


def _body_sdp(
    s: str, data: bytes, bstart: int, blen: int, length: int | None, ctype: str, is_ascii: bool
) -> dict[str, Any] | None:
    """The SDP summary of the body when Content-Type says it is SDP (alone or in a multipart)."""
    if length is not None and length < blen:
        if is_ascii:
            body = s[bstart : bstart + length]
        else:
            b0 = len(data) - blen
            body = data[b0 : b0 + length].decode("utf-8", "replace")
    else:
        body = s[bstart:]
    if not body:
        return None
    if ctype == "application/sdp" or ctype[:15].lower() == "application/sdp":
        return parse_sdp(body)
    if ctype[:10].lower() == "multipart/":
        return _multipart_sdp(ctype, body)
    return None


def _normalize(data: bytes) -> bytes:
    """Rewrite the header block with CRLF line ends, no folding and a final empty line."""
    data = data.lstrip(b"\r\n")  # CRLFs before the start line are ignored (RFC 3261 §7.5)
    m = _HDR_END.search(data)
    if m is None:  # no empty line: all headers, no body
        head, body = data.rstrip(b"\r\n"), b""
    else:
        head, body = data[: m.start()], data[m.end() :]
    head = _FOLD.sub(b" ", head.replace(b"\r\n", b"\n"))
    start, nl, rest = head.partition(b"\n")
    start = start.rstrip(b" \t")
    if _STATUS_ONLY.fullmatch(start):
        start += b" "  # "SIP/2.0 200": an empty reason phrase without its separator
    return (start + nl + rest).replace(b"\n", b"\r\n") + b"\r\n\r\n" + body


def _reparse(data: bytes, sdp: bool) -> dict[str, Any]:
    """Parse again after :func:`_normalize`; at most once, so a bad message cannot loop."""
    global _reparsing  # noqa: PLW0603 - one flag is cheaper than a depth argument on every call
    fixed = _normalize(data)
    if _reparsing or fixed == data:
        raise SipParseError("malformed")
    _reparsing = True
    try:
        return parse_message(fixed, sdp)
    finally:
        _reparsing = False


_BOUNDARY: Final = re.compile(r';\s*boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', re.I)


def _multipart_sdp(ctype: str, body: str) -> dict[str, Any] | None:
    """The SDP part of a multipart body (SIP-I/SIP-T carry SDP next to ISUP), or None."""
    m = _BOUNDARY.search(ctype)
    if m is None:
        return None
    delim = "--" + (m[1] or m[2])
    for part in body.split(delim)[1:]:
        head, sep, content = part.partition("\r\n\r\n")
        if not sep:
            head, sep, content = part.partition("\n\n")
        for line in head.splitlines():
            name, colon, value = line.partition(":")
            if (
                colon
                and name.strip().lower() in ("content-type", "c")
                and value.strip().lower().startswith("application/sdp")
            ):
                return parse_sdp(content)
    return None


def frame_end(buf: bytes, start: int = 0) -> int:
    """End of the message at ``buf[start]`` (-1: incomplete); raise if it has no Content-Length."""
    # Stream transports frame by Content-Length (RFC 3261 §18.3): without one the message
    # cannot be delimited ("tcp_framing"); a value that is not a number is "malformed".
    j = buf.find(b"\r\n\r\n", start)
    if j >= 0 and buf.find(b"\n\n", start, j) < 0:
        hend, bstart = j, j + 4
    else:
        m = _HDR_END.search(buf, start)
        if m is None:
            return -1
        hend, bstart = m.start(), m.end()
    length = None
    for line in buf[start:hend].split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name.rstrip().lower() in (b"content-length", b"l"):
            try:
                length = int(value)
            except ValueError:
                raise SipParseError("malformed") from None
            if length < 0:
                raise SipParseError("malformed")
            break
    if length is None:
        raise SipParseError("tcp_framing")
    end = bstart + length
    return end if end <= len(buf) else -1


def looks_like_sip(p: bytes, pos: int = 0) -> bool:
    """Cheap test: does ``p[pos:]`` start like a SIP request or status line?"""
    if len(p) <= pos + 8:
        return False
    c = p[pos]
    if c == 83 and p.startswith(b"SIP/2.0 ", pos):  # "S"
        return True
    if not 65 <= c <= 90:  # methods are upper-case tokens; RTP and TLS never start A-Z here
        return False
    eol = p.find(b"\n", pos, pos + 2048)
    if eol < 0:
        return False
    return p[pos:eol].rstrip(b"\r").endswith(b" SIP/2.0")
