"""`otus run -r FILE` equals tshark's SIP dissection, message by message, on real captures.

Committed captures (tests/data, examples/) always; fresh ones recorded now from sipp calls in
network namespaces when root with sipp/tcpdump (the ``recorded_captures`` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.infra.captures import COMMITTED
from tests.infra.skips import requires_tool
from tests.infra.tshark import diff_messages, normalize_otus, sip_messages
from tools.wrap import KINDS

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CAPTURES = sorted(p.name for p in DATA.glob("*.pcap"))
EXAMPLE = ROOT / "examples" / "sipp-uac-uas.pcap"

pytestmark = requires_tool("tshark")


def otus_records(path: Path, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Run ``otus run -r PATH --format json`` and return its records; it must exit 0."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "otus", "run", "-r", str(path), "--format", "json"],
        capture_output=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"otus run exited {proc.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def assert_same_as_tshark(path: Path) -> list[dict[str, Any]]:
    """Equal counts, equal normalized fields, in the same order; returns the records."""
    want = sip_messages(path)
    assert want, f"tshark sees no SIP in {path}"
    records = otus_records(path)
    assert all(r.get("payload_type") == "sip" for r in records)
    got = [normalize_otus(r) for r in records]
    assert got == want, diff_messages(got, want)
    return records


@pytest.mark.parametrize("name", CAPTURES)
def test_committed_capture(name: str) -> None:
    """Every committed capture: otus reports exactly what tshark dissects."""
    assert_same_as_tshark(DATA / name)


def test_example_capture() -> None:
    """The `make demo` capture."""
    assert_same_as_tshark(EXAMPLE)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_encapsulation_context(kind: str) -> None:
    """Encapsulated captures: the record's encap has the kind's VLAN ids and tunnel layers."""
    k = KINDS[kind]
    records = assert_same_as_tshark(DATA / f"encap-{kind}.pcap")
    for r in records:
        encap = r["encap"]
        assert encap.get("vlans", []) == list(k.outer_vlans)
        tunnels = encap.get("tunnels", [])
        assert [(t["type"], t.get("id")) for t in tunnels] == list(k.tunnels)
        if tunnels:
            assert tunnels[0].get("vlans", []) == list(k.inner_vlans)
            assert {tunnels[0]["src"], tunnels[0]["dst"]} == {"192.0.2.10", "192.0.2.20"}


def test_recorded_vlan_and_vxlan_context() -> None:
    """Captures recorded on a VLAN link and over kernel VXLAN carry that context."""
    for r in otus_records(DATA / "sip-udp4-vlan.pcap"):
        assert r["encap"] == {"vlans": [100]}
    for r in otus_records(DATA / "sip-vxlan.pcap"):
        (t,) = r["encap"]["tunnels"]
        assert (t["type"], t["id"], {t["src"], t["dst"]}) == (
            "vxlan",
            4242,
            {"10.47.1.1", "10.47.1.2"},
        )


def test_bare_captures_have_empty_encap() -> None:
    """No VLAN, no tunnel: ``encap`` is ``{}``."""
    for name in ("sip-udp4.pcap", "sip-udp6-frag.pcap", "sip-any-sll.pcap"):
        assert all(r["encap"] == {} for r in otus_records(DATA / name))


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in COMMITTED if not s.linktype])
def test_fresh_capture(name: str, recorded_captures: dict[str, Path]) -> None:
    """The same comparison on captures recorded now (root, sipp, tcpdump; else skipped)."""
    assert_same_as_tshark(recorded_captures[name])
