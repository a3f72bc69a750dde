"""A summary of an SDP body (RFC 8866): where the media goes and which codecs are offered.

Shape of the ``sdp`` object of a SIP record::

    {
      "connection": "192.0.2.10" | null,       # session-level c= address (TTL/count kept)
      "media": [                               # one per m= line, in order (at most MAX_MEDIA)
        {
          "type": "audio",                     # m= media type
          "port": 49170 | null,                # m= port (a "/count" suffix is dropped)
          "proto": "RTP/AVP",                  # m= transport protocol
          "payloads": [0, 8, 101],             # the numeric fmt tokens (RTP payload types)
          "codecs": ["PCMU/8000", "PCMA/8000", "telephone-event/8000"],
                                               # aligned with payloads: a=rtpmap encoding, else
                                               # the RFC 3551 static name, else null
          "connection": "192.0.2.11" | null    # media-level c= address
        }
      ]
    }

Non-numeric fmt tokens (``t38``, ``*`` of MSRP/BFCP) are not listed in ``payloads``; ``proto``
tells what the stream is. A body that has no ``m=`` line gives ``media: []``.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["MAX_MEDIA", "STATIC_PAYLOADS", "parse_sdp"]

MAX_MEDIA: Final = 32  # bounds the record of a hostile body with thousands of m= lines

# RFC 3551 §6 static payload types, keyed by the fmt token as written in m= lines.
STATIC_PAYLOADS: Final[dict[str, str]] = {
    "0": "PCMU/8000",
    "3": "GSM/8000",
    "4": "G723/8000",
    "5": "DVI4/8000",
    "6": "DVI4/16000",
    "7": "LPC/8000",
    "8": "PCMA/8000",
    "9": "G722/8000",
    "10": "L16/44100/2",
    "11": "L16/44100",
    "12": "QCELP/8000",
    "13": "CN/8000",
    "14": "MPA/90000",
    "15": "G728/8000",
    "16": "DVI4/11025",
    "17": "DVI4/22050",
    "18": "G729/8000",
    "25": "CelB/90000",
    "26": "JPEG/90000",
    "28": "nv/90000",
    "31": "H261/90000",
    "32": "MPV/90000",
    "33": "MP2T/90000",
    "34": "H263/90000",
}

# fmt token -> payload type: a dict lookup costs a third of int() on a str.
_pt_int: Final = {str(i): i for i in range(128)}.__getitem__
_static_get: Final = STATIC_PAYLOADS.get
_NEEDLES: Final = {str(i): f"a=rtpmap:{i} " for i in range(128)}
_AGREE: Final = {pt: f"a=rtpmap:{pt} {name}\r" for pt, name in STATIC_PAYLOADS.items()}


def parse_sdp(body: str) -> dict[str, Any]:
    """Summarise an SDP body; never raises (unreadable lines are skipped)."""
    sections = body.split("\nm=")
    media = []
    for sec in sections[1 : MAX_MEDIA + 1]:
        mline, _, attrs = sec.partition("\n")
        f = mline.split()
        if len(f) < 3:
            continue
        fmts = f[3:]
        if fmts:
            try:
                payloads = list(map(_pt_int, fmts))
                codecs = list(map(_static_get, fmts))
            except KeyError:
                payloads, codecs, fmts = _payloads_slow(fmts)
            if "a=rtpmap:" in attrs:
                # An rtpmap names the encoding, of a static type too (G729a for 18); the usual
                # rtpmap that agrees with the static name is one substring test.
                for i, pt in enumerate(fmts):
                    c = codecs[i]
                    if c is None or _AGREE[pt] not in attrs:
                        codecs[i] = _rtpmap(attrs, pt) or c
        else:
            payloads, codecs = [], []
        try:
            port: int | None = int(f[1])
            if port < 0 or port > 65535:  # type: ignore[operator]
                port = None
        except ValueError:
            port = _port(f[1])
        media.append(
            {
                "type": f[0],
                "port": port,
                "proto": f[2],
                "payloads": payloads,
                "codecs": codecs,
                "connection": _connection(attrs),
            }
        )
    sess = sections[0]
    return {"connection": _connection(sess), "media": media}


def _payloads_slow(fmts: list[str]) -> tuple[list[int], list[str | None], list[str]]:
    """fmt tokens that are not all 0-127: keep the numeric ones (payload types are 7 bits)."""
    nums = [x for x in fmts if x.isdecimal() and len(x) < 10 and int(x) < 128]
    return [int(x) for x in nums], [STATIC_PAYLOADS.get(str(int(x))) for x in nums], nums


def _rtpmap(attrs: str, pt: str) -> str | None:
    """The encoding of ``a=rtpmap:<pt> <encoding>`` in a media section, or None."""
    _, found, rest = attrs.partition(_NEEDLES.get(pt) or f"a=rtpmap:{pt} ")
    if found:
        f = rest.split(None, 1)
        return f[0] if f else None
    m = re.search(r"a=rtpmap:[ \t]*0*" + str(int(pt)) + r"[ \t]+(\S+)", attrs)
    return m[1] if m else None


def _connection(section: str) -> str | None:
    """The address of the section's first c= line (``c=IN IP4 192.0.2.1`` -> ``192.0.2.1``)."""
    # A line start only: "c=" inside a line ("a=ssrc:1 cname:abc=x") is no connection line.
    # (Testing for any "c=" sent SDP with such attributes to a line-by-line walk: 8 us a body.)
    if section[:2] == "c=":
        i = 2
    else:
        i = section.find("\nc=")
        if i < 0:
            return None
        i += 3
    e = section.find("\n", i)
    f = (section[i:] if e < 0 else section[i:e]).split()
    return f[2] if len(f) >= 3 else None


def _port(text: str) -> int | None:
    """``49170/2`` -> 49170; anything else that is not a port -> None."""
    head = text.partition("/")[0]
    if head.isdecimal() and len(head) <= 5:
        n = int(head)
        return n if n <= 65535 else None
    return None
