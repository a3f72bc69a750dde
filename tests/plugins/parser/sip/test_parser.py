"""The sip parser plugin: config, can_handle, records and labels, counters, TCP segments."""

from __future__ import annotations

import orjson
import pydantic
import pytest

from otus.core.packet import IPPROTO_TCP, IPPROTO_UDP, DecodedPacket, Encap, OutputPacket, Tunnel
from otus.core.record import to_record
from otus.core.stats import drops
from otus.plugins.base import Parser, PluginContext
from otus.plugins.parser import PARSERS
from otus.plugins.parser.sip import SipConfig, SipParser
from otus.plugins.parser.sip.message import METHODS
from tests.plugins.parser.sip.corpus import INVITE_SDP, OK_3VIA, OPTIONS, REGISTER, build
from tests.plugins.parser.sip.test_message import KEYS, req


def pkt(
    payload: bytes,
    *,
    sport: int = 5070,
    dport: int = 5060,
    transport: int = IPPROTO_UDP,
    encap: Encap | None = None,
) -> DecodedPacket:
    return DecodedPacket(
        1_700_000_000_123_456, "10.0.0.1", "10.0.0.2", sport, dport, transport, payload, encap
    )


def parser(**options: object) -> SipParser:
    return SipParser(SipConfig.model_validate(options), PluginContext())


def run(p: SipParser, *packets: DecodedPacket) -> list[OutputPacket]:
    out: list[OutputPacket] = []
    for x in packets:
        if p.can_handle(x):
            p.handle(x, out)
    return out


def nonzero(p: SipParser) -> dict[str, int]:
    return {k: v for k, v in p.stats().items() if v}


class TestConfig:
    def test_registry_and_protocol(self) -> None:
        assert PARSERS["sip"] is SipParser
        assert SipParser.Config is SipConfig
        p: Parser = parser()
        assert p.stats()["parse.messages"] == 0

    def test_defaults(self) -> None:
        c = SipConfig()
        assert (c.ports, c.detect_by_content, c.sdp, c.keep_raw) == (
            [5060, 5080],
            True,
            True,
            False,
        )
        assert c.max_message_size == 65535
        assert (c.tcp.max_flows, c.tcp.max_stream_buffer, c.tcp.max_total_buffer) == (
            65536,
            131072,
            64 << 20,
        )
        assert (c.tcp.max_out_of_order, c.tcp.gap_timeout_ms, c.tcp.flow_idle_timeout_s) == (
            64,
            1000,
            300,
        )
        assert (c.dedup.enabled, c.dedup.window_ms) == (False, 200)

    def test_camel_case_like_every_spec_model(self) -> None:
        c = SipConfig.model_validate(
            {"detectByContent": False, "tcp": {"maxFlows": 100}, "dedup": {"windowMs": 50}}
        )
        assert (c.detect_by_content, c.tcp.max_flows, c.dedup.window_ms) == (False, 100, 50)

    @pytest.mark.parametrize(
        "options",
        [
            {"ports": [0]},
            {"ports": [70000]},
            {"ports": list(range(1, 40))},
            {"max_message_size": 10},
            {"max_message_size": 1 << 30},
            {"unknown": 1},
            {"tcp": {"max_flows": 0}},
            {"tcp": {"max_flows": 10_000_000}},
            {"tcp": {"max_total_buffer": 1 << 40}},
            {"tcp": {"max_out_of_order": 5000}},
            {"tcp": {"unknown": 1}},
            {"dedup": {"window_ms": 0}},
            {"dedup": {"max_entries": 1 << 30}},
        ],
    )
    def test_rejects(self, options: dict[str, object]) -> None:
        with pytest.raises(pydantic.ValidationError):
            SipConfig.model_validate(options)

    def test_schema_is_bounded(self) -> None:
        schema = SipConfig.model_json_schema(by_alias=False)
        props = schema["properties"]
        assert props["ports"]["maxItems"] == 32
        assert props["ports"]["items"]["maximum"] == 65535
        assert props["max_message_size"]["maximum"] == 1 << 20
        assert schema["additionalProperties"] is False
        defs = schema["$defs"]
        for model in ("TcpConfig", "DedupConfig"):
            assert defs[model]["additionalProperties"] is False
            for name, prop in defs[model]["properties"].items():
                if prop.get("type") == "integer":
                    assert "minimum" in prop and "maximum" in prop, (model, name)


