"""The daemon's /metrics: valid for promtool, and equal to what task.status and `otus run` say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from otus.core.stats import GAUGES
from tests.infra.daemon import EXAMPLE, ROOT, looping_task, wait_for
from tests.infra.skips import requires_tool

pytestmark = pytest.mark.slow


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: dict[Any, float], metric: str, **labels: str) -> float:
    return m[(metric, frozenset(labels.items()))]


def run_summary(path: Path) -> dict[str, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "otus", "run", "-r", str(path), "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    line = next(ln for ln in proc.stderr.splitlines() if "packets=" in ln)
    return {k: int(v) for k, v in re.findall(r"([\w.\-]+)=(\d+)", line)}


@requires_tool("promtool")
def test_metrics_pass_promtool_and_equal_task_counters(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory()
    d.start()
    d.rpc(
        "task.create",
        {
            "id": "file",
            "capture": {"type": "pcap", "path": str(EXAMPLE)},
            "reporters": [{"type": "console", "config": {"path": str(tmp_path / "f.jsonl")}}],
        },
    )
    d.rpc("task.create", looping_task("live", tmp_path / "live.jsonl", rate=500))
    wait_for(lambda: d.rpc("task.status", ["file"])["state"] == "stopped", what="file task end")
    wait_for(
        lambda: d.rpc("task.status", ["live"])["stats"].get("report.records", 0) > 50,
        what="live records",
    )
    text = d.metrics()
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr

    m = samples(text)
    stats = d.rpc("task.status", ["file"])["stats"]
    assert (
        value(m, "otus_capture_packets_total", task="file", interface="")
        == stats["capture.packets"]
    )
    for stage, key in [
        ("capture", "capture.packets"),
        ("decode", "decode.packets"),
        ("parse", "parse.messages"),
        ("report", "report.records"),
    ]:
        assert value(m, "otus_pipeline_packets_total", task="file", stage=stage) == stats[key]
    for key, v in stats.items():
        if ".drop." in key:
            stage, _, reason = key.partition(".drop.")
            assert (
                value(m, "otus_capture_drops_total", task="file", stage=stage, reason=reason) == v
            )
        if key in GAUGES:
            assert value(m, "otus_task_level", task="file", name=key) == 0  # stopped: no level
        else:
            assert value(m, "otus_task_stat_total", task="file", name=key) == v
    sip = sum(
        v
        for (n, labels), v in m.items()
        if n == "otus_sip_messages_total" and ("task", "file") in labels
    )
    assert sip == stats["parse.messages"] == 12
    assert value(m, "otus_sip_messages_total", task="file", method="INVITE", status_class="") == 2
    assert value(m, "otus_sip_messages_total", task="file", method="", status_class="2xx") == 4
    assert value(m, "otus_task_status", task="file", status="stopped") == 1
    assert value(m, "otus_task_status", task="file", status="running") == 0
    assert value(m, "otus_task_status", task="live", status="running") == 1
    assert value(m, "otus_reassembly_active_fragments", task="live") == 0
    assert value(m, "otus_flows_active", task="live") == 0
    assert value(m, "otus_pipeline_latency_seconds_count", task="live", stage="decode") > 0
    assert value(m, "otus_task_memory_bytes", task="live") > 0
    assert value(m, "otus_daemon_ready") == 1
    assert (
        value(m, "otus_control_requests_total", plane="uds", method="task.create", outcome="ok")
        == 2
    )
    assert (
        "otus_build_info",
        frozenset({("version", "0.1.0"), ("python", sys.version.split()[0])}),
    ) in m

    # the same capture through `otus run`: the summary line has the same numbers
    summary = run_summary(EXAMPLE)
    assert summary["packets"] == stats["capture.packets"]
    assert summary["decoded"] == stats["decode.packets"]
    assert summary["sip"] == stats["parse.messages"]
    assert summary["reported"] == stats["report.records"]
    assert summary["decode.not_ip"] == stats["decode.drop.not_ip"]

    # counters of a running task only go up between scrapes
    first = value(m, "otus_capture_packets_total", task="live", interface="")
    wait_for(
        lambda: (
            value(samples(d.metrics()), "otus_capture_packets_total", task="live", interface="")
            > first
        ),
        what="live counters to grow",
    )

    base = d.rpc("daemon.status")["metrics_url"].rsplit("/", 1)[0]
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(base + "/nope", timeout=10)
    d.stop()
