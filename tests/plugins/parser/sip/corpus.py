"""SIP messages for the parser tests: a builder, typical messages, and sipp's own scenarios."""

from __future__ import annotations

import re
import shutil
import subprocess

__all__ = [
    "INVITE_SDP",
    "OK_3VIA",
    "OPTIONS",
    "REGISTER",
    "SDP",
    "TYPICAL",
    "build",
    "sipp_messages",
]


def build(
    start: str,
    headers: list[str],
    body: str | bytes = b"",
    *,
    content_length: bool | int = True,
    eol: str = "\r\n",
) -> bytes:
    """A SIP message from its start line, header lines and body (Content-Length added)."""
    raw_body = body.encode() if isinstance(body, str) else body
    lines = [start, *headers]
    if content_length is True:
        lines.append(f"Content-Length: {len(raw_body)}")
    elif content_length is not False:
        lines.append(f"Content-Length: {content_length}")
    return (eol.join(lines) + eol + eol).encode("utf-8") + raw_body


SDP = (
    "v=0\r\n"
    "o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n"
    "s=Session SDP\r\n"
    "c=IN IP4 192.0.2.101\r\n"
    "t=0 0\r\n"
    "m=audio 49172 RTP/AVP 0 8 18 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:18 G729/8000\r\n"
    "a=fmtp:18 annexb=no\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)

INVITE_SDP = build(
    "INVITE sip:bob@biloxi.example.com SIP/2.0",
    [
        "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport",
        "Max-Forwards: 70",
        "To: Bob <sip:bob@biloxi.example.com>",
        'From: "Alice Liddell" <sip:alice@atlanta.example.com>;tag=1928301774',
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        "CSeq: 314159 INVITE",
        "Contact: <sip:alice@pc33.atlanta.example.com;transport=udp>",
        "User-Agent: Otus-Test/1.0 (Linux)",
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO",
        "Supported: replaces, timer, 100rel",
        "Content-Type: application/sdp",
    ],
    SDP,
)

OK_3VIA = build(
    "SIP/2.0 200 OK",
    [
        "Via: SIP/2.0/UDP server10.biloxi.example.com;branch=z9hG4bKnashds8;received=192.0.2.3",
        "Via: SIP/2.0/UDP bigbox3.site3.atlanta.example.com;branch=z9hG4bK77ef4c2312983.1"
        ";received=192.0.2.2",
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1",
        "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        "CSeq: 314159 INVITE",
        "Contact: <sip:bob@192.0.2.4>",
        "Server: Otus-UAS/1.0",
    ],
)

OPTIONS = build(
    "OPTIONS sip:carol@chicago.example.com SIP/2.0",
    [
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877",
        "Max-Forwards: 70",
        "To: <sip:carol@chicago.example.com>",
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710",
        "CSeq: 63104 OPTIONS",
        "Contact: <sip:alice@pc33.atlanta.example.com>",
        "Accept: application/sdp",
    ],
)

REGISTER = build(
    "REGISTER sip:registrar.biloxi.example.com SIP/2.0",
    [
        "Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7",
        "Max-Forwards: 70",
        "To: Bob <sip:bob@biloxi.example.com>",
        "From: Bob <sip:bob@biloxi.example.com>;tag=456248",
        "Call-ID: 843817637684230@998sdasdh09",
        "CSeq: 1826 REGISTER",
        "Contact: <sip:bob@192.0.2.4>",
        "Expires: 7200",
    ],
)

TYPICAL = {"invite_sdp": INVITE_SDP, "ok_3via": OK_3VIA, "options": OPTIONS, "register": REGISTER}

# Values for sipp's [keywords] when rendering its built-in scenarios without running it.
_KEYWORDS = {
    "service": "service",
    "remote_ip": "10.47.0.2",
    "remote_port": "5060",
    "local_ip": "10.47.0.1",
    "local_port": "5070",
    "transport": "UDP",
    "media_ip": "10.47.0.1",
    "media_port": "6000",
    "media_ip_type": "4",
    "local_ip_type": "4",
    "pid": "4242",
    "call_number": "1",
    "cseq": "1",
    "peer_tag_param": ";tag=77SIPpTag011",
}
_LAST = {
    "Via:": "Via: SIP/2.0/UDP 10.47.0.1:5070;branch=z9hG4bK-4242-1-0",
    "From:": "From: sipp <sip:sipp@10.47.0.1:5070>;tag=4242SIPpTag001",
    "To:": "To: service <sip:service@10.47.0.2:5060>",
    "Call-ID:": "Call-ID: 1-4242@10.47.0.1",
    "CSeq:": "CSeq: 1 INVITE",
}
_CDATA = re.compile(r"<send[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", re.S)
_KEYWORD = re.compile(r"\[([^\]\[]+)\]")


def _render(template: str, n: int) -> bytes | None:
    """One sipp <send> template as the message sipp would send (call number ``n``)."""
    lines = [ln.strip() for ln in template.strip("\n").splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return None
    try:
        sep = lines.index("")
    except ValueError:
        sep = len(lines)
    head, body = lines[:sep], [ln for ln in lines[sep + 1 :] if ln]

    def sub(m: re.Match[str]) -> str:
        key = m[1]
        if key.startswith("last_"):
            return _LAST.get(key[5:], "")
        if key == "branch":
            return f"z9hG4bK-4242-{n}-0"
        if key == "call_id":
            return f"{n}-4242@10.47.0.1"
        return _KEYWORDS.get(key, m[0])

    body_text = "".join(_KEYWORD.sub(sub, ln) + "\r\n" for ln in body)
    out = []
    for ln in head:
        rendered = _KEYWORD.sub(sub, ln.replace("[len]", str(len(body_text))))
        if rendered:
            out.append(rendered)
    if not out or "[" in out[0]:
        return None
    return ("\r\n".join(out) + "\r\n\r\n" + body_text).encode()


def sipp_messages(scenarios: tuple[str, ...] = ("uac", "uas", "branchc", "branchs")) -> list[bytes]:
    """The messages of sipp's built-in scenarios (``sipp -sd NAME``), rendered."""
    sipp = shutil.which("sipp")
    if sipp is None:
        return []
    out = []
    for name in scenarios:
        proc = subprocess.run(
            [sipp, "-sd", name], capture_output=True, text=True, timeout=30, check=False
        )
        for i, m in enumerate(_CDATA.finditer(proc.stdout)):
            msg = _render(m[1], i + 1)
            if msg is not None:
                out.append(msg)
    return out
