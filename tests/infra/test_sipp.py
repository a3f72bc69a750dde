"""Self-tests of the sipp scenarios and of recording real calls in namespaces."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from tests.infra.captures import CaptureSpec, missing_tools, record
from tests.infra.netns import sip_topology
from tests.infra.sipp import big_sdp, uac_scenario, uas_scenario
from tests.infra.skips import IS_ROOT
from tests.infra.tshark import sip_messages
from tools.pcapio import read_pcap

needs_tools = pytest.mark.skipif(
    not IS_ROOT or bool(missing_tools()),
    reason="needs root and " + ", ".join(missing_tools() or ["sipp/tcpdump/tshark"]),
)


def test_scenarios_are_well_formed() -> None:
    """The generated scenarios parse as XML and the padded INVITE is several KB."""
    for sdp in (0, 80):
        for doc in (uac_scenario(sdp), uac_scenario(sdp, compact=False), uas_scenario(sdp)):
            root = ET.fromstring(doc.split("\n", 2)[2])
            assert root.tag == "scenario"
    assert len(big_sdp(80)) > 4000
    invite = next(
        s.text or ""
        for s in ET.fromstring(uac_scenario(80).split("\n", 2)[2]).iter("send")
        if "INVITE sip:" in (s.text or "")
    )
    assert len(invite) > 4500


@needs_tools
def test_udp_calls_recorded(tmp_path: Path) -> None:
    """One varied call: 11 SIP messages in the expected order, with UA/Server headers."""
    path = record(CaptureSpec("t.pcap", calls=1), tmp_path)
    msgs = sip_messages(path)
    order = [m["method"] or m["status_code"] for m in msgs]
    assert order == ["OPTIONS", 200, "REGISTER", 200, "INVITE", 100, 180, 200, "ACK", "BYE", 200]
    assert {m["user_agent"].split("/")[0] for m in msgs} == {"Otus-UAC", "Otus-UAS"}


@needs_tools
def test_tcp_calls_use_one_connection_and_span_segments(tmp_path: Path) -> None:
    """sipp -t t1 over MTU 576: one connection; each INVITE needs several segments."""
    path = record(CaptureSpec("t.pcap", transport="tcp", mtu=576, sdp_lines=80), tmp_path)
    msgs = sip_messages(path)
    assert len(msgs) == 22
    assert len({(m["src_port"], m["dst_port"]) for m in msgs}) == 2  # one 4-tuple, 2 directions
    _, frames = read_pcap(path)
    assert max(len(f.data) for f in frames) <= 576 + 14


@needs_tools
def test_vlan_link_tags_both_directions(tmp_path: Path) -> None:
    """On the VLAN topology every captured SIP message carries VLAN 100, both ways."""
    path = record(CaptureSpec("t.pcap", vlan=100, sdp_lines=40, calls=1), tmp_path)
    msgs = sip_messages(path)
    assert len(msgs) == 11
    assert Counter(tuple(m["vlans"]) for m in msgs) == {(100,): 11}
    assert {m["src_ip"] for m in msgs} == {"10.47.0.1", "10.47.0.2"}


@needs_tools
def test_topology_cleans_up() -> None:
    """Namespaces of a topology (and the vlantag relay) are gone after the block."""
    import subprocess

    with sip_topology("clean", vlan=100) as topo:
        names = {topo.uac.name, topo.uas.name, topo.capture_ns.name}
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert not names & {line.split()[0] for line in out.stdout.splitlines() if line.strip()}
