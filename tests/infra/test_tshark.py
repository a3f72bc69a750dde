"""Self-tests of the tshark reference: field names, counts of the committed captures, shapes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from otus.core.packet import IPPROTO_TCP, IPPROTO_UDP, Encap, OutputPacket, Tunnel
from otus.core.record import dumps, to_record
from tests.infra.skips import requires_tool
from tests.infra.tshark import FIELDS, diff_messages, normalize_otus, sip_messages

DATA = Path(__file__).resolve().parents[1] / "data"
MANIFEST: dict[str, dict[str, int]] = json.loads((DATA / "manifest.json").read_text())

pytestmark = requires_tool("tshark")


def test_field_names_exist_in_installed_tshark() -> None:
    """Every tshark field the normalizer reads is one this tshark knows."""
    out = subprocess.run(["tshark", "-G", "fields"], capture_output=True, text=True, check=True)
    known = {line.split("\t")[2] for line in out.stdout.splitlines() if line.startswith("F\t")}
    used = {
        "sip.Method",
        "sip.Status-Code",
        "sip.Call-ID",
        "sip.CSeq.seq",
        "sip.CSeq.method",
        "sip.from.tag",
        "sip.to.tag",
        "sip.User-Agent",
        "sip.Server",
        "sip.Content-Length",
        "vlan.id",
        "ieee8021ad.id",
        "erspan.version",
        "frame.time_epoch",
        "ip.src",
        "ipv6.src",
        "udp.srcport",
        "tcp.srcport",
    }
    assert used <= known, used - known


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_manifest_counts(name: str) -> None:
    """tshark dissects as many SIP messages from each committed capture as when it was made."""
    msgs = sip_messages(DATA / name)
    assert len(msgs) == MANIFEST[name]["messages"]
    assert all(set(m) == set(FIELDS) for m in msgs)
    assert all(m["call_id"] and m["cseq_seq"] is not None for m in msgs)


def test_tcp_capture_spans_segments_and_keeps_order() -> None:
    """Large INVITEs over TCP are reassembled: every call has its 5 requests and 6 responses."""
    msgs = sip_messages(DATA / "sip-tcp-mtu576.pcap")
    assert {m["transport"] for m in msgs} == {"tcp"}
    invites = [m for m in msgs if m["method"] == "INVITE"]
    assert invites and all(m["content_length"] > 4000 for m in invites)
    # Without TCP reassembly tshark reports an INVITE at its first segment, not its last.
    assert sip_messages(DATA / "sip-tcp-mtu576.pcap", tcp_reassembly=False) != msgs


def test_fragmented_invites_are_reassembled() -> None:
    """The large INVITEs of the fragment captures come out whole, at the last fragment's time."""
    for name in ("sip-udp4-frag.pcap", "sip-udp6-frag.pcap"):
        invites = [m for m in sip_messages(DATA / name) if m["method"] == "INVITE"]
        assert len(invites) == 2 and all(m["content_length"] > 4000 for m in invites)


def test_linux_cooked_captures_match_the_ethernet_view() -> None:
    """The SLL and SLL2 captures hold the same kinds of messages as an Ethernet capture."""
    for name in ("sip-any.pcap", "sip-any-sll.pcap", "sip-any-sll2.pcap"):
        msgs = sip_messages(DATA / name)
        assert len(msgs) == 22
        assert {m["method"] for m in msgs} == {None, "OPTIONS", "REGISTER", "INVITE", "ACK", "BYE"}


def test_vlan_and_kernel_vxlan_captures() -> None:
    """Recorded VLAN and VXLAN captures show their tags/tunnels on every message."""
    assert {tuple(m["vlans"]) for m in sip_messages(DATA / "sip-udp4-vlan.pcap")} == {(100,)}
    assert {tuple(m["tunnels"]) for m in sip_messages(DATA / "sip-vxlan.pcap")} == {("vxlan",)}


def _as_record(m: dict[str, Any], n_outer: int | None = None) -> dict[str, Any]:
    """The record ``otus.core.record.to_record`` builds for a message with tshark's values."""
    vlans = m["vlans"]
    n = len(vlans) if n_outer is None else n_outer
    tunnels = [Tunnel(t, "192.0.2.10", "192.0.2.20") for t in m["tunnels"]]
    if tunnels and vlans[n:]:
        tunnels[0].vlans = vlans[n:]
    encap = Encap(vlans[:n], tunnels) if vlans or tunnels else None
    payload = {
        "method": m["method"],
        "status_code": m["status_code"],
        "call_id": m["call_id"],
        "cseq": {"seq": m["cseq_seq"], "method": m["cseq_method"]},
        "from": {"display": None, "uri": "sip:x@y", "tag": m["from_tag"]},
        "to": {"display": None, "uri": "sip:x@y", "tag": m["to_tag"]},
        "user_agent": m["user_agent"],
        "content_length": m["content_length"],
    }
    proto = IPPROTO_TCP if m["transport"] == "tcp" else IPPROTO_UDP
    out = OutputPacket(
        m["ts_us"],
        m["src_ip"],
        m["dst_ip"],
        m["src_port"],
        m["dst_port"],
        proto,
        "sip",
        payload,
        {},
        encap,
    )
    record: dict[str, Any] = json.loads(dumps(to_record(out, "task", "agent")))
    return record


def test_normalize_otus_round_trip() -> None:
    """A record carrying tshark's values normalizes back to exactly tshark's message."""
    for name in ("sip-udp6.pcap", "sip-tcp-mtu576.pcap", "encap-qinq-88a8.pcap"):
        msgs = sip_messages(DATA / name)
        assert [normalize_otus(_as_record(m)) for m in msgs] == msgs
    nested = sip_messages(DATA / "encap-vlan-vxlan-vlan.pcap")
    assert [normalize_otus(_as_record(m, 1)) for m in nested] == nested


def test_normalize_otus_flattens_tunnel_vlans() -> None:
    """VLANs inside a tunnel follow the outer ones, as tshark lists them."""
    rec = _as_record(sip_messages(DATA / "sip-udp4.pcap")[0])
    assert rec["encap"] == {}
    rec["encap"] = {
        "vlans": [10],
        "tunnels": [{"type": "vxlan", "src": "a", "dst": "b", "id": 4244, "vlans": [20]}],
    }
    n = normalize_otus(rec)
    assert n["vlans"] == [10, 20] and n["tunnels"] == ["vxlan"]


def test_diff_messages_names_the_field() -> None:
    """The assertion helper points at the differing field."""
    msgs = sip_messages(DATA / "sip-udp4.pcap")[:2]
    other = [dict(msgs[0]), dict(msgs[1], call_id="x")]
    assert "call_id" in diff_messages(other, msgs)
