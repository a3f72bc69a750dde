"""The Kafka command plane in-process, against the real broker: formats, targeting, at-most-once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from pydantic import ValidationError

from otus.control.applied import AppliedLog
from otus.control.base import KafkaSettings, PlaneContext
from otus.control.commands import Commands
from otus.control.fleet import (
    COMMAND_EXPIRED,
    COMMAND_INTERRUPTED,
    EnvelopeError,
    Target,
    parse_command,
)
from otus.control.fleet_client import FleetClient
from otus.control.jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    INVALID_SPEC,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    TASK_EXISTS,
)
from otus.control.kafka_plane import KafkaPlane
from otus.task.manager import TaskManager
from tests.infra.daemon import looping_task
from tests.infra.fleet import collect, fleet_settings, group_offsets, rewind_group
from tests.infra.kafka import SASL_PASSWORD, SASL_USER, KafkaBroker, free_port

# -- the envelope (no broker) ----------------------------------------------------------------


def cmd(**kw: Any) -> bytes:
    env = {"id": "c1", "command": "task.list", "target": {}} | kw
    return orjson.dumps({k: v for k, v in env.items() if v is not None})


def test_each_command_maps_to_its_params() -> None:
    spec = {"id": "t", "capture": {"type": "pcap", "path": "x.pcap"}}
    c = parse_command(cmd(command="task.create", task=spec), max_bytes=1 << 20)
    assert (c.id, c.command, c.params) == ("c1", "task.create", spec)
    c = parse_command(cmd(command="task.delete", task_id="t"), max_bytes=1 << 20)
    assert c.params == {"id": "t"}
    c = parse_command(cmd(command="task.status", task={"id": "t"}), max_bytes=1 << 20)
    assert c.params == {"id": "t"}
    for name in ("task.list", "config.reload"):
        assert parse_command(cmd(command=name), max_bytes=1 << 20).params is None
    c = parse_command(cmd(expires_at=12.5), max_bytes=1 << 20)
    assert c.expires_at == 12.5


@pytest.mark.parametrize(
    ("value", "header", "code", "reply_to", "target_known"),
    [
        (b"{not json", "h1", PARSE_ERROR, "h1", False),
        (b"{not json", None, PARSE_ERROR, None, False),
        (b"[1, 2]", None, INVALID_REQUEST, None, False),
        (cmd(id=None), None, INVALID_REQUEST, None, False),
        (cmd(id=7), "h2", INVALID_REQUEST, "h2", False),
        (cmd(id="x" * 300), None, INVALID_REQUEST, None, False),
        (cmd(target=None), None, INVALID_REQUEST, "c1", False),
        (cmd(target={"agent": ["a"]}), None, INVALID_REQUEST, "c1", False),
        (cmd(target={"agents": "a"}), None, INVALID_REQUEST, "c1", False),
        (cmd(target={"tags": {"k": 1}}), None, INVALID_REQUEST, "c1", False),
        (cmd(command="task.frobnicate"), None, METHOD_NOT_FOUND, "c1", True),
        (cmd(command="daemon.stop"), None, METHOD_NOT_FOUND, "c1", True),
        (cmd(command="task.create"), None, INVALID_PARAMS, "c1", True),
        (cmd(command="task.create", task=[1]), None, INVALID_PARAMS, "c1", True),
        (cmd(command="task.delete"), None, INVALID_PARAMS, "c1", True),
        (cmd(extra=1), None, INVALID_REQUEST, "c1", True),
        (cmd(expires_at="soon"), None, INVALID_REQUEST, "c1", True),
        (b"x" * 5000, "h3", INVALID_REQUEST, "h3", False),
        (cmd(id="   "), "h4", INVALID_REQUEST, "h4", False),
        (cmd(id="   "), "  ", INVALID_REQUEST, None, False),
        (cmd(target={"agents": []}), None, INVALID_REQUEST, "c1", False),
        (cmd(target={"agents": [""]}), None, INVALID_REQUEST, "c1", False),
        (cmd(target={"tags": {"": "x"}}), None, INVALID_REQUEST, "c1", False),
        (cmd(target={"tags": {"k": "v" * 300}}), None, INVALID_REQUEST, "c1", False),
        (cmd(sent_at="x"), None, INVALID_REQUEST, "c1", True),
        (cmd(sent_at=True), None, INVALID_REQUEST, "c1", True),
        (cmd(sender=5), None, INVALID_REQUEST, "c1", True),
        (cmd(command="task.delete", task_id="t", task=[1]), None, INVALID_PARAMS, "c1", True),
        (
            cmd(command="task.delete", task_id="t", task={"id": "t"}),
            None,
            INVALID_PARAMS,
            "c1",
            True,
        ),
        (cmd(command="task.status", task_id="x" * 254), None, INVALID_PARAMS, "c1", True),
        (cmd(command="task.status", task_id=""), None, INVALID_PARAMS, "c1", True),
        (cmd(command="task.status", task={}), None, INVALID_PARAMS, "c1", True),
        (
            cmd(command="task.create", task={"id": "t"}, task_id="t"),
            None,
            INVALID_PARAMS,
            "c1",
            True,
        ),
        (cmd(task_id="t"), None, INVALID_PARAMS, "c1", True),
        (cmd(command="config.reload", task={"id": "t"}), None, INVALID_PARAMS, "c1", True),
    ],
)
def test_malformed_commands(
    value: bytes, header: str | None, code: int, reply_to: str | None, target_known: bool
) -> None:
    with pytest.raises(EnvelopeError) as e:
        parse_command(value, max_bytes=4096, header_id=header)
    assert e.value.code == code
    assert e.value.command_id == reply_to
    assert (e.value.target is not None) == target_known


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"command": "task.status", "task_id": "x" * 300},
            'task.status: "task_id" is 300 characters long, over the 253-character limit',
        ),
        ({"command": "task.status", "task_id": ""}, 'task.status: "task_id" is empty'),
        ({"command": "task.delete", "task_id": 7}, '"task_id" must be a string, not a number'),
        ({"command": "task.delete", "task": {"id": None}}, '"task.id" must be a string, not null'),
        ({"command": "task.delete"}, 'task.delete needs "task_id"'),
        ({"command": "task.delete", "task_id": "t", "task": [1]}, '"task_id" or "task", not both'),
        ({"command": "task.list", "task_id": "t"}, 'task.list takes neither "task" nor "task_id"'),
        ({"id": "   "}, '"id" is only spaces'),
        ({"id": "a\tb"}, '"id" has non-printable characters'),
        ({"sent_at": "x"}, '"sent_at" must be Unix seconds (a number), not a string'),
        ({"sender": 5}, '"sender" must be a string, not a number'),
        ({"target": {"agents": []}}, '"target.agents" must be a list of 1-10000 agent ids'),
        ({"target": {"agents": ["a", " "]}}, "the agent id ' ' is only spaces"),
    ],
)
def test_envelope_errors_say_what_is_wrong(env: dict[str, Any], message: str) -> None:
    with pytest.raises(EnvelopeError) as e:
        parse_command(cmd(**env), max_bytes=1 << 20)
    assert message in e.value.message


def test_informational_members_and_the_task_as_id_are_accepted() -> None:
    c = parse_command(cmd(sent_at=1795315603.5, sender="alice@ops-1"), max_bytes=1 << 20)
    assert (c.command, c.params) == ("task.list", None)
    c = parse_command(cmd(command="task.delete", task={"id": "t", "x": 1}), max_bytes=1 << 20)
    assert c.params == {"id": "t"}
    c = parse_command(cmd(command="task.status", task_id="x" * 253), max_bytes=1 << 20)
    assert c.params == {"id": "x" * 253}


def test_the_sender_refuses_what_agents_would_refuse() -> None:
    fleet = FleetClient(fleet_settings("127.0.0.1:9"))  # not started: envelopes need no broker
    with pytest.raises(EnvelopeError, match=r"target\.agents"):
        fleet.envelope("task.list", {"agents": []})
    with pytest.raises(EnvelopeError, match="over the 253-character limit"):
        fleet.envelope("task.status", {}, task_id="x" * 300)
    env = fleet.envelope("task.status", {"agents": ["a1"]}, task_id="calls", expires_in_s=5)
    assert parse_command(orjson.dumps(env), max_bytes=1 << 20).params == {"id": "calls"}


def test_targets() -> None:
    tags = {"region": "eu", "role": "edge"}
    assert Target().matches("a", tags)
    assert Target(frozenset({"a", "b"})).matches("a", tags)
    assert not Target(frozenset({"b"})).matches("a", tags)
    assert not Target(frozenset()).matches("a", tags)
    assert Target(tags={"region": "eu"}).matches("a", tags)
    assert not Target(tags={"region": "eu", "role": "core"}).matches("a", tags)
    assert not Target(frozenset({"a"}), {"region": "us"}).matches("a", tags)
    assert Target(frozenset({"a"}), {"region": "eu"}).to_json() == {
        "agents": ["a"],
        "tags": {"region": "eu"},
    }


def test_applied_log_is_durable_bounded_and_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "applied"
    log = AppliedLog(path, max_ids=16)
    log.begin("a", "task.create")
    log.finish("a", ok=True)
    log.begin("b", "task.delete")
    log.begin("c", "task.create")
    log.release("c")
    with path.open("ab") as f:
        f.write(b'{"id": "d", "stat')  # a crash in the middle of an append
    again = AppliedLog(path, max_ids=16)
    again.load()
    assert again.bad_lines == 1
    assert again.get("a") == {**again.get("a"), "status": "done", "ok": True}  # type: ignore[dict-item]
    assert again.get("b")["status"] == "pending"  # type: ignore[index]
    assert again.get("c") is None and again.get("d") is None
    for i in range(100):
        again.begin(f"x{i}", "task.list")
        again.finish(f"x{i}", ok=True)
    assert len(again.entries) == 16 and again.get("a") is None and again.get("x99") is not None
    assert len(path.read_bytes().splitlines()) <= 2 * 16 + 16 + 1  # rewritten, bounded
    third = AppliedLog(path, max_ids=16)
    third.load()
    assert list(third.entries) == list(again.entries)


def test_settings_are_bounded_and_checked() -> None:
    with pytest.raises(ValidationError, match="SASL settings need"):
        KafkaSettings(brokers=["b:9092"], username="u")
    with pytest.raises(ValidationError, match="needs sasl_mechanism"):
        KafkaSettings(brokers=["b:9092"], security_protocol="SASL_SSL")
    with pytest.raises(ValidationError):
        KafkaSettings(command_topic="bad topic")
    with pytest.raises(ValidationError):
        KafkaSettings(applied_max=10**9)
    ok = KafkaSettings(
        brokers=["b:9092"],
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        username="u",
        password="p",
    )
    assert ok.security().sasl_mechanism == "SCRAM-SHA-512"


# -- agents in this process, against the broker ----------------------------------------------


@dataclass
class Agent:
    """A task manager and its Kafka plane, as the daemon wires them."""

    plane: KafkaPlane
    manager: TaskManager
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.manager.shutdown(grace_s=5.0)


Start = Callable[..., Awaitable[Agent]]


@pytest_asyncio.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[Start]:
    agents: list[Agent] = []

    async def start(
        settings: KafkaSettings, agent_id: str = "a1", tags: dict[str, str] | None = None
    ) -> Agent:
        state = tmp_path / agent_id / "state.json"
        manager = TaskManager(agent_id=agent_id, state_file=state)
        await manager.restore()
        ctx = PlaneContext(
            manager=manager,
            commands=Commands(manager),
            agent_id=agent_id,
            tags=tags or {},
            version="test",
            started_at=time.time(),
            state_file=str(state),
        )
        plane = KafkaPlane(settings, ctx)
        agent = Agent(plane, manager, asyncio.create_task(plane.run()))
        agents.append(agent)
        deadline = time.monotonic() + 60
        while not plane.listening:
            assert not agent.task.done(), agent.task
            assert time.monotonic() < deadline, "the plane did not start listening"
            await asyncio.sleep(0.05)
        return agent

    yield start
    for a in agents:
        if not a.task.done():
            await a.stop()


@pytest.fixture
def settings(kafka_broker: KafkaBroker) -> KafkaSettings:
    return fleet_settings(kafka_broker.bootstrap)


async def heartbeats(settings: KafkaSettings) -> dict[str, dict[str, Any]]:
    async with FleetClient(settings) as fleet:
        return await fleet.heartbeats(60)


async def wait_heartbeat(settings: KafkaSettings, pred: Callable[[dict[str, Any]], bool]) -> Any:
    deadline = time.monotonic() + 30
    while True:
        beats = await heartbeats(settings)
        if pred(beats):
            return beats
        assert time.monotonic() < deadline, beats
        await asyncio.sleep(0.5)


@pytest.mark.kafka
async def test_reply_heartbeat_and_last_heartbeat(
    settings: KafkaSettings, start_agent: Start
) -> None:
    agent = await start_agent(settings, "a1", {"region": "eu"})
    cid, replies = await collect(settings, "task.list", {}, expected={"a1"})
    assert [(r["request_id"], r["agent_id"], r["ok"], r["result"]) for r in replies] == [
        (cid, "a1", True, {"tasks": []})
    ]
    beats = await wait_heartbeat(
        settings, lambda b: b.get("a1", {}).get("commands", {}).get("applied", 0) >= 1
    )
    hb = beats["a1"]
    assert hb["type"] == "heartbeat" and hb["state"] == "running"
    assert hb["tags"] == {"region": "eu"} and hb["version"] == "test"
    assert hb["heartbeat_interval_s"] == 1.0 and hb["uptime_s"] >= 0 and hb["hostname"]
    await agent.stop()
    beats = await heartbeats(settings)
    assert beats["a1"]["state"] == "stopping"


@pytest.mark.kafka
async def test_only_targeted_agents_act_and_reply(
    settings: KafkaSettings, start_agent: Start
) -> None:
    await start_agent(settings, "a1", {"region": "eu", "role": "edge"})
    await start_agent(settings, "a2", {"region": "eu", "role": "core"})
    await start_agent(settings, "a3", {"region": "us", "role": "edge"})
    cases = [
        ({"agents": ["a2"]}, {"a2"}),
        ({"agents": ["a1", "a3"]}, {"a1", "a3"}),
        ({"tags": {"region": "eu"}}, {"a1", "a2"}),
        ({"tags": {"role": "edge", "region": "us"}}, {"a3"}),
        ({"agents": ["a1", "a2"], "tags": {"role": "core"}}, {"a2"}),
        ({}, {"a1", "a2", "a3"}),
    ]
    for target, who in cases:
        # Wait beyond the expected replies: an extra one would show up.
        _, replies = await collect(settings, "task.list", target, wait_s=2)
        assert {r["agent_id"] for r in replies} == who, target
        assert len(replies) == len(who)


@pytest.mark.kafka
@pytest.mark.slow
async def test_a_command_is_applied_at_most_once_across_restarts(
    settings: KafkaSettings, start_agent: Start, tmp_path: Path
) -> None:
    spec = looping_task("calls", tmp_path / "calls.jsonl", rate=50)
    agent = await start_agent(settings, "a1")
    cid, replies = await collect(settings, "task.create", {}, expected={"a1"}, task=spec)
    assert replies[0]["ok"] and replies[0]["result"]["state"] == "running", replies
    created_at = agent.manager.status("calls").created_at
    await agent.stop()
    # Crash after the commit: nothing comes back. Here, worse: the group is moved back, so the
    # restarted agent is handed the task.create again.
    await rewind_group(settings, agent.plane.group_id, 0)
    again = await start_agent(settings, "a1")
    await wait_heartbeat(settings, lambda b: b.get("a1", {}).get("state") == "running")
    infos = again.manager.list()
    assert [(i.id, i.created_at) for i in infos] == [("calls", created_at)]  # restored, once
    deadline = time.monotonic() + 20
    while again.plane.counts["duplicates"] < 1:
        assert time.monotonic() < deadline, again.plane.counts
        await asyncio.sleep(0.1)
    assert again.plane.counts["applied"] == 0
    offsets = await group_offsets(settings, again.plane.group_id)
    assert offsets[0] == 1  # handled, then committed
    # The redelivery's reply says so: the CLI would see "duplicate", not TASK_EXISTS.
    _, dup = await collect(settings, "task.create", {}, expected={"a1"}, task=spec, command_id=cid)
    assert dup[0]["ok"] and dup[0]["duplicate"] and "result" in dup[0]
    _, gone = await collect(settings, "task.delete", {}, expected={"a1"}, task_id="calls")
    assert gone[0]["ok"] and again.manager.list() == []


@pytest.mark.kafka
async def test_a_command_interrupted_by_a_crash_is_not_applied_again(
    settings: KafkaSettings, start_agent: Start, tmp_path: Path
) -> None:
    # The agent wrote "pending", began applying, and died: the redelivery must not apply it.
    record = AppliedLog(tmp_path / "a1" / "state.json.kafka-applied", 100)
    record.begin("c-crashed", "task.create")
    agent = await start_agent(settings, "a1")
    spec = looping_task("calls", tmp_path / "calls.jsonl")
    _, replies = await collect(
        settings, "task.create", {}, expected={"a1"}, task=spec, command_id="c-crashed"
    )
    assert replies[0]["error"]["code"] == COMMAND_INTERRUPTED and replies[0]["duplicate"]
    assert agent.manager.list() == []


@pytest.mark.kafka
async def test_a_command_refused_while_stopping_is_left_for_the_next_start(
    settings: KafkaSettings, start_agent: Start, tmp_path: Path
) -> None:
    agent = await start_agent(settings, "a1")
    agent.manager.begin_shutdown()  # what SIGTERM does before the plane is cancelled
    spec = looping_task("calls", tmp_path / "calls.jsonl")
    cid, replies = await collect(settings, "task.create", {}, task=spec, wait_s=3)
    assert replies == []  # not refused: deferred
    assert agent.plane.applied.get(cid) is None
    assert (await group_offsets(settings, agent.plane.group_id))[0] == 0  # not committed
    await agent.stop()
    again = await start_agent(settings, "a1")
    deadline = time.monotonic() + 30
    while again.plane.counts["applied"] < 1:
        assert time.monotonic() < deadline, again.plane.counts
        await asyncio.sleep(0.1)
    assert [i.id for i in again.manager.list()] == ["calls"]
    assert again.plane.applied.get(cid)["ok"] is True  # type: ignore[index]


@pytest.mark.kafka
async def test_malformed_commands_are_answered_or_counted(
    kafka_broker: KafkaBroker, start_agent: Start, tmp_path: Path
) -> None:
    settings = fleet_settings(kafka_broker.bootstrap, max_command_bytes=4096)
    agent = await start_agent(settings, "a1", {"region": "eu"})

    async def raw(
        value: bytes, reply_id: str | None, wait_s: float = 2, expected: Any = None
    ) -> list[dict[str, Any]]:
        # The id travels in the header too, as the CLI sends it; reply_id None: no header.
        env = {"id": reply_id or "none", "command": "task.list", "target": {}}
        async with FleetClient(settings) as fleet:
            it = fleet.request(
                env, wait_s=wait_s, raw=value, header=reply_id is not None, expected=expected
            )
            return [r async for r in it]

    async def one(value: bytes, reply_id: str) -> dict[str, Any]:
        replies = await raw(value, reply_id, 30, {"a1"})
        assert len(replies) == 1, replies
        assert replies[0]["ok"] is False
        return replies[0]["error"]  # type: ignore[no-any-return]

    assert (await one(b"{oops", "h1"))["code"] == PARSE_ERROR
    assert (await one(b"x" * 5000, "h2"))["code"] == INVALID_REQUEST
    assert (await one(cmd(id="m1", target={"agent": "a1"}), "m1"))["code"] == INVALID_REQUEST
    assert (await one(cmd(id="m2", command="rm -rf"), "m2"))["code"] == METHOD_NOT_FOUND
    assert (await one(cmd(id="m3", command="task.create"), "m3"))["code"] == INVALID_PARAMS
    bad = cmd(id="m4", command="task.create", task={"id": "x", "capture": {}})
    bad_spec = await one(bad, "m4")
    assert bad_spec["code"] == INVALID_SPEC and bad_spec["data"]
    expired = await one(cmd(id="m5", expires_at=time.time() - 1), "m5")
    assert expired["code"] == COMMAND_EXPIRED
    # An empty agent list matches nobody: rather than every agent skipping it, every one says so.
    nobody = await one(cmd(id="m7", target={"agents": []}), "m7")
    assert nobody["code"] == INVALID_REQUEST and "target.agents" in nobody["message"]
    # Nobody to answer: no id, or meant for another agent.
    assert await raw(b"\xff\xfe not even utf-8", None, wait_s=2) == []
    assert await raw(cmd(id="m6", target={"tags": {"region": "us"}}, bogus=1), "m6", 2) == []
    # Still serving.
    _, replies = await collect(settings, "task.list", {}, expected={"a1"})
    assert replies[0]["ok"]
    c = agent.plane.counts
    assert (c["malformed"], c["expired"], c["skipped"]) == (7, 1, 1), c
    assert not agent.task.done()


@pytest.mark.kafka
async def test_a_failed_command_replies_with_the_error_and_is_recorded(
    settings: KafkaSettings, start_agent: Start, tmp_path: Path
) -> None:
    agent = await start_agent(settings, "a1")
    _, replies = await collect(settings, "task.status", {}, expected={"a1"}, task_id="nope")
    assert replies[0]["error"]["message"] == "no task 'nope'"
    spec = looping_task("calls", tmp_path / "calls.jsonl")
    await collect(settings, "task.create", {}, expected={"a1"}, task=spec)
    cid, replies = await collect(settings, "task.create", {}, expected={"a1"}, task=spec)
    assert replies[0]["error"]["code"] == TASK_EXISTS
    assert agent.plane.applied.get(cid)["code"] == TASK_EXISTS  # type: ignore[index]


@pytest.mark.kafka
async def test_a_reused_command_id_is_refused_not_answered_with_another_outcome(
    settings: KafkaSettings, start_agent: Start
) -> None:
    agent = await start_agent(settings, "a1")
    _, first = await collect(
        settings, "task.status", {}, expected={"a1"}, task_id="nope", command_id="dup"
    )
    assert first[0]["error"]["message"] == "no task 'nope'"
    _, reused = await collect(settings, "task.list", {}, expected={"a1"}, command_id="dup")
    assert reused[0]["command"] == "task.list" and "duplicate" not in reused[0], reused
    assert reused[0]["error"]["code"] == INVALID_REQUEST
    assert reused[0]["error"]["message"].startswith(
        "command id 'dup' was already used by task.status"
    )
    # The record still holds task.status: its genuine redelivery is answered as one.
    _, again = await collect(
        settings, "task.status", {}, expected={"a1"}, task_id="nope", command_id="dup"
    )
    assert again[0]["duplicate"] and again[0]["error"]["message"] == "no task 'nope'"
    c = agent.plane.counts
    assert (c["failed"], c["malformed"], c["duplicates"], c["applied"]) == (1, 1, 1, 0), c


async def test_no_broker_means_retries_not_a_crash(start_agent: Start, tmp_path: Path) -> None:
    settings = fleet_settings(f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
    manager = TaskManager(agent_id="lonely", state_file=tmp_path / "state.json")
    ctx = PlaneContext(manager=manager, commands=Commands(manager), agent_id="lonely")
    plane = KafkaPlane(settings, ctx)
    task = asyncio.create_task(plane.run())
    await asyncio.sleep(4)
    assert not task.done() and not plane.listening
    t0 = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 5


@pytest.mark.kafka
@pytest.mark.slow
async def test_the_plane_outlives_a_broker_restart(
    kafka_broker: KafkaBroker, start_agent: Start
) -> None:
    settings = fleet_settings(kafka_broker.bootstrap)
    agent = await start_agent(settings, "a1")
    try:
        await asyncio.to_thread(kafka_broker.stop)
        await asyncio.sleep(2)
        assert not agent.task.done()
        await asyncio.to_thread(kafka_broker.start)
    finally:
        if kafka_broker.pid is None:
            kafka_broker.start()
    _, replies = await collect(settings, "task.list", {}, expected={"a1"}, wait_s=90)
    assert [r["agent_id"] for r in replies] == ["a1"]
    await wait_heartbeat(settings, lambda b: b.get("a1", {}).get("ts", 0) > time.time() - 5)


@pytest.mark.kafka
async def test_sasl_like_the_reporter(kafka_broker: KafkaBroker, start_agent: Start) -> None:
    settings = fleet_settings(
        kafka_broker.sasl_bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        username=SASL_USER,
        password=SASL_PASSWORD,
    )
    await start_agent(settings, "a1")
    _, replies = await collect(settings, "task.list", {}, expected={"a1"})
    assert [r["agent_id"] for r in replies] == ["a1"]
