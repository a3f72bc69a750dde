"""A live capture with two fanout workers: the daemon sums their counters, /metrics agrees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.infra.daemon import wait_for
from tests.infra.netns import veth
from tests.infra.skips import requires_root, requires_tool

pytestmark = [pytest.mark.slow, pytest.mark.root, requires_root]

N = 300
SENDER = """
import socket, sys
n = int(sys.argv[1])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
for i in range(n):
    msg = (
        f"OPTIONS sip:b@10.77.0.2 SIP/2.0\\r\\nVia: SIP/2.0/UDP 10.77.0.1;branch=z9hG4bK{i}\\r\\n"
        f"From: <sip:a@10.77.0.1>;tag={i}\\r\\nTo: <sip:b@10.77.0.2>\\r\\n"
        f"Call-ID: fan-{i}\\r\\nCSeq: 1 OPTIONS\\r\\nContent-Length: 0\\r\\n\\r\\n"
    )
    socks[i % 8].sendto(msg.encode(), ("10.77.0.2", 5060))
"""
FETCH = (
    "import sys, urllib.request; "
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())"
)


@requires_tool("promtool")
def test_two_workers_are_summed(daemon_factory: Any, netns_factory: Any, tmp_path: Path) -> None:
    a, b = netns_factory("fana"), netns_factory("fanb")
    veth(a, "fa0", b, "fb0")
    a.add_addr("fa0", "10.77.0.1/24")
    b.add_addr("fb0", "10.77.0.2/24")
    d = daemon_factory()
    d.start(prefix=b.cmd())
    out = tmp_path / "fan.jsonl"
    info = d.rpc(
        "task.create",
        {
            "id": "fan",
            "capture": {
                "type": "afpacket",
                "interfaces": ["fb0"],
                "bpf_filter": "udp port 5060",
                "fanout_size": 2,
                "fanout_mode": "lb",
            },
            "reporters": [{"type": "console", "config": {"path": str(out)}}],
        },
    )
    assert len(info["processes"]) == 2
    a.run(sys.executable, "-c", SENDER, str(N))
    st = wait_for(
        lambda: (s := d.rpc("task.status", ["fan"]))["stats"].get("report.records", 0) == N and s,
        what=f"{N} records",
    )
    per_worker = [w.get("capture.packets", 0) for w in st["workers"]]
    assert all(n > 0 for n in per_worker) and sum(per_worker) == N == st["stats"]["capture.packets"]

    url = d.rpc("daemon.status")["metrics_url"]
    text = b.run(sys.executable, "-c", FETCH, url)
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert got[("otus_capture_packets_total", (("interface", "fb0"), ("task", "fan")))] == N
    key = (
        "otus_sip_messages_total",
        (("method", "OPTIONS"), ("status_class", ""), ("task", "fan")),
    )
    assert got[key] == N
    assert got[("otus_task_workers", (("task", "fan"),))] == 2

    final = d.rpc("task.delete", ["fan"])
    assert final["stats"]["report.records"] == N == len(out.read_text().splitlines())
    d.stop()
