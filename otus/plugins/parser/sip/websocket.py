"""SIP over WebSocket (RFC 7118): the HTTP Upgrade handshake and the frames that follow it.

A TCP direction switches to WebSocket framing when it starts with a handshake for the ``sip``
subprotocol: the client's ``GET`` with ``Upgrade: websocket`` and ``Sec-WebSocket-Protocol``
listing ``sip``, or the server's ``101`` answer selecting it. Each WebSocket message (one text
or binary frame, or a fragmented one with its continuation frames; client frames are masked)
carries one SIP message (RFC 7118 §5.2), parsed without Content-Length framing.

Not handled (counted as ``parse.drop.ws_protocol``): compressed frames (``permessage-deflate``
sets RSV1), reserved opcodes, a continuation without a first fragment, oversized control frames.
A capture that starts after the handshake sees the frames as non-SIP bytes and resynchronises
on SIP start lines (server-to-client frames are not masked, so their messages still parse).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "HANDSHAKE_MAX",
    "Frame",
    "handshake",
    "is_upgrade_request",
    "next_frame",
    "unmask",
]

HANDSHAKE_MAX: Final = 8192  # an HTTP Upgrade request or answer longer than this is not one
_HDR_END: Final = re.compile(rb"\r?\n\r?\n")
_PROTOCOL: Final = re.compile(rb"\nsec-websocket-protocol[ \t]*:([^\r\n]*)")
_UPGRADE: Final = re.compile(rb"\nupgrade[ \t]*:[ \t]*websocket")
_WS_SIP_HINT: Final = re.compile(rb"sec-websocket-protocol[ \t]*:[^\r\n]*\bsip\b", re.I)
_PREFIXES: Final = (b"GET ", b"HTTP/1.1 101")

# (opcode, fin, payload start, payload end, masking key or b"") of one frame.
Frame = tuple[int, bool, int, int, bytes]


def is_upgrade_request(p: bytes) -> bool:
    """Cheap test for ``can_handle``: a GET asking for a WebSocket with the sip subprotocol."""
    return p[:4] == b"GET " and _WS_SIP_HINT.search(p, 0, HANDSHAKE_MAX) is not None


def handshake(b: bytes | bytearray, pos: int) -> int:
    """At ``b[pos]``, an HTTP request or answer: its end if it upgrades to WebSocket/sip.

    Returns the index after the header block, -1 when it is not a WebSocket handshake for SIP,
    0 when more bytes are needed to tell.
    """
    rest = len(b) - pos
    for prefix in _PREFIXES:
        k = min(rest, len(prefix))
        if b[pos : pos + k] == prefix[:k]:
            if k < len(prefix):
                return 0
            break
    else:
        return -1
    m = _HDR_END.search(b, pos, pos + HANDSHAKE_MAX)
    if m is None:
        return 0 if len(b) - pos < HANDSHAKE_MAX else -1
    head = bytes(b[pos : m.start()]).lower()
    if _UPGRADE.search(head) is None:
        return -1
    proto = _PROTOCOL.search(head)
    if proto is None or b"sip" not in [t.strip() for t in proto[1].split(b",")]:
        return -1
    return m.end()


def next_frame(b: bytes | bytearray, pos: int) -> Frame | None:
    """The frame header at ``b[pos]``, or None when the header is not all there yet."""
    n = len(b) - pos
    if n < 2:
        return None
    b0 = b[pos]
    b1 = b[pos + 1]
    ln = b1 & 0x7F
    h = pos + 2
    if ln == 126:
        if n < 4:
            return None
        ln = (b[h] << 8) | b[h + 1]
        h += 2
    elif ln == 127:
        if n < 10:
            return None
        ln = int.from_bytes(b[h : h + 8], "big") & 0x7FFF_FFFF_FFFF_FFFF
        h += 8
    key = b""
    if b1 & 0x80:
        if len(b) < h + 4:
            return None
        key = bytes(b[h : h + 4])
        h += 4
    # RSV bits (extensions such as permessage-deflate) go with the opcode: the caller refuses
    # any frame whose "opcode" has them set.
    return (b0 & 0x7F, bool(b0 & 0x80), h, h + ln, key)


def unmask(key: bytes, data: bytes | bytearray) -> bytes:
    """XOR ``data`` with the 4-byte masking key (RFC 6455 §5.3), as one big-integer XOR."""
    n = len(data)
    if not key or not n:
        return bytes(data)
    k = int.from_bytes((key * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ k).to_bytes(n, "little")
