"""Records end to end into the real broker: `otus run` and a daemon task, through broker outages."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from otus.plugins.reporter.kafka_config import partition_for
from tests.infra.daemon import EXAMPLE, ROOT, wait_for
from tests.infra.kafka import KafkaBroker, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

DATA = ROOT / "tests" / "data"
DROPS = (
    "report.drop.backpressure",
    "report.drop.kafka_failed",
    "report.drop.kafka_too_large",
    "report.drop.kafka_closed",
)


def kafka_reporter(broker: KafkaBroker, topic: str, **kw: Any) -> dict[str, Any]:
    config = {
        "brokers": [broker.bootstrap],
        "topic": topic,
        "request_timeout_ms": 5000,
        "retry_backoff_ms": 50,
        "reconnect_backoff_max_ms": 500,
        "flush_timeout_ms": 120_000,
        **kw,
    }
    return {"type": "kafka", "config": config}


@pytest.mark.parametrize("pcap", ["sip-udp4.pcap", "sip-tcp-mtu576.pcap"])
def test_kafka_gets_exactly_what_the_console_prints(
    kafka_broker: KafkaBroker, tmp_path: Path, pcap: str
) -> None:
    topic = f"e2e-{uuid.uuid4().hex[:8]}"
    task = {
        "id": "kafka-e2e",
        "capture": {"type": "pcap", "path": str(DATA / pcap)},
        "reporters": [{"type": "console"}, kafka_reporter(kafka_broker, topic)],
    }
    spec = tmp_path / "task.yaml"
    spec.write_text(json.dumps(task))
    proc = subprocess.run(
        [sys.executable, "-m", "otus", "run", "-r", str(DATA / pcap), "--task", str(spec)],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    printed = proc.stdout.splitlines()
    assert len(printed) > 10
    messages = asyncio.run(read_topic(kafka_broker.bootstrap, topic))
    # The same bytes, each record once.
    assert sorted(m.value for m in messages) == sorted(printed)
    # Keyed by Call-ID; one call in one partition (Java's partitioner), in the printed order.
    partitions = {m.partition for m in messages} | {0}
    n = max(partitions) + 1
    by_call: dict[bytes, list[Any]] = defaultdict(list)
    for m in messages:
        assert m.key == json.loads(m.value)["sip"]["call_id"].encode()
        by_call[m.key].append(m)
    for key, msgs in by_call.items():
        assert {m.partition for m in msgs} == {partition_for(key, n)}
        expected = [line for line in printed if json.loads(line)["sip"]["call_id"] == key.decode()]
        assert [m.value for m in sorted(msgs, key=lambda m: m.offset)] == expected
    assert len(by_call) > 1
    summary = proc.stderr.decode()
    assert f"reported={len(printed)}" in summary


def test_a_daemon_task_streams_through_a_broker_restart(
    kafka_broker: KafkaBroker, daemon_factory: Any, tmp_path: Path
) -> None:
    within, beyond = f"within-{uuid.uuid4().hex[:8]}", f"beyond-{uuid.uuid4().hex[:8]}"

    def task(task_id: str, topic: str, **kw: Any) -> dict[str, Any]:
        return {
            "id": task_id,
            "capture": {"type": "pcap", "path": str(EXAMPLE), "loop": 0, "rate_pps": 300},
            "reporters": [kafka_reporter(kafka_broker, topic, **kw)],
        }

    d = daemon_factory()
    d.start()
    # Room for the whole outage; and a buffer of 200 records that cannot hold it.
    d.rpc("task.create", task("within", within, buffer_max_records=100_000))
    d.rpc("task.create", task("beyond", beyond, buffer_max_records=200, block_ms=0))

    def stats(task_id: str) -> Counter[str]:
        return Counter(d.rpc("task.status", {"id": task_id})["stats"])  # absent: 0

    wait_for(lambda: all(stats(t)["report.kafka.sent"] > 100 for t in ("within", "beyond")), 90)
    try:
        kafka_broker.stop()
        # Records keep coming while the broker is away: buffered, then dropped beyond the bound.
        wait_for(lambda: stats("beyond")["report.drop.backpressure"] > 0, 60, "drops")
        wait_for(lambda: stats("within")["report.buffered"] > 300, 60, "buffering")
        keys = ("report.kafka.sent", "report.buffered", "report.drop.backpressure")
        print("broker away:", {t: {k: stats(t)[k] for k in keys} for t in ("within", "beyond")})
    finally:
        kafka_broker.start()
    wait_for(lambda: stats("within")["report.buffered"] < 200, 120, "the backlog to drain")
    final = {t: d.rpc("task.delete", {"id": t})["stats"] for t in ("within", "beyond")}
    got = {t: asyncio.run(read_topic(kafka_broker.bootstrap, topic)) for t, topic in
           (("within", within), ("beyond", beyond))}  # fmt: skip

    s = final["within"]
    assert s["report.kafka.records"] == s["report.records"] > 500
    assert sum(s[k] for k in DROPS) == 0, s  # nothing lost within the bound
    assert len(got["within"]) == s["report.kafka.sent"] == s["report.kafka.records"]
    assert s["report.buffered"] == 0

    s = final["beyond"]
    lost = sum(s[k] for k in DROPS)
    assert lost == s["report.drop.backpressure"] > 0, s  # beyond it: counted drops only
    assert len(got["beyond"]) == s["report.kafka.sent"] == s["report.kafka.records"] - lost
