"""The filter processor on real captures: what it drops is what tshark says matches, counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from otus.core.packet import OutputPacket
from otus.plugins.base import PluginContext
from otus.plugins.processor.filter import FilterConfig, FilterProcessor
from tests.infra.cli import ROOT, run_otus
from tests.infra.skips import requires_tool
from tests.infra.tshark import normalize_otus, sip_messages

DATA = ROOT / "tests" / "data"


def _options(m: dict[str, Any]) -> bool:
    return "OPTIONS" in (m["method"], m["cseq_method"])


def _provisional(m: dict[str, Any]) -> bool:
    return m["status_code"] is not None and 100 <= m["status_code"] < 200


def _not_invite(m: dict[str, Any]) -> bool:
    return "INVITE" not in (m["method"], m["cseq_method"])


# (filter config, which of tshark's messages it must drop)
FILTERS = {
    "drop_methods": ({"drop_methods": ["options"]}, _options),
    "drop_if": ({"drop_if": "sip.status_code =~ '^1\\d\\d$'"}, _provisional),
    "keep_if": ({"keep_if": "sip.method == 'INVITE' or sip.cseq_method == 'INVITE'"}, _not_invite),
}


def _summary(stderr: str) -> dict[str, int]:
    line = next(x for x in stderr.splitlines() if x.startswith("otus: packets="))
    return {k: int(v) for k, v in (kv.split("=") for kv in line[len("otus: ") :].split())}


@requires_tool("tshark")
@pytest.mark.parametrize("capture", ["sip-udp4.pcap", "sip-tcp-mtu576.pcap", "sip-vxlan.pcap"])
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filter_drops_what_tshark_matches(tmp_path: Path, capture: str, name: str) -> None:
    config, dropped = FILTERS[name]
    task = tmp_path / "task.json"
    task.write_text(
        json.dumps(
            {
                "id": "f",
                "capture": {"type": "pcap", "path": "x"},
                "processors": [{"type": "filter", "config": config}],
            }
        )
    )
    proc = run_otus("run", "-r", str(DATA / capture), "--task", str(task), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    every = sip_messages(DATA / capture)
    want = [m for m in every if not dropped(m)]
    assert 0 < len(want) < len(every)  # the filter does something on this capture
    assert [normalize_otus(r) for r in records] == want
    for r in records:  # the labels the filter saw are the record's own fields
        sip, labels = r["sip"], r["labels"]
        assert labels.get("sip.method") == sip["method"]
        code = sip["status_code"]
        assert labels.get("sip.status_code") == (None if code is None else str(code))
        assert labels["sip.cseq_method"] == sip["cseq"]["method"]
        assert labels["sip.call_id"] == sip["call_id"]
        assert labels["sip.from_uri"] == sip["from"]["uri"]
        assert labels["sip.to_uri"] == sip["to"]["uri"]
    stats = _summary(proc.stderr)
    assert stats["process.filter"] == len(every) - len(want)
    assert stats["sip"] == stats["reported"] + stats["process.filter"]


def _message(method: str) -> OutputPacket:
    labels = {"sip.method": method, "sip.cseq_method": method}
    return OutputPacket(0, "10.0.0.1", "10.0.0.2", 5060, 5060, 17, "sip", {}, labels, None)


def test_any_method_the_parser_reports_can_be_dropped() -> None:
    """RFC 3261 method tokens allow ``.!%*_+`'~``: ``drop_methods: [X-CUSTOM.1]`` was refused."""
    config = FilterConfig(drop_methods=["x-custom.1", "A+B", "PUBLISH"])
    proc = FilterProcessor(config, PluginContext())
    kept = proc.process([_message(m) for m in ("X-CUSTOM.1", "A+B", "INVITE", "PUBLISH")])
    assert [p.labels["sip.method"] for p in kept] == ["INVITE"]
    assert proc.stats() == {"process.drop.filter": 3}


@pytest.mark.parametrize("method", ["", "IN VITE", "INVITÉ", "A" * 33, "IN\x1bVITE", "a/b"])
def test_what_is_not_a_method_is_refused(method: str) -> None:
    with pytest.raises(ValueError, match="not a SIP method"):
        FilterConfig(drop_methods=[method])
