"""The SDP summary: connection addresses, media lines, payload types and codecs."""

from __future__ import annotations

from typing import Any

import pytest

from otus.plugins.parser.sip import parse_message, parse_sdp
from otus.plugins.parser.sip.sdp import MAX_MEDIA
from tests.plugins.parser.sip.corpus import SDP, build

HEADERS = [
    "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
    "From: <sip:a@x>;tag=1",
    "To: <sip:b@y>",
    "Call-ID: sdp-1",
    "CSeq: 1 INVITE",
]


def media(body: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = parse_sdp(body)["media"]
    return out


def test_typical_offer() -> None:
    assert parse_sdp(SDP) == {
        "connection": "192.0.2.101",
        "media": [
            {
                "type": "audio",
                "port": 49172,
                "proto": "RTP/AVP",
                "payloads": [0, 8, 18, 101],
                "codecs": ["PCMU/8000", "PCMA/8000", "G729/8000", "telephone-event/8000"],
                "connection": None,
            }
        ],
    }


def test_audio_and_video_with_media_level_connections() -> None:
    body = (
        "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 2001:db8::10\r\nt=0 0\r\n"
        "m=audio 5004 RTP/SAVP 96 97 0\r\n"
        "c=IN IP4 198.51.100.7\r\n"
        "a=rtpmap:96 opus/48000/2\r\n"
        "a=rtpmap:97   AMR-WB/16000\r\n"
        "m=video 5006 RTP/AVPF 98\r\n"
        "a=rtpmap:98 H264/90000\r\n"
        "a=fmtp:98 profile-level-id=42e01f\r\n"
    )
    got = parse_sdp(body)
    assert got["connection"] == "2001:db8::10"
    audio, video = got["media"]
    assert audio["connection"] == "198.51.100.7"
    assert audio["codecs"] == ["opus/48000/2", "AMR-WB/16000", "PCMU/8000"]
    assert (video["type"], video["port"], video["proto"]) == ("video", 5006, "RTP/AVPF")
    assert (video["payloads"], video["codecs"], video["connection"]) == ([98], ["H264/90000"], None)


def test_static_types_without_rtpmap_and_unknown_dynamic() -> None:
    (m,) = media("v=0\r\nm=audio 7000 RTP/AVP 0 8 9 13 100\r\n")
    assert m["codecs"] == ["PCMU/8000", "PCMA/8000", "G722/8000", "CN/8000", None]


def test_port_count_zero_port_and_non_rtp_formats() -> None:
    body = (
        "v=0\r\nc=IN IP4 224.2.1.1/127/3\r\n"
        "m=audio 49170/2 RTP/AVP 0\r\n"
        "m=video 0 RTP/AVP 31\r\n"
        "m=image 6000 udptl t38\r\n"
        "m=message 7394 TCP/MSRP *\r\n"
        "m=audio 99999 RTP/AVP 0\r\n"
    )
    got = parse_sdp(body)
    assert got["connection"] == "224.2.1.1/127/3"
    ports = [m["port"] for m in got["media"]]
    assert ports == [49170, 0, 6000, 7394, None]
    assert [m["payloads"] for m in got["media"]] == [[0], [31], [], [], [0]]
    assert got["media"][2]["proto"] == "udptl"


def test_bare_lf_and_no_media() -> None:
    (m,) = media("v=0\nc=IN IP4 10.0.0.1\nm=audio 8000 RTP/AVP 8 101\na=rtpmap:101 tel/8000\n")
    assert (m["port"], m["codecs"]) == (8000, ["PCMA/8000", "tel/8000"])
    assert parse_sdp("v=0\r\ns=-\r\n") == {"connection": None, "media": []}


@pytest.mark.parametrize(
    "body",
    [
        "",
        "garbage",
        "m=",
        "\nm=audio",
        "\nm=audio x RTP/AVP 0 a b 300 -1 1e3 ٣\n",
        "\nc=IN\nm=audio 1 RTP/AVP 96\na=rtpmap:96\n",
        "\nm=audio 1 RTP/AVP 96\na=rtpmap:96 \r\n",
        "\nc=IN IP4\r\nt=0 0\r\n",
        "\nc=ATM NSAP x\r\n",
    ],
)
def test_garbage_never_raises(body: str) -> None:
    got = parse_sdp(body)
    assert set(got) == {"connection", "media"}


def test_odd_connection_lines() -> None:
    assert parse_sdp("v=0\r\nc=IN IP4\r\nt=0 0\r\n")["connection"] is None
    assert parse_sdp("v=0\r\nc= IN  IP4  10.9.9.9\r\n")["connection"] == "10.9.9.9"


def test_connection_is_a_line_not_a_substring() -> None:
    # "c=" inside an attribute is no connection line: the media has none, the session's stands.
    body = (
        "v=0\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 0\r\na=ssrc:1 cname:abc=IN IP4 203.0.113.9\r\n"
        "m=video 4002 RTP/AVP 96\r\na=fmtp:96 profile-level-id=42e01f\r\n"
        "c=IN IP6 2001:db8::7\r\n"
    )
    got = parse_sdp(body)
    assert got["connection"] == "192.0.2.1"
    assert [m["connection"] for m in got["media"]] == [None, "2001:db8::7"]
    assert parse_sdp("v=0\r\nc=IN IP4 198.51.100.1")["connection"] == "198.51.100.1"  # no CRLF


def test_media_are_bounded() -> None:
    body = "v=0\r\n" + "m=audio 1 RTP/AVP 0\r\n" * (MAX_MEDIA + 10)
    assert len(media(body)) == MAX_MEDIA


@pytest.mark.parametrize(
    "ctype", ["application/sdp", "Application/SDP", "application/sdp; charset=utf-8", "c"]
)
def test_content_types_that_are_sdp(ctype: str) -> None:
    header = "c: application/sdp" if ctype == "c" else f"Content-Type: {ctype}"
    r = parse_message(build("INVITE sip:b@y SIP/2.0", [*HEADERS, header], SDP))
    assert r["sdp"] is not None
    assert r["sdp"]["media"][0]["port"] == 49172


def test_not_sdp_or_disabled() -> None:
    r = parse_message(build("MESSAGE sip:b@y SIP/2.0", [*HEADERS, "c: text/plain"], SDP))
    assert r["sdp"] is None
    r = parse_message(build("INVITE sip:b@y SIP/2.0", [*HEADERS, "c: application/sdp"], SDP), False)
    assert r["sdp"] is None
    r = parse_message(build("INVITE sip:b@y SIP/2.0", HEADERS, SDP))  # no Content-Type
    assert r["sdp"] is None


def test_multipart_with_sdp_and_isup() -> None:
    body = (
        "--unique-boundary-1\r\n"
        "Content-Type: application/sdp\r\n\r\n"
        f"{SDP}"
        "--unique-boundary-1\r\n"
        "Content-Type: application/ISUP;version=itu-t92+\r\n"
        "Content-Disposition: signal;handling=required\r\n\r\n"
        "\x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\x21\x43\x00\x00\x03\r\n"
        "--unique-boundary-1--\r\n"
    )
    ctype = 'Content-Type: multipart/mixed; boundary="unique-boundary-1"'
    r = parse_message(build("INVITE sip:b@y SIP/2.0", [*HEADERS, ctype, "MIME-Version: 1.0"], body))
    assert r["content_type"] == 'multipart/mixed; boundary="unique-boundary-1"'
    assert r["sdp"]["connection"] == "192.0.2.101"
    r = parse_message(build("INVITE sip:b@y SIP/2.0", [*HEADERS, "c: multipart/mixed"], body))
    assert r["sdp"] is None  # no boundary parameter: the parts cannot be found
