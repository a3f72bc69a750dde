"""SIP header names (full and compact forms) and the parsers of the header values Otus reports.

Header names are matched through :data:`NAMES`, a dict from the name *exactly as written* (case
and trailing blanks included) to a slot number; spellings not seen before are learned once by
:func:`learn` (lower-cased, compact forms expanded), so the hot path does one dict subscript per
header line and never calls ``lower()`` on names.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = [
    "ADDRS",
    "COMPACT",
    "CSEQS",
    "NAMES",
    "NSLOTS",
    "SLOT_CALL_ID",
    "SLOT_CONTACT",
    "SLOT_CONTENT_LENGTH",
    "SLOT_CONTENT_TYPE",
    "SLOT_CSEQ",
    "SLOT_FROM",
    "SLOT_JUNK",
    "SLOT_MAX_FORWARDS",
    "SLOT_PAI",
    "SLOT_REASON",
    "SLOT_SERVER",
    "SLOT_TO",
    "SLOT_USER_AGENT",
    "SLOT_VIA",
    "SMALL_INTS",
    "VIAS",
    "HeaderError",
    "learn",
    "parse_addr",
    "parse_cseq",
    "parse_params",
    "parse_vias",
]


class HeaderError(ValueError):
    """A header value Otus must understand is malformed (the message is dropped)."""


# Compact forms: RFC 3261 §7.3.3 (i f t v m l c k s e), RFC 3265/6665 (o u), RFC 3515 (r),
# RFC 3892 (b), RFC 4028 (x), RFC 4474 (y n), RFC 3841 (a j d).
COMPACT: Final[dict[str, str]] = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "v": "via",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "n": "identity-info",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

# Slots of the per-message value list; SLOT_VIA is negative because Via values are collected
# in a list (every occurrence), the others keep the first occurrence.
SLOT_VIA: Final = -1
SLOT_JUNK: Final = 0  # headers Otus does not report
SLOT_CALL_ID: Final = 1
SLOT_FROM: Final = 2
SLOT_TO: Final = 3
SLOT_CSEQ: Final = 4
SLOT_CONTACT: Final = 5
SLOT_MAX_FORWARDS: Final = 6
SLOT_USER_AGENT: Final = 7
SLOT_SERVER: Final = 8
SLOT_CONTENT_TYPE: Final = 9
SLOT_CONTENT_LENGTH: Final = 10
SLOT_PAI: Final = 11
SLOT_REASON: Final = 12
NSLOTS: Final = 13

_SLOT_OF: Final[dict[str, int]] = {
    "via": SLOT_VIA,
    "call-id": SLOT_CALL_ID,
    "from": SLOT_FROM,
    "to": SLOT_TO,
    "cseq": SLOT_CSEQ,
    "contact": SLOT_CONTACT,
    "max-forwards": SLOT_MAX_FORWARDS,
    "user-agent": SLOT_USER_AGENT,
    "server": SLOT_SERVER,
    "content-type": SLOT_CONTENT_TYPE,
    "content-length": SLOT_CONTENT_LENGTH,
    "p-asserted-identity": SLOT_PAI,
    "reason": SLOT_REASON,
}

# Spellings seen on the wire, seeded with the usual ones so a fresh process is fast at once.
_SEED: Final = (
    "Via",
    "Call-ID",
    "Call-Id",
    "From",
    "To",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "User-Agent",
    "Server",
    "Content-Type",
    "Content-Length",
    "P-Asserted-Identity",
    "Reason",
    "Allow",
    "Supported",
    "Require",
    "Expires",
    "Route",
    "Record-Route",
    "Accept",
    "Subject",
    "Date",
    "Allow-Events",
    "Event",
    "Session-Expires",
    "Min-SE",
    "Proxy-Authorization",
    "Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Organization",
    "Privacy",
    "Remote-Party-ID",
    "P-Preferred-Identity",
    "Accept-Language",
    "Accept-Encoding",
    "Warning",
    "Unsupported",
    "Refer-To",
    "Referred-By",
    "Replaces",
    "RSeq",
    "RAck",
    "Timestamp",
    "Diversion",
    "History-Info",
    "P-Charging-Vector",
    "P-Access-Network-Info",
    "P-Called-Party-ID",
    "X-Serialnumber",
    "Path",
    "Service-Route",
    "Min-Expires",
    "Retry-After",
    "Subscription-State",
    "Content-Disposition",
    "Content-Encoding",
    "MIME-Version",
)
_MAX_NAMES: Final = 4096  # bound on learned spellings; hostile traffic only causes re-learning

NAMES: dict[str, int] = {}


def _reset() -> None:
    """Reset :data:`NAMES` to the seed spellings (at import, and when it reaches its bound)."""
    NAMES.clear()
    for name in _SEED:
        for spelling in (name, name.lower(), name.upper()):
            NAMES[spelling] = _slot(spelling)
    for short in COMPACT:
        NAMES[short] = NAMES[short.upper()] = _slot(short)


def _slot(name: str) -> int:
    """The slot of a header name in any case, with or without blanks before the colon."""
    key = name.rstrip(" \t").lower()
    return _SLOT_OF.get(COMPACT.get(key, key), SLOT_JUNK)


def learn(lines: list[str]) -> bool:
    """Teach :data:`NAMES` every header name of ``lines[1:]``; True if a line is folded."""
    new: dict[str, int] = {}
    for line in lines[1:]:
        name = line.partition(":")[0]
        if name in NAMES or name in new:
            continue
        if name[:1] in (" ", "\t"):
            return True  # an LWS continuation line: the caller unfolds and parses again
        # A line with no colon becomes a junk "name" too: it is ignored like an unknown header.
        new[name] = _slot(name)
    # All of this message's names must be known when we return (the caller retries its loop),
    # so the bound is enforced before adding them, not while.
    if len(NAMES) + len(new) > _MAX_NAMES:
        _reset()
    NAMES.update(new)
    return False


_reset()


def parse_params(params: str) -> dict[str, str]:
    """``;a=1; B = "x;y" ;c`` -> ``{"a": "1", "b": "x;y", "c": ""}`` (names lower-cased)."""
    out: dict[str, str] = {}
    for part in _PARAM_RE.findall(params):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name and name not in out:
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = _unquote(value[1:-1])
            out[name] = value
    return out


# One parameter: anything up to the next ';' that is not inside a quoted string.
_PARAM_RE: Final = re.compile(r'(?:[^;"]|"(?:[^"\\]|\\.)*"?)+')
_UNESCAPE_RE: Final = re.compile(r"\\(.)", re.DOTALL)
_COMMA_RE: Final = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*"?)+')


def _unquote(text: str) -> str:
    """Remove quoted-pair backslashes (RFC 3261 §25.1)."""
    return _UNESCAPE_RE.sub(r"\1", text) if "\\" in text else text


# Caches of parsed values that repeat across messages: From/To (identical in every message of a
# dialog once both tags exist), Via (a request's Vias return in each of its responses), Via
# sent-protocol + sent-by (one per host), CSeq (same in a request and its responses). A hit is
# a dict lookup and a copy instead of a dozen string operations. Bounded: cleared when full,
# so hostile traffic only costs misses. Callers get copies; the cached dicts never leave.
_CACHE_MAX: Final = 4096
ADDRS: dict[str, dict[str, Any]] = {}
VIAS: dict[str, dict[str, Any]] = {}
CSEQS: dict[str, tuple[int, str]] = {}
_VIA_HEADS: dict[str, tuple[str, str, int | None]] = {}
# Content-Length and Max-Forwards as written after the colon: a lookup costs a third of int().
SMALL_INTS: Final[dict[str, int]] = {
    **{str(i): i for i in range(2048)},
    **{" " + str(i): i for i in range(2048)},
}


def parse_addr(value: str) -> dict[str, Any]:
    """From/To value ``"Bob" <sip:b@x>;tag=1`` -> ``{display, uri, tag}`` (cached in ADDRS)."""
    display, lt, rest = value.partition("<")
    if lt:
        uri, gt, params = rest.partition(">")
        if not gt:
            raise HeaderError("unclosed <")
        if uri[:1] in _BLANKS or uri[-1:] in _BLANKS:
            uri = uri.strip()  # "< sip:a@b >": blanks RFC 3261 does not allow, but seen
        if not uri:
            raise HeaderError("empty URI")
        d: str | None
        if '"' in display:
            d = display.strip()
            if d.count('"') != 2 or d[0] != '"' or d[-1] != '"' or "\\" in d:
                # "<" or escapes inside the quotes, or stray quotes: the careful parser
                t = _addr_quoted(value)
                return _store(value, t[0], t[1], t[2])
            d = d[1:-1]
        else:
            d = display.strip() or None
        return _store(value, d, uri, _tag(params) if params else None)
    # addr-spec: parameters after the URI are header parameters (RFC 3261 §20.10).
    uri, semi, params = value.strip().partition(";")
    if not uri:
        raise HeaderError("empty address")
    return _store(value, None, uri.rstrip(), _tag(semi + params) if semi else None)


def _store(value: str, display: str | None, uri: str, tag: str | None) -> dict[str, Any]:
    """Cache a parsed address under its raw value; return a copy for the caller."""
    d = {"display": display, "uri": uri, "tag": tag}
    if len(ADDRS) >= _CACHE_MAX:
        ADDRS.clear()
    ADDRS[value] = d
    return d.copy()


def parse_cseq(value: str) -> tuple[int, str]:
    """``314159 INVITE`` -> ``(314159, "INVITE")`` (cached in CSEQS); ValueError if not so."""
    seq_s, method = value.split()
    if not (seq_s.isascii() and seq_s.isdigit()):  # int() takes "+1", "1_0", other digits
        raise HeaderError("CSeq number is not 1*DIGIT")
    seq = int(seq_s)
    if seq >= 0x80000000:  # RFC 3261 §8.1.1.5: less than 2**31
        raise HeaderError("CSeq number out of range")
    t = (seq, method)
    if len(CSEQS) >= _CACHE_MAX:
        CSEQS.clear()
    CSEQS[value] = t
    return t


def _tag(params: str) -> str | None:
    """The tag parameter of the text after a name-addr (``;tag=x;foo``), or None."""
    _, found, tag = params.partition(";tag=")
    if found:
        tag = tag.partition(";")[0].strip()
    elif "tag" in params.lower():  # "TAG=", "; tag = x": rare spellings, the general parser
        tag = parse_params(params).get("tag", "")
    return tag or None


def _addr_quoted(value: str) -> tuple[str | None, str, str | None]:
    """name-addr whose display name is a quoted string (it may hold ``<``, ``;`` or escapes)."""
    q1 = value.find('"')
    i = q1 + 1
    while True:
        q2 = value.find('"', i)
        if q2 < 0:
            raise HeaderError("unclosed quoted display name")
        k = q2
        while value[k - 1] == "\\":
            k -= 1
        if (q2 - k) % 2 == 0:  # an even run of backslashes: this quote is not escaped
            break
        i = q2 + 1
    lt = value.find("<", q2)
    gt = value.find(">", lt)
    if lt < 0 or gt < 0:
        raise HeaderError("quoted display name without <uri>")
    params = value[gt + 1 :]
    return _unquote(value[q1 + 1 : q2]), value[lt + 1 : gt], _tag(params) if params else None


def parse_vias(values: list[str]) -> list[dict[str, Any]]:
    """Every Via value (in message order; comma-joined ones split) -> list of via dicts."""
    out = []
    get = VIAS.get
    for value in values:
        d = get(value)
        if d is not None:
            out.append(d.copy())
        elif "," in value:
            out.extend(_via(v) for v in _COMMA_RE.findall(value) if v.strip())
        else:
            d = _via(value)
            if len(VIAS) >= _CACHE_MAX:
                VIAS.clear()
            VIAS[value] = d
            out.append(d.copy())
    return out


def _via(value: str) -> dict[str, Any]:
    """``SIP/2.0/UDP host:port;branch=..;received=..;rport=..`` -> via dict."""
    head, semi, params = value.strip().partition(";")
    h = _VIA_HEADS.get(head)
    if h is None:
        h = _via_head(head)
    branch = received = rport = None
    if semi:
        if " " in params or "\t" in params:
            params = ";".join(p.strip() for p in params.split(";"))  # SEMI is SWS ";" SWS
        for param in params.split(";"):
            name, _, v = param.partition("=")
            if name not in _VIA_PARAMS:
                # blanks around ";" and "=", upper case: rare, so normalised only here
                name = name.strip().lower()
                v = v.strip()
            if name == "branch":
                branch = v
            elif name == "received":
                received = v
            elif name == "rport":
                # ";rport" (a request asking for it) -> 0; ";rport=5060" -> 5060
                rport = _port(v) or 0 if v else 0
    return {
        "transport": h[0],
        "host": h[1],
        "port": h[2],
        "branch": branch,
        "received": received,
        "rport": rport,
    }


_BLANKS: Final = (" ", "\t")
_VIA_PARAMS: Final = frozenset(("branch", "received", "rport", "maddr", "ttl", "alias", "lr"))
_VIA_RE: Final = re.compile(r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9.!%*_+`'~-]+)\s+(\S.*)", re.I)


def _via_head(head: str) -> tuple[str, str, int | None]:
    """``SIP/2.0/UDP host:port`` -> ``(transport, host, port)``; cached in _VIA_HEADS."""
    m = _VIA_RE.fullmatch(head)
    if m is None:
        raise HeaderError("bad Via sent-protocol")
    transport = m[1].upper()
    hostport = m[2].rstrip()
    port: int | None = None
    if hostport[0] == "[":
        close = hostport.find("]")
        if close < 0:
            raise HeaderError("unclosed IPv6 reference")
        host = hostport[1:close]  # without brackets, as src_ip/dst_ip (and tshark) write it
        tail = hostport[close + 1 :].strip()
        if tail[:1] == ":":
            port = _port(tail[1:])
    elif hostport.count(":") > 1:
        # An IPv6 address without brackets (invalid, but sent): it cannot carry a port.
        host = hostport
    else:
        host, colon, ps = hostport.partition(":")
        host = host.rstrip()
        if colon:
            port = _port(ps)
    if not host or " " in host or "\t" in host:
        raise HeaderError("bad Via sent-by")
    t = (transport, host, port)
    if len(_VIA_HEADS) >= _CACHE_MAX:
        _VIA_HEADS.clear()
    _VIA_HEADS[head] = t
    return t


def _port(text: str) -> int | None:
    """A port number, or None when it is not one (reported as null, the message is kept)."""
    text = text.strip()
    if text.isdecimal() and len(text) <= 5:
        n = int(text)
        if n <= 65535:
            return n
    return None
