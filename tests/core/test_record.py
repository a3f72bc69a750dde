"""The record contract's fast paths give the bytes of the plain definition, byte for byte."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from otus.core import record
from otus.core.packet import Encap, OutputPacket, Tunnel
from otus.core.record import TS_MAX_US, dumps, format_ts, record_bytes, to_record
from otus.decoder import Decoder
from otus.plugins.base import PluginContext
from otus.plugins.capture.pcapfile import read_batches
from otus.plugins.parser.sip import SipConfig, SipParser

DATA = Path(__file__).resolve().parents[1] / "data"


def reference_ts(ts_us: int) -> str:
    """The definition: RFC 3339, UTC, microseconds, Z."""
    if not 0 <= ts_us <= TS_MAX_US:
        # Outside 1970-9999 the millisecond is clamped (the fast path keeps the microseconds).
        ms = min(max(ts_us // 1000, 0), TS_MAX_US // 1000)
        ts_us = ms * 1000 + ts_us % 1000
    sec, us = divmod(ts_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{us:06d}Z"


def reference(out: OutputPacket, task_id: str, agent_id: str) -> bytes:
    """The record as first written (the contract the tests of every reporter compare with)."""
    return orjson.dumps(
        {
            "ts": reference_ts(out.ts_us),
            "task_id": task_id,
            "agent_id": agent_id,
            "src_ip": out.src_ip,
            "dst_ip": out.dst_ip,
            "src_port": out.src_port,
            "dst_port": out.dst_port,
            "transport": {6: "tcp", 17: "udp"}.get(out.transport, str(out.transport)),
            "payload_type": out.payload_type,
            "labels": out.labels,
            "encap": record.encap_dict(out.encap),
            out.payload_type: out.payload,
        }
    )


def test_timestamps() -> None:
    for ts in (0, 1, 999, 1000, 999_999, 1_000_000, 1_795_315_633_123_456, -1, -1_000_001):
        assert format_ts(ts) == reference_ts(ts), ts
    assert format_ts(1_795_315_633_000_000) == "2026-11-22T02:47:13.000000Z"


def test_timestamps_outside_rfc3339_are_clamped_not_raised() -> None:
    """Before 1970 or after 9999 (a bad if_tsresol): the first or last millisecond, no error."""
    assert format_ts(TS_MAX_US) == "9999-12-31T23:59:59.999999Z"
    for ts in (TS_MAX_US + 1, 2**64 * 1_000_000, 10**40):
        assert format_ts(ts).startswith("9999-12-31T23:59:59.999"), ts
    for ts in (-1, -(2**63), -(10**40)):
        assert format_ts(ts).startswith("1970-01-01T00:00:00.000"), ts
    out = OutputPacket(2**64 * 1_000_000, "a", "b", 1, 2, 17, "sip", {}, {}, None)
    assert orjson.loads(record_bytes(out))["ts"] == to_record(out)["ts"] == format_ts(out.ts_us)


def test_the_millisecond_cache_stays_bounded() -> None:
    base = 1_795_315_633_000_000
    for i in range(record._MS_CACHE_MAX + 10):
        assert format_ts(base + i * 1000 + 7) == reference_ts(base + i * 1000 + 7)
    assert len(record._ms_cache) <= record._MS_CACHE_MAX


text = st.text(max_size=30)
encaps = st.none() | st.builds(
    Encap,
    vlans=st.lists(st.integers(0, 4095), max_size=2),
    tunnels=st.lists(
        st.builds(
            Tunnel,
            type=st.sampled_from(["vxlan", "gre", "geneve"]),
            src=text,
            dst=text,
            id=st.none() | st.integers(0, 2**24),
            vlans=st.lists(st.integers(0, 4095), max_size=2),
        ),
        max_size=2,
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    ts=st.integers(-(2**40), 2**53) | st.integers(-(2**70), 2**70),
    ips=st.tuples(text, text),
    ports=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
    transport=st.sampled_from([6, 17, 132]),
    payload=st.dictionaries(text, st.none() | st.integers(-(2**63), 2**63 - 1) | text, max_size=5),
    labels=st.dictionaries(text, text, max_size=4),
    encap=encaps,
    ids=st.tuples(text, text),
)
def test_fast_paths_match_the_definition(
    ts: int,
    ips: tuple[str, str],
    ports: tuple[int, int],
    transport: int,
    payload: dict[str, Any],
    labels: dict[str, str],
    encap: Encap | None,
    ids: tuple[str, str],
) -> None:
    out = OutputPacket(ts, *ips, *ports, transport, "sip", payload, labels, encap)
    want = reference(out, *ids)
    assert dumps(to_record(out, *ids)) == want
    assert record_bytes(out, *ids) == want


def test_real_messages_match_the_definition() -> None:
    outs: list[OutputPacket] = []
    for name in ("sip-udp4.pcap", "sip-udp6.pcap", "encap-vlan-vxlan-vlan.pcap", "encap-gre.pcap"):
        dec, sip = Decoder(), SipParser(SipConfig(), PluginContext())
        for batch in read_batches(str(DATA / name), 256):
            decoded: list[Any] = []
            dec.decode_batch(batch, decoded)
            for pkt in decoded:
                if sip.can_handle(pkt):
                    sip.handle(pkt, outs)
    assert len(outs) > 50
    assert any(o.encap is not None for o in outs)
    for o in outs:
        assert record_bytes(o, "t1", "node-a") == reference(o, "t1", "node-a")
        assert dumps(to_record(o, "t1", "node-a")) == reference(o, "t1", "node-a")
