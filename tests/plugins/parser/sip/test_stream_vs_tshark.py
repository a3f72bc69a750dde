"""SIP over TCP against tshark: real sipp streams rewritten by scapy (tools/tcpmangle.py, and
tools/wsip.py for WebSocket), and a fresh many-call recording (root).

- Re-cut or wrapped streams, nothing lost: ``otus run -r`` equals tshark's dissection
  message by message, times included.
- Shuffled, duplicated, overlapping and dropped segments: every real message tshark
  reassembles (with or without its out-of-order reassembly) Otus reports; Otus reports no
  message twice and nothing that was not sent; what it could not report, counters explain.
  tshark reports fewer: without ``tcp.reassemble_out_of_order`` (off by default) a message
  whose segments arrive out of order or overlapping is not reassembled, and with it some
  overlaps still defeat it; it also dissects start lines cut by a lost segment ("EGISTER"),
  which are not real messages and are left out of the comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.infra.skips import requires_tool
from tests.infra.tshark import diff_messages, normalize_otus, sip_messages
from tests.plugins.parser.sip.tcp import byte_identity, run_otus
from tools.pcapio import write_pcap
from tools.tcpmangle import mangle_file
from tools.wsip import WsOptions, sip_over_websocket

pytestmark = requires_tool("tshark")

DATA = Path(__file__).resolve().parents[4] / "tests" / "data"
SRC = DATA / "sip-tcp-mtu576.pcap"  # sipp -t t1: 3 calls, INVITEs over 9 segments
OOO = ("tcp.reassemble_out_of_order:TRUE",)


def key(m: dict[str, Any]) -> tuple[Any, ...]:
    return (m["call_id"], m["cseq_seq"], m["cseq_method"], m["method"], m["status_code"])


def no_ts(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "ts_us"}


LOSSLESS = {
    "several-messages-per-segment": {"resegment": (1200, 1460)},
    "tiny-segments": {"resegment": (1, 40)},
    "random-cuts": {"resegment": (1, 1400), "seed": 2},
    "seq-wraparound": {"seq_offset": (1 << 32) - 3000},
    "recut-and-wraparound": {"resegment": (1, 600), "seq_offset": (1 << 32) - 5000, "seed": 3},
}


@pytest.mark.parametrize("case", sorted(LOSSLESS))
def test_recut_streams_equal_tshark(case: str, tmp_path: Path) -> None:
    """The same bytes in other segments: the same messages, at the same times."""
    path = tmp_path / f"{case}.pcap"
    mangle_file(SRC, path, **LOSSLESS[case])  # type: ignore[arg-type]
    want = sip_messages(path)
    assert len(want) == 33
    run = run_otus(path)
    got = [normalize_otus(r) for r in run.records]
    assert got == want, diff_messages(got, want)
    byte_identity(run.counters)
    assert run.counters["tcp.bytes"] == run.counters["tcp.bytes_sip"]


MANGLED = {
    "shuffled": {"shuffle": 0.3},
    "duplicated": {"duplicate": 0.4},
    "overlapping": {"overlap": 0.4},
    "dropped": {"drop": 0.1},
    "everything": {
        "resegment": (1, 1500),
        "duplicate": 0.15,
        "overlap": 0.15,
        "shuffle": 0.15,
        "drop": 0.05,
    },
}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("case", sorted(MANGLED))
def test_mangled_streams(case: str, seed: int, tmp_path: Path) -> None:
    """Everything tshark still reassembles is reported; nothing twice, nothing invented."""
    path = tmp_path / f"{case}-{seed}.pcap"
    report = mangle_file(SRC, path, seed=seed, **MANGLED[case])  # type: ignore[arg-type]
    sent = {key(m): no_ts(m) for m in sip_messages(SRC)}
    tshark = [m for p in ((), OOO) for m in sip_messages(path, prefs=p) if key(m) in sent]
    run = run_otus(path)
    got = [normalize_otus(r) for r in run.records]
    got_keys = [key(m) for m in got]
    assert len(set(got_keys)) == len(got_keys), "a message reported twice"
    for m in got:
        assert no_ts(m) == sent.get(key(m)), f"not a message that was sent: {m}"
    missing = {key(m) for m in tshark} - set(got_keys)
    assert not missing, f"tshark reassembled, otus did not: {sorted(missing)}"
    c = run.counters
    byte_identity(c)
    lost = len(sent) - len(got)
    if lost:  # why: a hole, or a message that was still incomplete when the flow ended
        assert c.get("parse.tcp_gap", 0) + c.get("parse.tcp_closed", 0) >= 1, c
        assert report.dropped, "messages lost without a dropped segment"
    if report.duplicated:
        assert c.get("tcp.bytes_duplicate", 0) > 0
    if report.dropped == 0:
        assert lost == 0


def ws_capture(tmp_path: Path, name: str, opts: WsOptions, src: str) -> Path:
    path = tmp_path / name
    write_pcap(path, sip_over_websocket(DATA / src, opts))
    return path


WS = {
    "text-frames": (WsOptions(), "sip-udp4.pcap"),
    "fragments-pings-small-segments": (
        WsOptions(fragments=4, pings=True, mss=300),
        "sip-udp4-frag.pcap",
    ),
    "binary-frames-several-per-segment": (WsOptions(binary=True, mss=4000), "sip-udp4.pcap"),
}


@pytest.mark.parametrize("case", sorted(WS))
def test_sip_over_websocket_equals_tshark(case: str, tmp_path: Path) -> None:
    """RFC 7118 on port 80: handshake, masked client frames, fragments, control frames."""
    opts, src = WS[case]
    path = ws_capture(tmp_path, f"{case}.pcap", opts, src)
    want = sip_messages(path)
    assert len(want) == len(sip_messages(DATA / src)) > 0
    run = run_otus(path)
    got = [normalize_otus(r) for r in run.records]
    assert got == want, diff_messages(got, want)
    c = run.counters
    assert c["tcp.websocket_handshakes"] == 2
    assert c["tcp.websocket_frames"] >= len(want)
    byte_identity(c)


def test_websocket_handshake_across_segments_needs_the_port(tmp_path: Path) -> None:
    """A handshake cut into tiny segments is found on a listed port (not by content)."""
    path = ws_capture(tmp_path, "ws-tiny.pcap", WsOptions(mss=40), "sip-udp4.pcap")
    want = sip_messages(path)
    task = {
        "id": "ws",
        "capture": {"type": "pcap", "path": str(path)},
        "parsers": [{"type": "sip", "config": {"ports": [5060, 80]}}],
    }
    got = [normalize_otus(r) for r in run_otus(path, task=task).records]
    assert got == want, diff_messages(got, want)


@pytest.mark.root
@pytest.mark.slow
def test_many_calls_over_one_connection(tmp_path: Path) -> None:
    """A fresh recording: sipp -t t1, 100 calls at 100/s over one TCP connection; as recorded
    and re-cut into segments carrying several messages each."""
    from tests.infra.captures import missing_tools, tcpdump
    from tests.infra.netns import sip_topology
    from tests.infra.sipp import run_calls

    if missing_tools():
        pytest.skip(f"needs {', '.join(missing_tools())}")
    path = tmp_path / "many.pcap"
    with sip_topology("tcpmany", ipv6=False) as topo:
        with tcpdump(topo.capture_ns, topo.capture_if, path):
            run = run_calls(topo, tmp_path / "sipp", calls=100, transport="tcp", rate=100)
        assert run.ok, run.logs()
    recut = tmp_path / "many-recut.pcap"
    mangle_file(path, recut, resegment=(1000, 4000), seed=4)
    for p in (path, recut):
        want = sip_messages(p)
        assert len(want) == 1100
        got = [normalize_otus(r) for r in run_otus(p).records]
        assert got == want, diff_messages(got, want)
