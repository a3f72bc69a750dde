"""parse_message against tshark, field by field, on varied messages and on real captures."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from otus.plugins.parser.sip import parse_message
from tests.infra.skips import requires_tool
from tests.infra.tshark import sip_messages
from tests.plugins.parser.sip.corpus import VARIED, sipp_messages

pytestmark = requires_tool("tshark")

DATA = Path(__file__).resolve().parents[4] / "tests" / "data"
TSHARK_FIELDS = (
    "sip.Method",
    "sip.Status-Line",
    "sip.r-uri",
    "sip.Call-ID",
    "sip.CSeq.seq",
    "sip.CSeq.method",
    "sip.from.display.info",
    "sip.from.addr",
    "sip.from.tag",
    "sip.to.display.info",
    "sip.to.addr",
    "sip.to.tag",
    "sip.Via.transport",
    "sip.Via.sent-by.address",
    "sip.Via.sent-by.port",
    "sip.Via.branch",
    "sip.Via.received",
    "sip.Via.rport",
    "sip.Contact",
    "sip.Max-Forwards",
    "sip.User-Agent",
    "sip.Server",
    "sip.Content-Type",
    "sip.Content-Length",
    "sip.P-Asserted-Identity",
    "sip.Reason",
    "sdp.connection_info.address",
    "sdp.media.media",
    "sdp.media.port",
    "sdp.media.proto",
    "sdp.media_attr",
)
_RTPMAP = re.compile(r"rtpmap:(\d+) (\S+)")


def write_pcap(path: Path, messages: list[bytes]) -> None:
    """Ethernet/IPv4/UDP 5060 frames, one message each."""
    from scapy.all import IP, UDP, Ether, wrpcap

    frames = [
        Ether() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=5060, dport=5060) / m
        for m in messages
    ]
    wrpcap(str(path), frames)


def tshark_fields(pcap: Path) -> list[dict[str, list[str]]]:
    """The values of TSHARK_FIELDS in each frame (absent fields missing, repeats kept)."""
    args = ["tshark", "-n", "-r", str(pcap), "-T", "json"]
    for f in TSHARK_FIELDS:
        args += ["-e", f]
    proc = subprocess.run(args, capture_output=True, timeout=120, check=True)
    frames = json.loads(proc.stdout.decode("utf-8", "replace"))
    return [f["_source"]["layers"] for f in frames]


def _unquote(display: str | None) -> str | None:
    """tshark keeps display names as written: drop quotes and quoted-pair backslashes."""
    if display is None:
        return None
    display = display.strip()
    if len(display) >= 2 and display[0] == display[-1] == '"':
        display = re.sub(r"\\(.)", r"\1", display[1:-1])
    return display or None


def from_tshark(layers: dict[str, list[str]]) -> dict[str, Any]:
    """The comparable view of one tshark-dissected message."""

    def one(field: str) -> str | None:
        values = layers.get(field)
        return values[0] if values else None

    def many(field: str) -> list[str]:
        return list(layers.get(field, []))

    status = one("sip.Status-Line")
    code = reason = None
    if status is not None:
        _, code, reason = status.split(" ", 2)
    rtpmap: dict[str, str] = {}
    for attr in many("sdp.media_attr"):
        m = _RTPMAP.fullmatch(attr)
        if m:
            rtpmap[m[1]] = m[2]
    ua = one("sip.User-Agent")
    return {
        "method": one("sip.Method"),
        "status_code": None if code is None else int(code),
        "reason": reason,
        "request_uri": one("sip.r-uri"),
        "call_id": one("sip.Call-ID"),
        "cseq": (int(one("sip.CSeq.seq") or -1), one("sip.CSeq.method")),
        "from": (_unquote(one("sip.from.display.info")), one("sip.from.addr"), one("sip.from.tag")),
        "to": (_unquote(one("sip.to.display.info")), one("sip.to.addr"), one("sip.to.tag")),
        "via_transports": many("sip.Via.transport"),
        "via_hosts": many("sip.Via.sent-by.address"),
        "via_ports": [int(p) for p in many("sip.Via.sent-by.port")],
        "via_branches": many("sip.Via.branch"),
        "via_received": many("sip.Via.received"),
        "via_rport": many("sip.Via.rport"),
        "contact": one("sip.Contact"),
        "max_forwards": None
        if one("sip.Max-Forwards") is None
        else int(one("sip.Max-Forwards") or 0),
        "user_agent": ua if ua is not None else one("sip.Server"),
        "content_type": one("sip.Content-Type"),
        "content_length": int(one("sip.Content-Length") or 0),
        "p_asserted_identity": one("sip.P-Asserted-Identity"),
        "reason_header": one("sip.Reason"),
        "sdp_connections": many("sdp.connection_info.address"),
        "sdp_media": list(
            zip(
                many("sdp.media.media"),
                map(int, many("sdp.media.port")),
                many("sdp.media.proto"),
                strict=True,
            )
        ),
        "rtpmap": rtpmap,
    }


def from_otus(r: dict[str, Any]) -> dict[str, Any]:
    """The same view of Otus's parse."""
    via = r["via"]
    sdp = r["sdp"] or {"connection": None, "media": []}
    conns = [sdp["connection"], *(m["connection"] for m in sdp["media"])]
    rtpmap = {}
    for m in sdp["media"]:
        for pt, codec in zip(m["payloads"], m["codecs"], strict=True):
            rtpmap[str(pt)] = codec
    return {
        "method": r["method"],
        "status_code": r["status_code"],
        "reason": r["reason"],
        "request_uri": r["request_uri"],
        "call_id": r["call_id"],
        "cseq": (r["cseq"]["seq"], r["cseq"]["method"]),
        "from": (r["from"]["display"], r["from"]["uri"], r["from"]["tag"]),
        "to": (r["to"]["display"], r["to"]["uri"], r["to"]["tag"]),
        "via_transports": [v["transport"] for v in via],
        "via_hosts": [v["host"] for v in via],
        "via_ports": [v["port"] for v in via if v["port"] is not None],
        "via_branches": [v["branch"] for v in via if v["branch"] is not None],
        "via_received": [v["received"] for v in via if v["received"] is not None],
        "via_rport": [str(v["rport"] or "rport") for v in via if v["rport"] is not None],
        "contact": r["contact"],
        "max_forwards": r["max_forwards"],
        "user_agent": r["user_agent"],
        "content_type": r["content_type"],
        "content_length": r["content_length"] or 0,
        "p_asserted_identity": r["p_asserted_identity"],
        "reason_header": r["reason_header"],
        "sdp_connections": [c for c in conns if c is not None],
        "sdp_media": [(m["type"], m["port"], m["proto"]) for m in sdp["media"]],
        "rtpmap": rtpmap,
    }


