"""SIP over WebSocket (RFC 7118): the handshake, frame headers, unmasking, and what a stream
of frames yields (one SIP message per WebSocket message) or why it does not."""

from __future__ import annotations

import pytest

from otus.plugins.parser.sip.websocket import (
    handshake,
    is_upgrade_request,
    next_frame,
    unmask,
)
from tests.plugins.parser.sip.tcp import Conn, accounted, call_ids, message, parser, response
from tools.wsip import SWITCH, UPGRADE, frame

KEY = b"\x37\xfa\x21\x3d"


class TestHandshake:
    def test_request_and_answer(self) -> None:
        assert handshake(UPGRADE + b"rest", 0) == len(UPGRADE)
        assert handshake(SWITCH, 0) == len(SWITCH)
        assert is_upgrade_request(UPGRADE)

    @pytest.mark.parametrize(
        "data",
        [
            UPGRADE.replace(b"Sec-WebSocket-Protocol: sip", b"Sec-WebSocket-Protocol: chat"),
            UPGRADE.replace(b"Upgrade: websocket\r\n", b""),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            SWITCH.replace(b"101 Switching", b"400 Bad"),
            b"INVITE sip:x SIP/2.0\r\n\r\n",
        ],
    )
    def test_not_a_sip_websocket(self, data: bytes) -> None:
        assert handshake(data, 0) == -1
        assert not is_upgrade_request(data) or data.startswith(b"GET")

    def test_subprotocol_list(self) -> None:
        req = UPGRADE.replace(b"Protocol: sip", b"Protocol: chat, sip")
        assert handshake(req, 0) == len(req)

    def test_incomplete(self) -> None:
        assert handshake(UPGRADE[:30], 0) == 0
        assert handshake(b"GE", 0) == 0
        assert handshake(UPGRADE[:-2] + b"X" * 9000, 0) == -1  # no end within the bound


class TestFrames:
    @pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 100_000])
    def test_lengths(self, n: int) -> None:
        f = frame(1, b"a" * n, mask=KEY)
        op, fin, ps, pe, key = next_frame(f, 0)  # type: ignore[misc]
        assert (op, fin, pe - ps, key, pe) == (1, True, n, KEY, len(f))
        assert next_frame(f[: ps - 1], 0) is None  # the header not all there

    def test_unmask(self) -> None:
        data = bytes(range(256)) * 3 + b"xyz"
        masked = bytes(c ^ KEY[i % 4] for i, c in enumerate(data))
        assert unmask(KEY, masked) == data
        assert unmask(b"", data) == data
        assert unmask(KEY, b"") == b""


def ws_conn(**options: object) -> Conn:
    c = Conn(parser(**options), server=("10.0.0.2", 80), client=("10.0.0.1", 40000))
    c.handshake()
    c.stream(UPGRADE)
    c.stream(SWITCH, server=True)
    return c


class TestStream:
    def test_masked_fragmented_interleaved_control_frames(self) -> None:
        c = ws_conn()
        m1, m2 = message(1, body_lines=10), message(2)
        data = (
            frame(1, m1[:100], fin=False, mask=KEY)
            + frame(9, b"ping", mask=KEY)  # control frames may come between fragments
            + frame(0, m1[100:200], fin=False, mask=KEY)
            + frame(0, m1[200:], mask=KEY)
            + frame(2, m2, mask=KEY)
        )
        c.stream(data, 37)
        c.stream(frame(1, response(1)) + frame(10, b"pong") + frame(8, b"\x03\xe8"), server=True)
        assert call_ids(c.out) == ["call-1", "call-2", "call-1"]
        s = c.parser.stats()
        assert (s["tcp.websocket_handshakes"], s["tcp.websocket_frames"]) == (2, 8)
        assert s["parse.drop.ws_protocol"] == 0
        accounted(c.parser)

    def test_too_large_message_is_skipped_by_its_length(self) -> None:
        c = ws_conn(max_message_size=1024)
        big = message(1, body_lines=100)
        c.stream(
            frame(1, big[:700], fin=False, mask=KEY)
            + frame(0, big[700:], mask=KEY)
            + frame(1, message(2), mask=KEY),
            500,
        )
        assert call_ids(c.out) == ["call-2"]
        assert c.parser.stats()["parse.drop.too_large"] == 1
        accounted(c.parser)

    @pytest.mark.parametrize(
        "bad",
        [
            bytes([0xC1, 0x03]) + b"abc",  # RSV1: permessage-deflate, not supported
            bytes([0x83, 0x03]) + b"abc",  # reserved opcode
            frame(0, b"continuation without a start"),
            frame(9, b"p" * 126),  # control frames are at most 125 bytes
        ],
    )
    def test_protocol_errors_are_counted_and_skipped(self, bad: bytes) -> None:
        c = ws_conn()
        c.stream(bad + frame(1, message(1), mask=KEY))
        assert call_ids(c.out) == ["call-1"]
        assert c.parser.stats()["parse.drop.ws_protocol"] == 1
        accounted(c.parser)

    def test_a_gap_falls_back_to_sip_start_lines(self) -> None:
        c = ws_conn()
        c.stream(frame(1, response(1)), server=True)
        c.seq[1] += 500  # a lost segment
        c.stream(frame(1, response(2)) + frame(1, response(3)), server=True)
        c.parser.drain(c.out)
        assert call_ids(c.out)[0] == "call-1"
        s = c.parser.stats()
        assert s["parse.drop.tcp_gap"] == 1
        assert set(call_ids(c.out)) <= {"call-1", "call-2", "call-3"}
        accounted(c.parser)
