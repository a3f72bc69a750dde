"""Property tests: random and mutated input never raises, and every input is counted once."""

from __future__ import annotations

import os
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otus.core.packet import IPPROTO_TCP, IPPROTO_UDP, DecodedPacket, OutputPacket
from otus.plugins.base import PluginContext
from otus.plugins.parser.sip import (
    SipConfig,
    SipParseError,
    SipParser,
    frame_end,
    headers,
    parse_message,
    parse_sdp,
)
from tests.plugins.parser.sip.corpus import SDP, TYPICAL, build, sipp_messages
from tests.plugins.parser.sip.tcp import BYTE_ENDS
from tests.plugins.parser.sip.test_message import KEYS

# OTUS_FUZZ_EXAMPLES=20000 for a long local run; the default keeps the suite quick.
SETTINGS = settings(
    max_examples=int(os.environ.get("OTUS_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

VALID = [
    *TYPICAL.values(),
    *sipp_messages(),
    build(
        "SIP/2.0 183 Session Progress",
        [
            "v: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKx;rport=5060;received=2001:db8::9",
            'f: "Q \\"x\\"" <sip:a@x>;tag=1',
            "t: sip:b@y;tag=2",
            "i: abc\r\n def",
            "CSeq: 5 INVITE",
            "c: application/sdp",
            "P-Asserted-Identity: <tel:+15551234>",
            "Reason: Q.850;cause=16",
        ],
        SDP,
    ),
]
SPECIAL = b':;<>",\\[]\r\n \t\x00\xff\xc3=/@'


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message with a few random edits: flips, inserts, cuts, repeated lines."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 6))
        if op == 0:
            data[i] = draw(st.sampled_from(SPECIAL))
        elif op == 1:
            data[i:i] = draw(st.binary(max_size=8))
        elif op == 2:
            del data[i : i + draw(st.integers(1, 40))]
        elif op == 3:
            del data[i:]
        elif op == 4:  # repeat a line
            start = data.rfind(b"\n", 0, i) + 1
            end = data.find(b"\n", i)
            if end > 0:
                data[end + 1 : end + 1] = data[start : end + 1]
        elif op == 5:
            data[i] = data[i] ^ 0x20  # case flip (or a control byte)
        else:
            n = draw(st.sampled_from([b"0", b"-1", b"99999999", b"1e3", b"", b"x" * 5000]))
            data = bytearray(bytes(data).replace(b"Content-Length: ", b"Content-Length: " + n, 1))
    return bytes(data)


def check(r: dict[str, Any]) -> None:
    """Shape and types of a parse result."""
    assert set(r) == KEYS
    assert isinstance(r["call_id"], str) and r["call_id"]
    assert isinstance(r["cseq"]["seq"], int)
    assert r["via"] and all(isinstance(v["host"], str) and v["host"] for v in r["via"])
    assert (r["method"] is None) != (r["status_code"] is None)
    if r["status_code"] is not None:
        assert 100 <= r["status_code"] <= 699
    orjson.dumps(r)


def try_parse(data: bytes) -> dict[str, Any] | None:
    try:
        r = parse_message(data)
    except SipParseError as e:
        assert e.reason in ("malformed", "missing_header", "truncated")
        return None
    check(r)
    return r


@SETTINGS
@given(st.binary(max_size=1500))
def test_random_bytes(data: bytes) -> None:
    try_parse(data)
    try_parse(b"INVITE sip:x SIP/2.0\r\n" + data)


@SETTINGS
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    r = try_parse(data)
    if r is not None:
        # the value caches (From/To, Via, CSeq) give the same answer as a cold parse
        for cache in (headers.ADDRS, headers.VIAS, headers.CSEQS):
            cache.clear()
        assert parse_message(data) == r


@SETTINGS
@given(st.text(max_size=600))
def test_sdp_never_raises(text: str) -> None:
    got = parse_sdp(text)
    assert set(got) == {"connection", "media"}
    orjson.dumps(got)


def counted(p: SipParser) -> int:
    s = p.stats()
    return s["parse.messages"] + sum(v for k, v in s.items() if k.startswith("parse.drop."))


@SETTINGS
@given(st.one_of(mutated(), st.binary(max_size=600)))
def test_plugin_counts_every_datagram_once(data: bytes) -> None:
    p = SipParser(SipConfig(), PluginContext())
    out: list[OutputPacket] = []
    pkt = DecodedPacket(1, "10.0.0.1", "10.0.0.2", 5070, 5060, IPPROTO_UDP, data)
    if not p.can_handle(pkt):
        assert data == b""
        return
    p.handle(pkt, out)
    assert counted(p) == 1
    assert len(out) == p.stats()["parse.messages"]
    assert p.stats()["parse.drop.error"] == 0


@SETTINGS
@given(st.lists(st.one_of(mutated(), st.binary(max_size=80)), min_size=1, max_size=4))
def test_plugin_accounts_every_stream_byte(parts: list[bytes]) -> None:
    """Segments of one stream: every byte lands in one tcp.* end; every cut message once."""
    p = SipParser(SipConfig(), PluginContext())
    out: list[OutputPacket] = []
    seq = 7
    for i, data in enumerate(parts):
        pkt = DecodedPacket(1 + i, "10.0.0.1", "10.0.0.2", 5070, 5060, IPPROTO_TCP, data, None, seq)
        seq += len(data)
        if p.can_handle(pkt):
            p.handle(pkt, out)
    p.drain(out)
    s = p.stats()
    assert s["tcp.bytes"] == sum(len(x) for x in parts)
    assert s["tcp.bytes"] == sum(s[k] for k in BYTE_ENDS)
    assert s["tcp.buffered_bytes"] == 0  # drained
    assert len(out) == s["parse.messages"]
    assert s["parse.drop.error"] == 0
    if s["tcp.bytes_sip"]:
        assert counted(p) >= 1


@SETTINGS
@given(st.one_of(mutated(), st.binary(max_size=400)), st.integers(0, 50))
def test_frame_end(data: bytes, start: int) -> None:
    try:
        end = frame_end(data, start)
    except SipParseError as e:
        assert e.reason in ("malformed", "tcp_framing")
        return
    assert end == -1 or start < end <= len(data)