def _compare(messages: dict[str, bytes], tmp: Path) -> None:
    pcap = tmp / "corpus.pcap"
    write_pcap(pcap, list(messages.values()))
    dissected = tshark_fields(pcap)
    assert len(dissected) == len(messages)
    for (name, data), layers in zip(messages.items(), dissected, strict=True):
        want = from_tshark(layers)
        got = from_otus(parse_message(data))
        # tshark names only the rtpmap'd payload types; Otus also names static ones.
        got["rtpmap"] = {k: v for k, v in got["rtpmap"].items() if k in want["rtpmap"]}
        diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        assert not diff, f"{name}: (otus, tshark) differ: {diff}"


def test_varied_messages(tmp_path: Path) -> None:
    _compare(VARIED, tmp_path)


@requires_tool("sipp")
def test_sipp_builtin_scenarios(tmp_path: Path) -> None:
    msgs = sipp_messages()
    assert len(msgs) >= 10
    _compare({f"sipp-{i}": m for i, m in enumerate(msgs)}, tmp_path)


def udp_payloads(pcap: Path) -> list[bytes]:
    """The UDP payload of each datagram, IPv4 fragments reassembled (by scapy, not by Otus)."""
    from scapy.all import UDP, defragment, rdpcap

    out = []
    for frame in defragment(rdpcap(str(pcap))):
        if UDP in frame:
            out.append(bytes(frame[UDP].payload))
    return out


@pytest.mark.parametrize(
    "name",
    ["sip-udp4.pcap", "sip-udp6.pcap", "sip-any.pcap", "sip-udp4-vlan.pcap", "sip-udp4-frag.pcap"],
)
def test_real_captures(name: str) -> None:
    """sipp calls recorded by tcpdump (tests/data): the shared normalized fields agree."""
    pcap = DATA / name
    if not pcap.exists():
        pytest.skip(f"{pcap} not recorded (python -m tools.captures)")
    want = sip_messages(pcap, tcp_reassembly=False)
    got = []
    for payload in udp_payloads(pcap):
        r = parse_message(payload)
        got.append(
            {
                "method": r["method"],
                "status_code": r["status_code"],
                "call_id": r["call_id"],
                "cseq_seq": r["cseq"]["seq"],
                "cseq_method": r["cseq"]["method"],
                "from_tag": r["from"]["tag"],
                "to_tag": r["to"]["tag"],
                "user_agent": r["user_agent"],
                "content_length": r["content_length"],
            }
        )
    assert len(got) == len(want) > 0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == {k: w[k] for k in g}, f"message {i} of {name}"
