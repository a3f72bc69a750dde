"""parse_message: start lines, every reported header in each of its forms, bodies, errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from otus.plugins.parser.sip import SipParseError, headers, parse_message
from otus.plugins.parser.sip.headers import COMPACT
from tests.plugins.parser.sip.corpus import INVITE_SDP, OK_3VIA, OPTIONS, REGISTER, build

KEYS = {
    "method",
    "status_code",
    "reason",
    "request_uri",
    "call_id",
    "cseq",
    "from",
    "to",
    "via",
    "contact",
    "max_forwards",
    "user_agent",
    "content_type",
    "content_length",
    "p_asserted_identity",
    "reason_header",
    "sdp",
}
VIA = "Via: SIP/2.0/UDP h.example;branch=z9hG4bK1"
BASE = [VIA, "From: <sip:a@x>;tag=f1", "To: <sip:b@y>", "Call-ID: c1", "CSeq: 1 OPTIONS"]


def req(*headers: str, body: str | bytes = b"", start: str = "OPTIONS sip:b@y SIP/2.0") -> bytes:
    """An OPTIONS with the mandatory headers (overridable by name) plus ``headers``."""
    names = {canon(h) for h in headers}
    base = [h for h in BASE if canon(h) not in names]
    return build(start, [*base, *headers], body)


def canon(header: str) -> str:
    """The full lower-case name of a header line (compact forms expanded)."""
    name = header.partition(":")[0].strip().lower()
    return COMPACT.get(name, name)


def parse(data: bytes) -> dict[str, Any]:
    r = parse_message(data)
    assert set(r) == KEYS
    orjson.dumps(r)  # every value is JSON-ready
    return r


def reason_of(data: bytes) -> str:
    with pytest.raises(SipParseError) as e:
        parse_message(data)
    return e.value.reason


class TestTypical:
    def test_invite_with_sdp(self) -> None:
        r = parse(INVITE_SDP)
        assert r["method"] == "INVITE"
        assert r["status_code"] is None and r["reason"] is None
        assert r["request_uri"] == "sip:bob@biloxi.example.com"
        assert r["call_id"] == "a84b4c76e66710@pc33.atlanta.example.com"
        assert r["cseq"] == {"seq": 314159, "method": "INVITE"}
        assert r["from"] == {
            "display": "Alice Liddell",
            "uri": "sip:alice@atlanta.example.com",
            "tag": "1928301774",
        }
        assert r["to"] == {"display": "Bob", "uri": "sip:bob@biloxi.example.com", "tag": None}
        assert r["via"] == [
            {
                "transport": "UDP",
                "host": "pc33.atlanta.example.com",
                "port": 5060,
                "branch": "z9hG4bK776asdhds",
                "received": None,
                "rport": 0,
            }
        ]
        assert r["contact"] == "<sip:alice@pc33.atlanta.example.com;transport=udp>"
        assert r["max_forwards"] == 70
        assert r["user_agent"] == "Otus-Test/1.0 (Linux)"
        assert r["content_type"] == "application/sdp"
        assert r["content_length"] == len(INVITE_SDP) - INVITE_SDP.index(b"\r\n\r\n") - 4
        assert r["sdp"]["connection"] == "192.0.2.101"

    def test_response_with_three_vias(self) -> None:
        r = parse(OK_3VIA)
        assert (r["method"], r["status_code"], r["reason"]) == (None, 200, "OK")
        assert r["request_uri"] is None
        assert [v["host"] for v in r["via"]] == [
            "server10.biloxi.example.com",
            "bigbox3.site3.atlanta.example.com",
            "pc33.atlanta.example.com",
        ]
        assert [v["received"] for v in r["via"]] == ["192.0.2.3", "192.0.2.2", "192.0.2.1"]
        assert r["via"][1]["branch"] == "z9hG4bK77ef4c2312983.1"
        assert r["user_agent"] == "Otus-UAS/1.0"  # Server, as the response has no User-Agent
        assert r["to"]["tag"] == "a6c85cf"
        assert r["content_length"] == 0 and r["sdp"] is None

    @pytest.mark.parametrize("data", [OPTIONS, REGISTER], ids=["options", "register"])
    def test_other_requests(self, data: bytes) -> None:
        r = parse(data)
        assert r["method"] == data.split(b" ")[0].decode()
        assert r["max_forwards"] == 70

    def test_results_are_independent_copies(self) -> None:
        a, b = parse(OK_3VIA), parse(OK_3VIA)  # the second comes from the value caches
        assert a == b
        a["from"]["tag"] = "changed"
        a["via"][0]["branch"] = "changed"
        assert parse(OK_3VIA) == b


class TestStartLine:
    @pytest.mark.parametrize(
        ("start", "code", "reason"),
        [
            ("SIP/2.0 100 Trying", 100, "Trying"),
            ("SIP/2.0 486 Busy Here", 486, "Busy Here"),
            ("SIP/2.0 603 Decline", 603, "Decline"),
            ("SIP/2.0 200 ", 200, ""),
            ("SIP/2.0 200", 200, ""),  # no reason phrase and no separator: accepted
        ],
    )
    def test_status_lines(self, start: str, code: int, reason: str) -> None:
        r = parse(req(start=start))
        assert (r["status_code"], r["reason"], r["method"]) == (code, reason, None)

    @pytest.mark.parametrize("method", ["INVITE", "ACK", "PRACK", "FOO-BAR", "invite"])
    def test_request_methods(self, method: str) -> None:
        r = parse(req(start=f"{method} sip:b@y SIP/2.0"))
        assert r["method"] == method  # methods are case-sensitive: "invite" is an extension

    def test_trailing_blank_on_request_line(self) -> None:
        assert parse(req(start="BYE sip:b@y SIP/2.0 \t"))["method"] == "BYE"

    @pytest.mark.parametrize(
        "start",
        [
            "",
            "hello world",
            "INVITE sip:b@y SIP/3.0",
            "INVITE sip:b@y",
            "INVITE  SIP/2.0",
            "IN<VITE sip:b@y SIP/2.0",
            "SIP/2.0 99 Low",
            "SIP/2.0 2000 Long",
            "SIP/2.0 abc Letters",
            "SIP/2.0 700 Out of range",
            "SIP/2.0  200 Two spaces",
        ],
    )
    def test_bad_start_lines(self, start: str) -> None:
        assert reason_of(req(start=start)) == "malformed"


class TestHeaderNames:
    def test_compact_forms(self) -> None:
        data = build(
            "INVITE sip:b@y SIP/2.0",
            [
                "v: SIP/2.0/UDP h.example;branch=z9hG4bKc",
                "f: <sip:a@x>;tag=f1",
                "t: <sip:b@y>",
                "i: compact-cid",
                "CSeq: 1 INVITE",
                "m: <sip:a@10.0.0.1>",
                "c: application/sdp",
                "k: timer",
                "s: subject text",
                "e: gzip",
                "o: presence",
                "r: <sip:c@z>",
                "u: dialog",
                "b: <sip:d@z>",
                "x: 1800",
                "y: signature",
                "n: <https://cert>",
                "a: *;audio",
                "j: *;video",
                "d: proxy",
            ],
            "v=0\r\nc=IN IP4 10.0.0.9\r\nm=audio 4000 RTP/AVP 0\r\n",
            content_length=False,
        )
        r = parse(data.replace(b"\r\n\r\n", b"\r\nl: 48\r\n\r\n", 1))
        assert r["call_id"] == "compact-cid"
        assert r["via"][0]["branch"] == "z9hG4bKc"
        assert r["from"]["tag"] == "f1"
        assert r["to"]["uri"] == "sip:b@y"
        assert r["contact"] == "<sip:a@10.0.0.1>"
        assert r["content_type"] == "application/sdp"
        assert r["content_length"] == 48
        assert r["sdp"]["media"][0]["port"] == 4000
        # the other compact forms name headers Otus does not report: they change nothing
        assert r["user_agent"] is None and r["reason_header"] is None

    @pytest.mark.parametrize(
        "spelling",
        ["Call-ID", "Call-Id", "call-id", "CALL-ID", "cAlL-iD", "I", "i", "Call-ID ", "Call-ID\t"],
    )
    def test_names_are_case_insensitive_and_blank_tolerant(self, spelling: str) -> None:
        assert parse(req(f"{spelling}: the-cid"))["call_id"] == "the-cid"

    def test_every_reported_header_in_upper_case(self) -> None:
        r = parse(
            build(
                "SIP/2.0 180 Ringing",
                [
                    "VIA: SIP/2.0/UDP h;branch=z9hG4bKu",
                    "FROM: <sip:a@x>;tag=1",
                    "TO: <sip:b@y>;tag=2",
                    "CALL-ID: up",
                    "CSEQ: 4 INVITE",
                    "CONTACT: <sip:b@10.0.0.2>",
                    "MAX-FORWARDS: 9",
                    "SERVER: srv",
                    "CONTENT-TYPE: text/plain",
                    "P-ASSERTED-IDENTITY: <sip:+15551234@y>",
                    "REASON: Q.850;cause=16",
                ],
                "hi",
            ).replace(b"Content-Length", b"CONTENT-LENGTH")
        )
        assert (r["call_id"], r["cseq"]["seq"], r["max_forwards"]) == ("up", 4, 9)
        assert (r["user_agent"], r["content_type"], r["content_length"]) == ("srv", "text/plain", 2)
        assert r["p_asserted_identity"] == "<sip:+15551234@y>"
        assert r["reason_header"] == "Q.850;cause=16"

    def test_unknown_names_learned_then_ignored(self) -> None:
        headers = [f"X-Custom-{i}: v{i}" for i in range(50)]
        assert parse(req(*headers))["call_id"] == "c1"

    def test_line_without_colon_is_ignored(self) -> None:
        assert parse(req("this line has no colon"))["call_id"] == "c1"

    def test_first_occurrence_wins(self) -> None:
        data = req("Call-ID: first", "User-Agent: ua-1", "i: second", "User-Agent: ua-2")
        r = parse(data)
        assert (r["call_id"], r["user_agent"]) == ("first", "ua-1")

    def test_user_agent_preferred_to_server(self) -> None:
        assert parse(req("Server: srv", "User-Agent: ua"))["user_agent"] == "ua"

    def test_values_are_stripped(self) -> None:
        r = parse(req("Call-ID:   spaced  ", "Contact:\t<sip:a@x>\t", "Max-Forwards:  12 "))
        assert (r["call_id"], r["contact"], r["max_forwards"]) == ("spaced", "<sip:a@x>", 12)

    def test_bad_max_forwards_is_null(self) -> None:
        assert parse(req("Max-Forwards: lots"))["max_forwards"] is None


class TestFoldingAndLineEnds:
    def test_folded_lines(self) -> None:
        data = req(
            "Subject: a long\r\n  subject",
            "User-Agent: Otus\r\n\t/2.0",
        ).replace(b"Call-ID: c1", b"Call-ID:\r\n folded-cid")
        r = parse(
            data.replace(b"branch=z9hG4bK1", b"\r\n  branch=z9hG4bK1").replace(
                b"h.example;", b"h.example\r\n ;"
            )
        )
        assert r["call_id"] == "folded-cid"
        assert r["user_agent"] == "Otus /2.0"
        assert r["via"][0]["host"] == "h.example"
        assert r["via"][0]["branch"] == "z9hG4bK1"

    def test_bare_lf(self) -> None:
        r = parse(
            build("INVITE sip:b@y SIP/2.0", [*BASE[:3], "Call-ID: lf", "CSeq: 2 INVITE"], eol="\n")
        )
        assert (r["call_id"], r["cseq"]["seq"]) == ("lf", 2)

    def test_bare_lf_with_body(self) -> None:
        body = "v=0\nc=IN IP4 10.1.1.1\nm=audio 7000 RTP/AVP 8\n"
        data = build("INVITE sip:b@y SIP/2.0", [*BASE, "c: application/sdp"], body, eol="\n")
        r = parse(data)
        assert r["sdp"]["media"][0]["codecs"] == ["PCMA/8000"]
        assert r["content_length"] == len(body)

    def test_mixed_line_ends(self) -> None:
        r = parse(req().replace(b"\r\nTo:", b"\nTo:", 1))
        assert r["to"]["uri"] == "sip:b@y"

    def test_leading_crlf_and_missing_final_blank_line(self) -> None:
        data = b"\r\n\r\n" + req()
        assert parse(data)["call_id"] == "c1"
        assert parse(req()[:-2])["call_id"] == "c1"  # headers end without the empty line


class TestVia:
    def vias(self, *values: str) -> list[dict[str, Any]]:
        return list(parse(req(*(f"Via: {v}" for v in values)))["via"])

    def test_repeated_and_comma_joined_keep_order(self) -> None:
        got = self.vias(
            "SIP/2.0/UDP a;branch=z9hG4bKa, SIP/2.0/TCP b:5061;branch=z9hG4bKb",
            "SIP/2.0/TLS c;branch=z9hG4bKc",
        )
        assert [(v["transport"], v["host"], v["port"]) for v in got] == [
            ("UDP", "a", None),
            ("TCP", "b", 5061),
            ("TLS", "c", None),
        ]
        assert [v["branch"] for v in got] == ["z9hG4bKa", "z9hG4bKb", "z9hG4bKc"]

    def test_ipv6_hosts(self) -> None:
        got = self.vias(
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK6",
            "SIP/2.0/UDP [fe80::1%25eth0];branch=z9hG4bK7",
        )
        assert [(v["host"], v["port"]) for v in got] == [
            ("2001:db8::1", 5060),
            ("fe80::1%25eth0", None),
        ]

    def test_received_and_rport(self) -> None:
        (v,) = self.vias("SIP/2.0/UDP 10.0.0.1:5070;rport=40000;branch=z9hG4bKr;received=192.0.2.9")
        assert (v["rport"], v["received"], v["branch"]) == (40000, "192.0.2.9", "z9hG4bKr")
        (v,) = self.vias("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKr;rport")
        assert v["rport"] == 0  # asked for, no value yet
        (v,) = self.vias("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKr")
        assert v["rport"] is None and v["received"] is None

    def test_odd_spellings(self) -> None:
        (v,) = self.vias("SIP / 2.0 / udp   host.example : 5080 ; Branch = z9hG4bKodd ")
        assert (v["transport"], v["host"], v["port"], v["branch"]) == (
            "UDP",
            "host.example",
            5080,
            "z9hG4bKodd",
        )

    def test_no_branch_and_bad_port(self) -> None:
        (v,) = self.vias("SIP/2.0/UDP host:99999")
        assert (v["branch"], v["port"]) == (None, None)

    @pytest.mark.parametrize("value", ["garbage", "SIP/2.0/UDP", "SIP/2.0/UDP [::1", "HTTP/1.1 x"])
    def test_malformed(self, value: str) -> None:
        assert reason_of(req(f"Via: {value}")) == "malformed"


class TestAddresses:
    @pytest.mark.parametrize(
        ("value", "display", "uri", "tag"),
        [
            ("<sip:a@x>;tag=1", None, "sip:a@x", "1"),
            ("Alice <sip:a@x>;tag=1", "Alice", "sip:a@x", "1"),
            ('"Alice Smith" <sip:a@x>;tag=1', "Alice Smith", "sip:a@x", "1"),
            ('"A \\"Q\\" \\\\ B" <sip:a@x>;tag=q', 'A "Q" \\ B', "sip:a@x", "q"),
            ('"x <y>; z" <sip:a@x>;tag=t', "x <y>; z", "sip:a@x", "t"),
            ("sip:a@x;tag=bare", None, "sip:a@x", "bare"),
            ("sip:a@x", None, "sip:a@x", None),
            ("<sip:a@x;transport=tcp>;foo=1;tag=after;bar", None, "sip:a@x;transport=tcp", "after"),
            ("<sip:a@x>; TAG = spaced", None, "sip:a@x", "spaced"),
            ("<sip:a@x>;Tag=Mixed", None, "sip:a@x", "Mixed"),
            ("<tel:+15551234>", None, "tel:+15551234", None),
            ('""<sip:a@x>', "", "sip:a@x", None),
        ],
    )
    def test_from_forms(self, value: str, display: str | None, uri: str, tag: str | None) -> None:
        r = parse(req(f"From: {value}", f"t: {value}"))
        assert r["from"] == {"display": display, "uri": uri, "tag": tag}
        assert r["to"] == r["from"]

    @pytest.mark.parametrize("value", ["<sip:a@x", '"unclosed <sip:a@x>', ""])
    def test_malformed(self, value: str) -> None:
        assert reason_of(req(f"From: {value}")) in ("malformed", "missing_header")


class TestCSeqAndLengths:
    def test_cseq_blanks(self) -> None:
        assert parse(req("CSeq:\t42   OPTIONS "))["cseq"] == {"seq": 42, "method": "OPTIONS"}

    @pytest.mark.parametrize("value", ["INVITE", "1", "x INVITE", "-1 INVITE", "1 INVITE extra"])
    def test_bad_cseq(self, value: str) -> None:
        assert reason_of(req(f"CSeq: {value}")) == "malformed"

    def test_absurd_content_length_is_truncated(self) -> None:
        data = req(body=b"v=0\r\n").replace(b"Content-Length: 5", b"Content-Length: 99999999")
        assert reason_of(data) == "truncated"

    @pytest.mark.parametrize("value", ["abc", "-4", "1e3", ""])
    def test_bad_content_length(self, value: str) -> None:
        data = req(body=b"body").replace(b"Content-Length: 4", f"Content-Length: {value}".encode())
        assert reason_of(data) == "malformed"

    def test_body_beyond_content_length_is_ignored(self) -> None:
        body = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5000 RTP/AVP 0\r\n"
        extra = "m=video 6000 RTP/AVP 96\r\n"
        data = req("Content-Type: application/sdp", body=body + extra)
        full, cut = f"Content-Length: {len(body + extra)}", f"Content-Length: {len(body)}"
        data = data.replace(full.encode(), cut.encode())
        r = parse(data)
        assert r["content_length"] == len(body)
        assert [m["type"] for m in r["sdp"]["media"]] == ["audio"]

    def test_no_content_length_takes_the_rest(self) -> None:
        data = build(
            "INVITE sip:b@y SIP/2.0",
            [*BASE, "Content-Type: application/sdp"],
            "v=0\r\nm=audio 1 RTP/AVP 0\r\n",
            content_length=False,
        )
        r = parse(data)
        assert r["content_length"] is None
        assert r["sdp"]["media"][0]["port"] == 1


class TestMandatory:
    @pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
    def test_missing(self, name: str) -> None:
        data = build("OPTIONS sip:b@y SIP/2.0", [h for h in BASE if not h.startswith(name)])
        assert reason_of(data) == "missing_header"

    def test_empty_call_id(self) -> None:
        assert reason_of(req("Call-ID:   ")) == "missing_header"

    def test_max_forwards_and_contact_are_optional(self) -> None:
        r = parse(req())
        assert (r["max_forwards"], r["contact"], r["user_agent"]) == (None, None, None)


class TestText:
    def test_utf8_display_name(self) -> None:
        r = parse(req('From: "Jürgen Müller 日本" <sip:j@x>;tag=u'))
        assert r["from"]["display"] == "Jürgen Müller 日本"

    def test_invalid_utf8_is_replaced(self) -> None:
        data = req('From: "Caf\xe9" <sip:c@x>;tag=l1', "User-Agent: bad \xff\xfe bytes")
        data = data.replace("\xe9".encode(), b"\xe9").replace("\xff\xfe".encode(), b"\xff\xfe")
        r = parse(data)
        assert r["from"]["display"] == "Caf\ufffd"
        assert r["user_agent"] == "bad \ufffd\ufffd bytes"
        assert orjson.loads(orjson.dumps(r)) == r

    def test_non_ascii_body_length_counts_bytes(self) -> None:
        body = "v=0\r\ns=Sessión\r\nc=IN IP4 10.0.0.1\r\nm=audio 9 RTP/AVP 0\r\n"
        r = parse(req("Content-Type: application/sdp", body=body))
        assert r["content_length"] == len(body.encode())
        assert r["sdp"]["media"][0]["port"] == 9

    def test_nul_and_control_bytes(self) -> None:
        r = parse(req("User-Agent: a\x00b\x01c"))
        assert r["user_agent"] == "a\x00b\x01c"
        orjson.dumps(r)


class TestBounds:
    def test_many_distinct_header_names(self) -> None:
        names = [f"X-H{i}: v" for i in range(6000)]  # more than the learned-names bound
        assert parse(req(*names))["call_id"] == "c1"
        assert len(headers.NAMES) <= headers._MAX_NAMES + 6000

    def test_caches_stay_bounded(self) -> None:
        for i in range(headers._CACHE_MAX + 500):
            parse(
                req(
                    f"From: <sip:a{i}@x>;tag={i}",
                    f"Via: SIP/2.0/UDP h{i}.example;branch=z9hG4bK{i}",
                    f"CSeq: {i} OPTIONS",
                )
            )
        for cache in (headers.ADDRS, headers.VIAS, headers.CSEQS, headers._VIA_HEADS):
            assert len(cache) <= headers._CACHE_MAX
        for _ in range(3):
            parse(req(*(f"X-N{i}-{_}: v" for i in range(3000))))
        assert len(headers.NAMES) <= headers._MAX_NAMES + 3000
