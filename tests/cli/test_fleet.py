"""`otus fleet` driving three real daemons over the real broker: targeting, restarts, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from otus.control.base import KafkaSettings
from otus.control.fleet_client import FleetClient
from tests.infra.cli import run_otus
from tests.infra.daemon import ROOT, DaemonProc, looping_task, wait_for
from tests.infra.fleet import fleet_settings, rewind_group
from tests.infra.kafka import KafkaBroker, free_port

TAGS = {
    "a": {"region": "eu", "role": "edge"},
    "b": {"region": "eu", "role": "core"},
    "c": {"region": "us", "role": "edge"},
}


def fleet(settings: KafkaSettings, *args: str, brokers: str | None = None) -> Any:
    """Run `otus fleet ARGS` against the settings' brokers and topics."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OTUS_KAFKA_BROKERS", None)
    env["OTUS_CONFIG"] = os.devnull  # an empty config: never the machine's
    cmd = [
        sys.executable,
        "-m",
        "otus",
        "fleet",
        *args,
        "--brokers",
        brokers or settings.brokers[0],
    ]
    cmd += ["--command-topic", settings.command_topic, "--reply-topic", settings.reply_topic]
    cmd += ["--status-topic", settings.status_topic]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
        check=False,
    )


def replies(proc: Any) -> dict[str, dict[str, Any]]:
    """`-o json` output: one reply per line, by agent."""
    out = {}
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        out[r["agent_id"]] = r
    return out


def task_ids(d: DaemonProc) -> list[str]:
    return [t["id"] for t in d.rpc("task.list")["tasks"]]


