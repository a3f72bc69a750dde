"""The Loki writer against a local HTTP receiver: the push API's JSON, retries, bounded loss."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from aiohttp import web

from otus.daemon.config import LogSection, LokiOutput
from otus.daemon.logging import LogRuntime
from otus.daemon.loki import LokiWriter


@dataclass
class Receiver:
    """A Loki push endpoint that validates the body and records the lines."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers to give, then 204
    requests: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [v[1] for b in self.bodies for s in b["streams"] for v in s["values"]]


def check_push_body(body: Any) -> None:
    """The shape of Loki's push API (JSON)."""
    assert set(body) == {"streams"} and isinstance(body["streams"], list) and body["streams"]
    for s in body["streams"]:
        assert set(s) == {"stream", "values"}
        assert isinstance(s["stream"], dict) and s["stream"]
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in s["stream"].items())
        assert s["values"]
        stamps = []
        for v in s["values"]:
            assert isinstance(v, list) and len(v) == 2
            ts, line = v
            assert isinstance(ts, str) and ts.isdigit() and len(ts) >= 19  # unix nanoseconds
            assert isinstance(line, str)
            stamps.append(int(ts))
        assert stamps == sorted(stamps)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver("")

    async def push(request: web.Request) -> web.Response:
        rec.requests += 1
        rec.headers.append(dict(request.headers))
        if rec.statuses:
            return web.Response(status=rec.statuses.pop(0), text="try later")
        assert request.headers["Content-Type"] == "application/json"
        body = await request.json()
        check_push_body(body)
        rec.bodies.append(body)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/loki/api/v1/push", push)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}/loki/api/v1/push"
    yield rec
    await runner.cleanup()


def record(msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"msg": msg, "levelno": level, "levelname": logging.getLevelName(level)}
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_until(writer: LokiWriter, pred: Any, limit_s: float = 20.0) -> None:
    task = asyncio.create_task(writer.run())
    try:
        async with asyncio.timeout(limit_s):
            while not pred():  # noqa: ASYNC110 - polling the writer's counters
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_batches_in_push_api_shape(receiver: Receiver) -> None:
    w = LokiWriter()
    w.configure(
        LokiOutput(
            type="loki",
            endpoint=receiver.url,
            labels={"app": "otus", "env": "test"},
            tenant_id="team-a",
            batch_size=3,
            flush_interval=0.3,
        ),
        agent_id="node-1",
    )
    for i in range(7):
        w.emit(record(f"line {i}", logging.WARNING if i == 5 else logging.INFO))
    await run_until(w, lambda: w.sent == 7)
    assert sorted(receiver.lines()) == [f"line {i}" for i in range(7)]
    per_push = [sum(len(s["values"]) for s in b["streams"]) for b in receiver.bodies]
    assert per_push == [3, 3, 1]  # batch_size, then the rest at flush_interval
    streams = [s["stream"] for b in receiver.bodies for s in b["streams"]]
    assert {"app": "otus", "env": "test", "agent": "node-1", "level": "info"} in streams
    assert {"app": "otus", "env": "test", "agent": "node-1", "level": "warning"} in streams
    assert receiver.headers[0]["X-Scope-OrgID"] == "team-a"
    assert w.stats()["dropped_queue_full"] == w.stats()["dropped_send_failed"] == 0


async def test_retries_with_backoff_then_delivers(receiver: Receiver) -> None:
    receiver.statuses = [503, 429]
    w = LokiWriter()
    w.configure(LokiOutput(type="loki", endpoint=receiver.url, batch_size=10, flush_interval=0.1))
    for i in range(4):
        w.emit(record(f"l{i}"))
    await run_until(w, lambda: w.sent == 4)
    assert receiver.requests == 3
    assert w.retries == 2 and w.dropped_send == 0


async def test_client_error_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400]
    w = LokiWriter()
    w.configure(LokiOutput(type="loki", endpoint=receiver.url, batch_size=10, flush_interval=0.1))
    w.emit(record("bad"))
    await run_until(w, lambda: w.dropped_send == 1)
    assert receiver.requests == 1 and w.retries == 0


async def test_receiver_down_bounded_and_counted() -> None:
    url = f"http://127.0.0.1:{free_port()}/loki/api/v1/push"  # nothing listens there
    w = LokiWriter()
    w.configure(
        LokiOutput(
            type="loki",
            endpoint=url,
            batch_size=4,
            flush_interval=0.1,
            queue_size=10,
            max_retries=1,
            timeout_s=1,
        )
    )
    for i in range(25):
        w.emit(record(f"x{i}"))
    assert w.queued == 10 and w.dropped_queue == 15  # bounded: the oldest went first
    await run_until(w, lambda: w.dropped_queue + w.dropped_send == 25, limit_s=30)
    assert w.sent == 0
    assert w.dropped_queue + w.dropped_send == 25  # every line accounted for
    assert w.retries >= 1


async def test_log_runtime_sends_rendered_json(receiver: Receiver, tmp_path: Any) -> None:
    import structlog

    rt = LogRuntime()
    section = LogSection.model_validate(
        {
            "level": "info",
            "format": "json",
            "outputs": [{"type": "loki", "endpoint": receiver.url, "flush_interval": "100ms"}],
        }
    )
    rt.configure(section, agent_id="a1")
    try:
        structlog.stdlib.get_logger("otus.test").info("hello loki", task="t1")
        logging.getLogger("some.library").warning("plain %s", "logging")
        await run_until(rt.loki, lambda: rt.loki.sent >= 2)
    finally:
        rt.close()
        logging.getLogger().handlers.clear()
    events = [json.loads(line) for line in receiver.lines()]
    by_event = {e["event"]: e for e in events}
    assert by_event["hello loki"]["task"] == "t1" and by_event["hello loki"]["level"] == "info"
    assert by_event["plain logging"]["logger"] == "some.library"
    assert all("timestamp" in e for e in events)
