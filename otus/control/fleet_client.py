"""The sending end of the Kafka command plane: publish commands, collect replies, read heartbeats.

Used by ``otus fleet``. No consumer group: the client reads the reply and status topics by
assignment from offsets it picks (the replies from the end as of just before it sends; the
heartbeats from a time window), so it leaves nothing behind on the brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import math
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from otus.control.base import KafkaSettings
from otus.control.fleet import (
    ID_HEADER,
    BrokerUnreachableError,
    client_kwargs,
    command_key,
    ensure_topics,
    parse_command,
)

__all__ = ["FleetClient", "new_command_id", "stale"]

_MAX_HEARTBEATS = 200_000  # read from the status topic at most


def new_command_id() -> str:
    """A fresh, unique command id."""
    return f"c-{uuid.uuid4().hex}"


def stale(hb: Mapping[str, Any], now: float | None = None) -> bool:
    """No heartbeat for three intervals (the agent is gone, or cannot reach the brokers)."""
    now = time.time() if now is None else now
    interval = float(hb.get("heartbeat_interval_s") or 10.0)
    return now - float(hb.get("ts") or 0.0) > 3 * interval + 2.0


class FleetClient:
    """``async with FleetClient(settings) as fleet: ...``."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        client_id: str = "otus-fleet",
        connect_timeout_s: float = 15.0,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.connect_timeout_s = connect_timeout_s
        self._producer: Any = None
        self._consumer: Any = None

    async def __aenter__(self) -> FleetClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect (raise BrokerUnreachableError when no broker answers in time)."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: PLC0415
        from aiokafka.errors import KafkaError  # noqa: PLC0415

        s = self.settings
        timeout_s = self.connect_timeout_s
        if not (math.isfinite(timeout_s) and timeout_s > 0):  # asyncio and int() would choke
            raise ValueError(f"connect_timeout_s must be a finite number > 0, not {timeout_s}")
        kw = client_kwargs(s, self.client_id)
        kw["request_timeout_ms"] = max(1, min(s.request_timeout_ms, int(timeout_s * 1000)))
        self._producer = AIOKafkaProducer(**kw, acks="all", linger_ms=0)
        self._consumer = AIOKafkaConsumer(
            **kw, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=200
        )
        brokers = ",".join(s.brokers)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self._producer.start()
                await self._consumer.start()
                if s.create_topics:
                    await ensure_topics(s, kw)
        except BaseException as e:
            await self.close()  # or aiokafka warns of unclosed clients at exit
            if not isinstance(e, TimeoutError | KafkaError | OSError):
                raise
            raise BrokerUnreachableError(
                f"no Kafka broker answered at {brokers} within {self.connect_timeout_s:g} s"
                f" ({type(e).__name__})"
            ) from None

    async def close(self) -> None:
        """Disconnect."""
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), 5.0)
        self._consumer = self._producer = None

    async def _partitions(self, topic: str) -> list[Any]:
        from aiokafka import TopicPartition  # noqa: PLC0415

        parts = await self._producer.partitions_for(topic)
        return [TopicPartition(topic, p) for p in sorted(parts or ())]

    async def heartbeats(self, window_s: float = 600.0) -> dict[str, dict[str, Any]]:
        """The latest heartbeat of each agent heard from within ``window_s``."""
        consumer = self._consumer
        tps = await self._partitions(self.settings.status_topic)
        if not tps:
            return {}
        consumer.assign(tps)
        since = int((time.time() - window_s) * 1000)
        found = await consumer.offsets_for_times(dict.fromkeys(tps, since))
        end = await consumer.end_offsets(tps)
        todo = []
        for tp in tps:
            at = found.get(tp)
            if at is None:
                continue
            consumer.seek(tp, at.offset)
            todo.append(tp)
        latest: dict[str, dict[str, Any]] = {}
        seen = 0
        deadline = time.monotonic() + self.connect_timeout_s
        while todo and seen < _MAX_HEARTBEATS and time.monotonic() < deadline:
            batches = await consumer.getmany(*todo, timeout_ms=500, max_records=5000)
            for msgs in batches.values():
                for m in msgs:
                    seen += 1
                    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                        hb = orjson.loads(m.value)
                        if isinstance(hb, dict) and isinstance(hb.get("agent_id"), str):
                            old = latest.get(hb["agent_id"])
                            if old is None or float(hb.get("ts") or 0) >= float(old.get("ts") or 0):
                                latest[hb["agent_id"]] = hb
            todo = [tp for tp in todo if await consumer.position(tp) < end[tp]]
        return latest

    def envelope(
        self,
        command: str,
        target: Mapping[str, Any],
        *,
        task: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        expires_in_s: float | None = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """A command envelope (:mod:`otus.control.fleet`); EnvelopeError if agents refuse it."""
        now = time.time()
        env: dict[str, Any] = {
            "id": command_id or new_command_id(),
            "command": command,
            "target": dict(target),
            "sent_at": round(now, 6),
            "sender": f"{getpass.getuser()}@{socket.gethostname()}",
        }
        if task is not None:
            env["task"] = dict(task)
        if task_id is not None:
            env["task_id"] = task_id
        if expires_in_s:
            env["expires_at"] = round(now + expires_in_s, 6)
        # Checked as the agents check it, so nothing they would refuse (or, like an empty agent
        # list, silently skip) is sent; its size aside: that limit is the agents' own.
        parse_command(orjson.dumps(env), max_bytes=sys.maxsize)
        return env

    async def send_raw(
        self, value: bytes, *, key: bytes | None = None, command_id: str | None = None
    ) -> None:
        """Publish bytes on the command topic (tests use it for malformed commands)."""
        headers = [(ID_HEADER, command_id.encode())] if command_id else None
        await self._producer.send_and_wait(
            self.settings.command_topic, value, key=key, headers=headers
        )

    async def request(
        self,
        envelope: Mapping[str, Any],
        *,
        expected: set[str] | None = None,
        wait_s: float = 30.0,
        raw: bytes | None = None,
        header: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Send a command; yield each agent's first reply until ``expected`` all replied or
        ``wait_s`` passed (without ``expected``: until ``wait_s`` passed). ``raw`` replaces the
        encoded envelope (tests send malformed commands so), ``header`` the id header."""
        consumer = self._consumer
        tps = await self._partitions(self.settings.reply_topic)
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve now: every reply to the command comes after these offsets
            await consumer.position(tp)
        cid = str(envelope["id"])
        value = raw if raw is not None else orjson.dumps(envelope)
        await self.send_raw(value, key=command_key(envelope), command_id=cid if header else None)
        heard: set[str] = set()
        deadline = time.monotonic() + wait_s
        while True:
            if expected is not None and expected <= heard:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            batches = await consumer.getmany(*tps, timeout_ms=int(min(left, 0.5) * 1000) + 1)
            for msgs in batches.values():
                for m in msgs:
                    try:
                        reply = orjson.loads(m.value)
                    except (orjson.JSONDecodeError, TypeError):
                        continue
                    if not isinstance(reply, dict) or reply.get("request_id") != cid:
                        continue
                    agent = str(reply.get("agent_id"))
                    if agent in heard:
                        continue  # a redelivery's second reply
                    heard.add(agent)
                    yield reply