class TestCanHandle:
    def test_ports_either_direction(self) -> None:
        p = parser(ports=[5060], detect_by_content=False)
        assert p.can_handle(pkt(b"anything", sport=5060, dport=40000))
        assert p.can_handle(pkt(b"anything", sport=40000, dport=5060))
        assert not p.can_handle(pkt(OPTIONS, sport=40000, dport=40001))
        assert not p.can_handle(pkt(b"", sport=5060))  # pure TCP ACKs, empty datagrams

    @pytest.mark.parametrize(
        ("payload", "expected"),
        [
            (OPTIONS, True),
            (OK_3VIA, True),
            (b"FOO sip:x SIP/2.0\n", True),
            (b"\x80\x00\x12\x34" + bytes(160), False),  # RTP
            (b"GET / HTTP/1.1\r\n\r\n", False),
            (b"SIP/2.0", False),
            (b"INVITE sip:" + b"x" * 3000, False),
            (b"\x16\x03\x01\x02\x00", False),  # TLS
        ],
    )
    def test_detect_by_content(self, payload: bytes, expected: bool) -> None:
        assert parser().can_handle(pkt(payload, sport=40000, dport=40001)) is expected
        assert not parser(detect_by_content=False).can_handle(pkt(payload, sport=1, dport=2))


class TestRecords:
    def test_request(self) -> None:
        encap = Encap(vlans=[100], tunnels=[Tunnel("vxlan", "192.0.2.1", "192.0.2.2", 42)])
        p = parser()
        (o,) = run(p, pkt(INVITE_SDP, encap=encap))
        assert (o.ts_us, o.src_ip, o.dst_ip, o.src_port, o.dst_port, o.transport) == (
            1_700_000_000_123_456,
            "10.0.0.1",
            "10.0.0.2",
            5070,
            5060,
            IPPROTO_UDP,
        )
        assert o.encap is encap
        assert o.payload_type == "sip"
        assert set(o.payload) == KEYS
        assert o.labels == {
            "sip.method": "INVITE",
            "sip.call_id": "a84b4c76e66710@pc33.atlanta.example.com",
            "sip.from_uri": "sip:alice@atlanta.example.com",
            "sip.to_uri": "sip:bob@biloxi.example.com",
            "sip.cseq_method": "INVITE",
        }
        rec = orjson.loads(orjson.dumps(to_record(o, "t1", "a1")))
        assert rec["sip"] == o.payload
        assert rec["transport"] == "udp"
        assert rec["encap"] == {
            "vlans": [100],
            "tunnels": [{"type": "vxlan", "src": "192.0.2.1", "dst": "192.0.2.2", "id": 42}],
        }

    def test_response_labels(self) -> None:
        (o,) = run(parser(), pkt(OK_3VIA, sport=5060, dport=5070))
        assert o.labels == {
            "sip.status_code": "200",
            "sip.call_id": "a84b4c76e66710@pc33.atlanta.example.com",
            "sip.from_uri": "sip:alice@atlanta.example.com",
            "sip.to_uri": "sip:bob@biloxi.example.com",
            "sip.cseq_method": "INVITE",
        }
        assert "sip.method" not in o.labels

    def test_keep_raw(self) -> None:
        (o,) = run(parser(keep_raw=True), pkt(OPTIONS))
        assert o.payload["raw"] == OPTIONS.decode()
        (o,) = run(parser(), pkt(OPTIONS))
        assert "raw" not in o.payload

    def test_sdp_option(self) -> None:
        (o,) = run(parser(sdp=False), pkt(INVITE_SDP))
        assert o.payload["sdp"] is None


