"""Self-tests of tools/wrap.py: each encapsulated capture dissects to its source's SIP messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.infra.skips import requires_tool
from tests.infra.tshark import sip_messages
from tools.wrap import KINDS, wrap_file

DATA = Path(__file__).resolve().parents[1] / "data"


def _bare(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in ("vlans", "tunnels")} for m in msgs]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_committed_file_is_what_wrap_writes(kind: str, tmp_path: Path) -> None:
    """Regenerating from the committed sources gives the committed bytes (deterministic)."""
    fresh = wrap_file(KINDS[kind], DATA, tmp_path)
    assert fresh.read_bytes() == (DATA / fresh.name).read_bytes()


@requires_tool("tshark")
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tshark_sees_the_same_messages_inside(kind: str) -> None:
    """Same SIP messages as the source capture, with the kind's VLANs and tunnels on each."""
    k = KINDS[kind]
    got = sip_messages(DATA / f"encap-{kind}.pcap")
    want = sip_messages(DATA / k.source)
    assert len(got) == len(want) > 0
    assert _bare(got) == _bare(want)
    assert {(tuple(m["vlans"]), tuple(m["tunnels"])) for m in got} == {
        (k.vlans, tuple(t for t, _ in k.tunnels))
    }
