"""Messages in the spirit of RFC 4475 (SIP torture tests) where a lenient parser goes wrong."""

from __future__ import annotations

import pytest

from otus.plugins.parser.sip import parse_sdp
from tests.plugins.parser.sip.test_message import parse, reason_of, req


@pytest.mark.parametrize("after", ["User-Agent: t/1.0", "Contact: <sip:a@h>", "Max-Forwards: 70"])
def test_a_bare_lf_ending_one_line_does_not_merge_two_headers(after: str) -> None:
    data = req(after, "Content-Type: application/sdp", "Server: s/2")
    name = after.partition(":")[0].encode()
    line = data[data.index(name) :].partition(b"\r\n")[0]
    data = data.replace(line + b"\r\n", line + b"\n")
    r = parse(data)
    assert r["content_type"] == "application/sdp"
    assert r["user_agent"] in ("t/1.0", "s/2")
    assert "\n" not in str(r)


def test_a_bare_lf_before_the_blank_line_ends_the_headers_there() -> None:
    body = b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n\r\n"
    data = req("Content-Type: application/sdp", f"Content-Length: {len(body)}", body=body)
    head, _, rest = data.partition(b"\r\n\r\n")
    r = parse(head + b"\r\n\n" + rest)  # the "\r\n\r\n" first found is inside the body
    assert r["content_length"] == len(body)
    assert r["sdp"]["connection"] == "192.0.2.1"


def test_blanks_around_via_semicolons_are_not_part_of_values() -> None:
    via = "Via: SIP/2.0/UDP 10.0.0.1:5062 ;branch=z9hG4bK776 ;rport=5062 ;received=192.0.2.7"
    (v,) = parse(req(via))["via"]
    assert (v["branch"], v["received"], v["rport"]) == ("z9hG4bK776", "192.0.2.7", 5062)


@pytest.mark.parametrize("to", ["To: Bob <>", "To: <  >", 'To: "Bob" <>;tag=1'])
def test_a_name_addr_without_a_uri_is_malformed(to: str) -> None:
    assert reason_of(req(to)) == "malformed"


def test_blanks_inside_angle_brackets_are_dropped() -> None:
    assert parse(req("To: < sip:t.watson@example.org >"))["to"]["uri"] == "sip:t.watson@example.org"


@pytest.mark.parametrize(
    "header",
    [
        "CSeq: 314_159 OPTIONS",
        "CSeq: +1 OPTIONS",
        "CSeq: \u0661\u0662 OPTIONS",  # Arabic-Indic digits: int() reads 12
        "CSeq: 2147483648 OPTIONS",  # RFC 3261 §8.1.1.5: below 2**31
        "Content-Length: 1_0",
        "Content-Length: +0",
    ],
)
def test_numbers_must_be_ascii_digits_in_range(header: str) -> None:
    assert reason_of(req(header)) == "malformed"


def test_cseq_just_below_2_to_the_31_is_kept() -> None:
    assert parse(req("CSeq: 2147483647 OPTIONS"))["cseq"]["seq"] == 2147483647


@pytest.mark.parametrize("mf", ["7_0", "-1", "+70"])
def test_an_unreadable_max_forwards_is_null(mf: str) -> None:
    assert parse(req(f"Max-Forwards: {mf}"))["max_forwards"] is None


@pytest.mark.parametrize("code", ["\u0662\u0660\u0660", "099", "700", "2OO"])
def test_status_codes_are_three_ascii_digits_100_to_699(code: str) -> None:
    assert reason_of(req(start=f"SIP/2.0 {code} OK")) == "malformed"


def test_an_ipv6_via_host_without_brackets_is_kept_whole() -> None:
    (v,) = parse(req("Via: SIP/2.0/UDP 2001:db8::9:1:5070;branch=z9hG4bK1"))["via"]
    assert (v["host"], v["port"]) == ("2001:db8::9:1:5070", None)


def test_an_rtpmap_names_the_encoding_of_a_static_payload_type() -> None:
    sdp = (
        "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 18 0 4 101\r\n"
        "a=rtpmap:18 G729a/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    (m,) = parse_sdp(sdp)["media"]
    assert m["codecs"] == ["G729a/8000", "PCMU/8000", "G723/8000", "telephone-event/8000"]
