"""Self-tests of the hostile capture generator: deterministic, complete, readable by tshark."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.infra.hostile import write_fragment_flood, write_hostile
from tests.infra.skips import requires_tool
from tests.infra.tshark import sip_messages
from tools.pcapio import read_pcap


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    """Two runs with one seed write identical files; another seed differs."""
    a, b, c = tmp_path / "a.pcap", tmp_path / "b.pcap", tmp_path / "c.pcap"
    write_hostile(a, seed=7)
    write_hostile(b, seed=7)
    write_hostile(c, seed=8)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]


def test_every_category_is_written(tmp_path: Path) -> None:
    """The summary counts what the file holds, across every family of bad input."""
    path = tmp_path / "h.pcap"
    s = write_hostile(path)
    _, frames = read_pcap(path)
    assert s.frames == len(frames) == sum(s.by_category.values())
    families = {
        "control",
        "truncated",
        "lying_ip_length",
        "lying_udp_length",
        "random_payload",
        "frag4_orphan",
        "frag4_overlap",
        "frag6_orphan",
        "frag6_overlap",
        "cl_huge",
        "tcp_via_10000",
        "header_line_60k_jumbo",
        "header_line_60k_fragmented",
        "via_1000_fragmented",
        "non_utf8_call_id",
        "vxlan_nesting_40",
        "fuzzed_flip",
    }
    assert families <= set(s.by_category)
    assert any(f.orig_len > len(f.data) for f in frames)  # snaplen-style truncation present
    assert max(len(f.data) for f in frames) > 60_000  # the jumbo 60 KB header line
    assert s.valid_sip == len(s.control_call_ids) == 13


@requires_tool("tshark")
def test_tshark_finds_every_control_message(tmp_path: Path) -> None:
    """The valid messages mixed into the corpus really are valid SIP (tshark agrees)."""
    path = tmp_path / "h.pcap"
    s = write_hostile(path, random_payloads=20, fuzzed=24)
    call_ids = [m["call_id"] for m in sip_messages(path)]
    for cid in set(s.control_call_ids):
        assert call_ids.count(cid) == s.control_call_ids.count(cid), cid


def test_fragment_flood(tmp_path: Path) -> None:
    """The flood writes the asked number of fragments, each of a distinct datagram."""
    path = tmp_path / "flood.pcap"
    assert write_fragment_flood(path, 2000) == 2000
    _, frames = read_pcap(path)
    keys: set[bytes] = set()
    for f in frames:
        if f.data[12:14] == b"\x08\x00":
            ip = f.data[14:]
            assert ip[6] & 0x20  # MF set: never completed
            keys.add(ip[12:16] + ip[4:6])
        else:
            keys.add(f.data[14 + 40 + 4 : 14 + 40 + 8])  # IPv6 fragment identification
    assert len(keys) == 2000
