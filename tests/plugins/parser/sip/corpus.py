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
    "VARIED",
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

_AV_SDP = (
    "v=0\r\no=- 20518 0 IN IP6 2001:db8::5\r\ns=-\r\nc=IN IP6 2001:db8::5\r\nt=0 0\r\n"
    "m=audio 54400 RTP/SAVPF 111 0 8 126\r\n"
    "c=IN IP4 198.51.100.20\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=rtpmap:126 telephone-event/8000\r\n"
    "a=sendrecv\r\n"
    "m=video 55400 RTP/SAVPF 96 97\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
    "a=rtpmap:97 H264/90000\r\n"
)

# Valid messages in the many forms the grammar allows, for the tshark cross-check.
VARIED: dict[str, bytes] = {
    **TYPICAL,
    "compact": build(
        "INVITE sip:bob@b.example SIP/2.0",
        [
            "v: SIP/2.0/TCP client.a.example:5061;branch=z9hG4bK74bf9",
            "max-forwards: 70",
            "f: Alice <sip:alice@a.example>;tag=9fxced76sl",
            "t: Bob <sip:bob@b.example>",
            "i: 3848276298220188511@a.example",
            "CSEQ: 1 INVITE",
            "m: <sip:alice@client.a.example;transport=tcp>",
            "c: application/sdp",
            "k: 100rel",
        ],
        _AV_SDP,
    ).replace(b"Content-Length:", b"l:"),
    "mixed_case_and_blanks": build(
        "SUBSCRIBE sip:carol@c.example SIP/2.0",
        [
            "VIA: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKsub;rport",
            "from:\t<sip:dave@d.example>;tag=d1",
            "TO: <sip:carol@c.example>",
            "call-id: sub-1@d.example",
            "cseq: 20 SUBSCRIBE",
            "Event: presence",
            "Expires: 3600",
            "user-agent: lower/1",
        ],
    ),
    "folded": build(
        "MESSAGE sip:bob@b.example SIP/2.0",
        [
            "Via: SIP/2.0/UDP a.example:5060\r\n ;branch=z9hG4bKfold",
            "From: <sip:alice@a.example>;tag=m1",
            "To: <sip:bob@b.example>",
            "Call-ID: folded-1@a.example",
            "CSeq: 3 MESSAGE",
            "Subject: a subject\r\n\t that continues",
            "Content-Type: text/plain",
        ],
        "hello bob",
    ),
    "vias": build(
        "SIP/2.0 180 Ringing",
        [
            "Via: SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKv6;received=2001:db8::99;rport=5071",
            "Via: SIP/2.0/TLS p1.example;branch=z9hG4bKp1, SIP/2.0/UDP p2.example:5080"
            ";branch=z9hG4bKp2",
            "v: SIP/2.0/SCTP [2001:db8::3];branch=z9hG4bKv63",
            "From: <sip:alice@a.example>;tag=r1",
            "To: Bob <sip:bob@b.example>;tag=r2",
            "Call-ID: vias-1",
            "CSeq: 9 INVITE",
            "Server: proxy/3.1",
        ],
    ),
    "quoted": build(
        "BYE sip:bob@192.0.2.4 SIP/2.0",
        [
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbye",
            "Max-Forwards: 69",
            'From: "Alice \\"The Boss\\" Liddell" <sip:alice@a.example>;tag=q1',
            "To: sip:bob@b.example;tag=q2",
            "Call-ID: quoted-1",
            "CSeq: 231 BYE",
            "P-Asserted-Identity: <sip:+15551234567@a.example;user=phone>",
            'Reason: Q.850;cause=16;text="Normal call clearing"',
            "User-Agent: Otus UA/2.0",
        ],
    ),
    "utf8": build(
        "INFO sip:bob@b.example SIP/2.0",
        [
            "Via: SIP/2.0/UDP a.example;branch=z9hG4bKutf",
            'From: "Zoë Çelik" <sip:zoe@a.example>;tag=u1',
            "To: Jürgen <sip:j@b.example>;tag=u2",
            "Call-ID: utf-1",
            "CSeq: 5 INFO",
        ],
    ),
    "busy": build(
        "SIP/2.0 486 Busy Here",
        [
            "Via: SIP/2.0/UDP pc33.a.example;branch=z9hG4bKb;received=192.0.2.1;rport=5060",
            "From: Alice <sip:alice@a.example>;tag=b1",
            "To: Bob <sip:bob@b.example>;tag=b2",
            "Call-ID: busy-1",
            "CSeq: 1 INVITE",
            "Server: pbx",
        ],
    ),
    "cancel": build(
        "CANCEL sip:bob@b.example SIP/2.0",
        [
            "Via: SIP/2.0/UDP pc33.a.example;branch=z9hG4bKc",
            "Max-Forwards: 70",
            "From: Alice <sip:alice@a.example>;tag=c1",
            "To: Bob <sip:bob@b.example>",
            "Call-ID: cancel-1",
            "CSeq: 1 CANCEL",
        ],
    ),
    "notify": build(
        "NOTIFY sip:alice@a.example SIP/2.0",
        [
            "Via: SIP/2.0/TCP b.example;branch=z9hG4bKn",
            "From: <sip:bob@b.example>;tag=n1",
            "To: <sip:alice@a.example>;tag=n2",
            "Call-ID: notify-1",
            "CSeq: 8 NOTIFY",
            "o: refer",
            "Subscription-State: active;expires=60",
            "Content-Type: message/sipfrag",
        ],
        "SIP/2.0 200 OK\r\n",
    ),
    "ok_with_sdp": build(
        "SIP/2.0 200 OK",
        [
            "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKo;received=10.0.0.1",
            "From: Alice <sip:alice@a.example>;tag=o1",
            "To: Bob <sip:bob@b.example>;tag=o2",
            "Call-ID: okdsp-1",
            "CSeq: 2 INVITE",
            "Contact: <sip:bob@10.0.0.2:5060>",
            "Content-Type: application/sdp",
        ],
        _AV_SDP,
    ),
}

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