def live_agents(settings: KafkaSettings) -> dict[str, dict[str, Any]]:
    proc = fleet(settings, "agents", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return {a["agent_id"]: a for a in json.loads(proc.stdout) if a["status"] == "live"}


@pytest.mark.kafka
@pytest.mark.slow
def test_three_agents(kafka_broker: KafkaBroker, daemon_factory: Any, tmp_path: Path) -> None:
    settings = fleet_settings(kafka_broker.bootstrap)
    kafka = settings.model_dump(
        include={"brokers", "command_topic", "reply_topic", "status_topic", "heartbeat_interval_s"}
    )
    daemons = {
        n: daemon_factory(n, kafka=kafka, agent={"id": f"test-{n}", "tags": TAGS[n]}) for n in TAGS
    }
    for d in daemons.values():
        d.start(wait=False)
    for d in daemons.values():
        d.wait_ready()
    a, b, c = daemons["a"], daemons["b"], daemons["c"]

    # Every agent listed (the first heartbeat goes out once the agent listens).
    agents = wait_for(lambda: len(live_agents(settings)) == 3 and live_agents(settings), 60)
    assert set(agents) == {"test-a", "test-b", "test-c"}
    assert agents["test-c"]["tags"] == TAGS["c"]
    table = fleet(settings, "agents")
    assert table.returncode == 0
    assert [line.split()[:2] for line in table.stdout.splitlines()[1:]] == [
        ["test-a", "live"],
        ["test-b", "live"],
        ["test-c", "live"],
    ]

    # By id: only a acts and replies.
    spec = tmp_path / "calls.yaml"
    spec.write_text(json.dumps(looping_task("calls", tmp_path / "calls.jsonl", rate=20)))
    proc = fleet(settings, "task", "create", "-f", str(spec), "--agent", "test-a")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line.split()[:4] for line in proc.stdout.splitlines()[1:]] == [
        ["test-a", "yes", "calls", "running"]
    ]
    assert (task_ids(a), task_ids(b), task_ids(c)) == (["calls"], [], [])

    # By tag: a and b.
    eu = tmp_path / "eu.yaml"
    eu.write_text(json.dumps(looping_task("eu-calls", tmp_path / "eu.jsonl", rate=20)))
    proc = fleet(settings, "task", "create", "-f", str(eu), "--tag", "region=eu", "-o", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert set(replies(proc)) == {"test-a", "test-b"}
    assert (task_ids(a), task_ids(b), task_ids(c)) == (["calls", "eu-calls"], ["eu-calls"], [])

    # All of them.
    proc = fleet(settings, "task", "list", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    listed = {k: [t["id"] for t in r["result"]["tasks"]] for k, r in replies(proc).items()}
    assert listed == {"test-a": ["calls", "eu-calls"], "test-b": ["eu-calls"], "test-c": []}

    # Two tags: both must match.
    proc = fleet(settings, "task", "list", "--tag", "role=edge", "--tag", "region=us", "-o", "json")
    assert set(replies(proc)) == {"test-c"} and proc.returncode == 0

    # An agent saying no: exit 1, its error shown.
    proc = fleet(settings, "task", "create", "-f", str(spec), "--agent", "test-a")
    assert proc.returncode == 1
    assert "error -32002: task 'calls' already exists" in proc.stdout
    proc = fleet(settings, "task", "status", "calls", "--agent", "test-a", "--agent", "test-c")
    assert proc.returncode == 1
    assert "no task 'calls'" in proc.stdout and "test-a" in proc.stdout

    # Malformed commands break nothing.
    async def garbage() -> None:
        async with FleetClient(settings) as fc:
            await fc.send_raw(b"\x00garbage")
            await fc.send_raw(b'{"id": "junk-1", "command": "task.list"}', command_id="junk-1")
            await fc.send_raw(b'{"id": "junk-2", "command": "task.list", "target": 5}')

    asyncio.run(garbage())
    proc = fleet(settings, "task", "list", "-o", "json")
    assert proc.returncode == 0 and set(replies(proc)) == {"test-a", "test-b", "test-c"}

    # A restarted agent restores its tasks and does not apply old commands again, even when
    # handed all of them again (its group moved back to the start of the topic).
    before = {t["id"]: t["created_at"] for t in b.rpc("task.list")["tasks"]}
    b.stop()
    asyncio.run(rewind_group(settings, "otus-agent-test-b", 0))
    b.start()
    wait_for(lambda: live_agents(settings).get("test-b", {}).get("uptime_s", 99) < 30, 60)
    counts = wait_for(
        lambda: (n := live_agents(settings)["test-b"]["commands"])["duplicates"] >= 3 and n, 60
    )
    assert counts["applied"] == 0, counts
    assert {t["id"]: t["created_at"] for t in b.rpc("task.list")["tasks"]} == before
    proc = fleet(settings, "task", "list", "--agent", "test-b", "-o", "json")
    assert [t["id"] for t in replies(proc)["test-b"]["result"]["tasks"]] == ["eu-calls"]
    assert set(live_agents(settings)) == {"test-a", "test-b", "test-c"}

    # Delete everywhere: b and a delete, c has nothing to delete (exit 1).
    proc = fleet(settings, "task", "delete", "eu-calls", "-o", "json")
    got = replies(proc)
    assert proc.returncode == 1
    assert (got["test-a"]["ok"], got["test-b"]["ok"], got["test-c"]["ok"]) == (True, True, False)
    assert (task_ids(a), task_ids(b)) == (["calls"], [])

    # A stopped agent says so in its last heartbeat.
    c.stop()
    proc = fleet(settings, "agents", "-o", "json")
    status = {x["agent_id"]: x["status"] for x in json.loads(proc.stdout)}
    assert status == {"test-a": "live", "test-b": "live", "test-c": "stopped"}


@pytest.mark.kafka
def test_exit_codes_without_agents(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    settings = fleet_settings(kafka_broker.bootstrap)
    t0 = time.monotonic()
    proc = fleet(settings, "task", "list", "--agent", "nobody", "--wait", "2")
    assert proc.returncode == 1 and "no reply within 2 s from nobody" in proc.stderr
    assert time.monotonic() - t0 < 60
    proc = fleet(settings, "agents")
    assert proc.returncode == 0 and "no agents heard from" in proc.stdout
    proc = fleet(settings, "task", "list", "--tag", "oops")
    assert proc.returncode == 2 and "argument --tag: must be KEY=VALUE" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\ncapture: {type: nope}\n")
    proc = fleet(settings, "task", "create", "-f", str(bad))
    assert proc.returncode == 2 and "capture" in proc.stderr


def test_unreachable_broker_exits_3() -> None:
    settings = fleet_settings("127.0.0.1:9")
    port = free_port()
    proc = fleet(settings, "agents", "--timeout", "3", brokers=f"127.0.0.1:{port}")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no Kafka broker answered" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_otus("fleet", "agents", env={"OTUS_CONFIG": os.devnull}, timeout=60)
    assert proc.returncode == 2 and "no Kafka brokers" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["task", "list", "--agent", ""], "argument --agent: the agent id '' is empty"),
        (["task", "list", "--agent", "  "], "the agent id '  ' is only spaces"),
        (["task", "list", "--agent", "a\tb"], "has non-printable characters"),
        (["reload", "--agent", "a" * 254], "over the 253-character limit"),
        (["task", "status", "x" * 300], "argument ID: the task id 'xxx"),
        (["task", "status", "x" * 300], "is 300 characters long, over the 253-character limit"),
        (["task", "delete", ""], "the task id '' is empty"),
        (["task", "list", "--tag", "=eu"], "argument --tag: must be KEY=VALUE"),
        (["task", "list", "--tag", " =eu"], "the tag name ' ' is only spaces"),
        (["task", "list", "--tag", "k=" + "v" * 300], "over the 256-character limit"),
        (["task", "list", "--tag", "r=eu", "--tag", "r=us"], "--tag r is given twice"),
    ],
)
def test_bad_targets_and_ids_are_usage_errors_before_anything_is_sent(
    args: list[str], message: str
) -> None:
    # No broker listens: had the command been sent (or tried), the exit would be 3, not 2.
    settings = fleet_settings("127.0.0.1:9")
    proc = fleet(settings, *args, "--timeout", "3", brokers=f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("id: x\ncapture: [a\n", "expected ',' or ']', but got '<stream end>' (line 3, column 1)"),
        ("id: x\n\tcapture: {}\n", "found character '\\t' that cannot start any token (line 2"),
        ("id: x\x00\n", "unacceptable character #x0000: special characters are not allowed"),
    ],
)
def test_a_task_file_that_is_not_yaml_is_one_line_naming_the_file(
    tmp_path: Path, text: str, reason: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    settings = fleet_settings("127.0.0.1:9")
    proc = fleet(settings, "task", "create", "-f", str(bad), brokers=f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"otus: {bad}: not valid YAML: "), lines
    assert reason in lines[0]