class TestCounters:
    def test_methods_and_status_classes(self) -> None:
        p = parser()
        msgs = [INVITE_SDP, OPTIONS, REGISTER, OK_3VIA]
        msgs += [req(start=f"{m} sip:b@y SIP/2.0") for m in sorted(METHODS)]
        msgs += [req(start=f"SIP/2.0 {c} X") for c in (100, 180, 302, 404, 500, 503, 603)]
        msgs += [req(start="FOO sip:b@y SIP/2.0"), req(start="invite sip:b@y SIP/2.0")]
        out = run(p, *map(pkt, msgs))
        assert len(out) == len(msgs)
        s = p.stats()
        assert s["parse.messages"] == len(msgs)
        assert s["sip.request.INVITE"] == 2
        assert s["sip.request.OPTIONS"] == 2
        assert s["sip.request.REGISTER"] == 2
        assert all(s["sip.request." + m] >= 1 for m in METHODS)
        assert s["sip.request.other"] == 2
        assert (s["sip.response.1xx"], s["sip.response.2xx"], s["sip.response.3xx"]) == (2, 1, 1)
        assert (s["sip.response.4xx"], s["sip.response.5xx"], s["sip.response.6xx"]) == (1, 2, 1)
        assert not drops(s)

    def test_every_drop_reason(self) -> None:
        p = parser(max_message_size=1024)
        bad = {
            "malformed": [b"hello", req("Via: nonsense")],
            "missing_header": [build("BYE sip:b@y SIP/2.0", ["Call-ID: x"])],
            "truncated": [OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 99999999")],
            "too_large": [OPTIONS + b"x" * 2000],
            "keepalive": [b"\r\n\r\n", b"\r\n", b"\x00\x00\x00\x00"],
        }
        for payloads in bad.values():
            assert run(p, *map(pkt, payloads)) == []
        assert nonzero(p) == {f"parse.drop.{k}": len(v) for k, v in bad.items()}

    def test_a_parser_bug_is_counted_not_raised(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import otus.plugins.parser.sip.parser as mod

        def boom(data: bytes, sdp: bool = True) -> dict[str, object]:
            raise RuntimeError("bug")

        monkeypatch.setattr(mod, "parse_message", boom)
        p = parser()
        assert run(p, pkt(OPTIONS)) == []
        assert nonzero(p) == {"parse.drop.error": 1}


class TestTcpSegments:
    """Segments of one TCP stream (consecutive sequence numbers); the stream layer is in
    test_stream.py, these are the parser-level outcomes."""

    def run_stream(self, p: SipParser, *payloads: bytes) -> list[OutputPacket]:
        out: list[OutputPacket] = []
        syn = pkt(b"", transport=IPPROTO_TCP)
        syn.tcp_seq, syn.tcp_flags = 999, 0x02
        assert p.can_handle(syn)
        p.handle(syn, out)
        seq = 1000
        for i, payload in enumerate(payloads):
            x = pkt(payload, transport=IPPROTO_TCP)
            x.ts_us += i
            x.tcp_seq = seq
            seq += len(payload)
            if p.can_handle(x):
                p.handle(x, out)
        return out

    def parse_counts(self, p: SipParser) -> dict[str, int]:
        return {k: v for k, v in nonzero(p).items() if k.startswith(("parse.", "sip."))}

    def test_several_whole_messages(self) -> None:
        p = parser()
        out = self.run_stream(p, OPTIONS + b"\r\n" + INVITE_SDP + OK_3VIA)
        assert [o.payload["method"] for o in out] == ["OPTIONS", "INVITE", None]
        assert all(o.transport == IPPROTO_TCP for o in out)
        assert out[1].payload["sdp"]["media"][0]["port"] == 49172
        assert self.parse_counts(p) == {
            "parse.messages": 3,
            "sip.request.OPTIONS": 1,
            "sip.request.INVITE": 1,
            "sip.response.2xx": 1,
        }

    def test_whole_then_rest_in_the_next_segment(self) -> None:
        p = parser()
        out = self.run_stream(p, REGISTER + INVITE_SDP[:300], INVITE_SDP[300:])
        assert [o.payload["method"] for o in out] == ["REGISTER", "INVITE"]
        assert out[1].ts_us == out[0].ts_us + 1  # the segment that completed it

    def test_incomplete_at_the_end_is_held(self) -> None:
        p = parser()
        assert self.run_stream(p, INVITE_SDP[:-20]) == []
        assert p.stats()["tcp.buffered_bytes"] == len(INVITE_SDP) - 20
        out: list[OutputPacket] = []
        p.drain(out)  # the capture ends: the partial message is counted, not reported
        assert out == []
        assert self.parse_counts(p) == {"parse.drop.tcp_closed": 1}
        assert p.stats()["tcp.buffered_bytes"] == 0

    def test_continuation_without_a_start(self) -> None:
        p = parser()
        x = pkt(INVITE_SDP[400:], transport=IPPROTO_TCP)  # the capture started mid-message
        out: list[OutputPacket] = []
        p.handle(x, out)
        assert out == []
        assert self.parse_counts(p) == {"parse.drop.tcp_resync": 1}
        assert p.stats()["tcp.bytes_skipped"] > 0

    def test_no_content_length(self) -> None:
        p = parser()
        no_len = build("OPTIONS sip:b@y SIP/2.0", ["Call-ID: x"], content_length=False)
        out = self.run_stream(p, no_len + OPTIONS)
        assert [o.payload["method"] for o in out] == ["OPTIONS"]  # resynchronised after it
        assert self.parse_counts(p) == {
            "parse.drop.tcp_framing": 1,
            "parse.messages": 1,
            "sip.request.OPTIONS": 1,
        }

    def test_compact_length_and_bad_messages_inside(self) -> None:
        p = parser()
        compact = OPTIONS.replace(b"Content-Length: 0", b"l:0")
        bad = build("OPTIONS sip:b@y SIP/2.0", ["Call-ID: x"])
        out = self.run_stream(p, compact + bad + OPTIONS)
        assert len(out) == 2
        assert self.parse_counts(p) == {
            "parse.messages": 2,
            "sip.request.OPTIONS": 2,
            "parse.drop.missing_header": 1,
        }

    def test_keepalives(self) -> None:
        p = parser()
        out = self.run_stream(p, b"\r\n\r\n", b"\r\n", b"\r\n\r\n" + OPTIONS + b"\r\n")
        assert [o.payload["method"] for o in out] == ["OPTIONS"]
        assert self.parse_counts(p) == {
            "parse.drop.keepalive": 2,
            "parse.messages": 1,
            "sip.request.OPTIONS": 1,
        }
        assert p.stats()["tcp.bytes_keepalive"] == 12

    def test_oversized_message_in_segment(self) -> None:
        p = parser(max_message_size=600)
        out = self.run_stream(p, INVITE_SDP + OPTIONS)
        assert [o.payload["method"] for o in out] == ["OPTIONS"]
        assert p.stats()["parse.drop.too_large"] == 1
