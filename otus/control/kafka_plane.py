"""The Kafka command plane: commands from a topic, replies and heartbeats to two others.

Formats: :mod:`otus.control.fleet`. Each agent reads every partition of the command topic under
a consumer group of its own (``otus-agent-<agent id>``; assigned, not subscribed: no rebalances),
so every agent sees every command, in order per partition, and acts on those that target it
through the daemon's one command set (:class:`~otus.control.commands.Commands`, as the socket).

At most once per agent, across restarts. For each command that targets this agent:

1. skip it when :class:`~otus.control.applied.AppliedLog` knows its id (a redelivery): reply with
   the recorded outcome, ``"duplicate": true`` (:mod:`~otus.control.redelivery`); an id recorded
   for a different command is refused instead, its sender reusing ids;
2. append ``pending`` to the record and fsync it — before anything is applied;
3. apply it; append the outcome (``done``) and fsync;
4. reply; commit the offset after the message (manual commits, one per handled message).

Crash windows: before 2, the offset is not committed either, so the command comes back and is
applied once. Between 2 and the end of 3 it is applied at most once: the redelivered command finds
``pending`` and gets a COMMAND_INTERRUPTED reply instead of a second application (it may or may not
have taken effect: ``task.status`` tells). Between 3 and 4 the redelivery gets the recorded outcome
again (a second reply, flagged ``duplicate``); the same after 4 if the commit was lost. A record
that cannot be written (disk full) fails the plane before anything is applied, and the daemon
restarts it: the command comes back. A shutdown lets a command being applied finish (1.5 s at
most, else it stays ``pending``). A command refused because the daemon is stopping is
``released`` and its offset left uncommitted, so the next start applies it. The record keeps the
newest ``applied_max`` ids; an older id can only come back if the group's offsets are moved back by
hand, or a sender reuses an id. A new group (first start, or offsets expired) starts at the end of
the topic: an agent never replays history it did not see. Offsets are committed again every
10 minutes so an idle agent's group does not expire (``offsets.retention.minutes``).

Heartbeats go to the status topic every ``heartbeat_interval_s`` (and within a second of a task
changing state), keyed by agent id, the first one once the agent is listening; a last one with
``"state": "stopping"`` on shutdown. When no broker answers, the plane retries with backoff
(1 s doubling to ``reconnect_backoff_max_s``) and logs; it never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import structlog

from otus.control.applied import AppliedLog
from otus.control.base import KafkaSettings, PlaneContext
from otus.control.fleet import (
    COMMAND_EXPIRED,
    ID_HEADER,
    Command,
    EnvelopeError,
    client_kwargs,
    ensure_topics,
    error_reply,
    ok_reply,
    parse_command,
)
from otus.control.jsonrpc import SHUTTING_DOWN, error_for
from otus.control.redelivery import duplicate_reply, reused_id_reply
from otus.core.aio import cancel_requested
from otus.core.stats import drops

__all__ = ["KafkaPlane", "heartbeat"]

log = structlog.stdlib.get_logger("otus.control.kafka")

_RECOMMIT_S = 600.0
_PARTITIONS_CHECK_S = 60.0
# Once cancelled, everything left (the command in hand, its reply, the last heartbeat, closing
# the clients) shares this budget: the daemon gives its planes 30 % of shutdown_timeout_s.
_STOP_BUDGET_S = 3.5
_RESTORE_WAIT_S = 60.0
_MAX_VALUE = 900_000  # replies and heartbeats stay under the default 1 MiB message limit
_MAX_TASKS_LISTED = 500
_COUNTERS = {
    "packets": "capture.packets",
    "messages": "parse.messages",
    "records": "report.records",
    "kafka_sent": "report.kafka.sent",
    "buffered": "report.buffered",
}


class _Released(Exception):
    """A command was refused because the daemon is stopping: leave its offset uncommitted."""


def _header(headers: Any, name: str) -> str | None:
    for k, v in headers or ():
        if k == name and isinstance(v, bytes | bytearray):
            with contextlib.suppress(UnicodeDecodeError):
                return bytes(v).decode()
    return None


def _slim(result: Any) -> Any:
    """A result too large for one message: task lists lose specs and per-worker counters."""
    if isinstance(result, dict) and isinstance(result.get("tasks"), list):
        drop = {"spec", "workers", "processes"}
        return {
            **result,
            "tasks": [{k: v for k, v in t.items() if k not in drop} for t in result["tasks"]],
            "truncated": True,
        }
    if isinstance(result, dict):
        drop = {"spec", "workers", "processes"}
        return {**{k: v for k, v in result.items() if k not in drop}, "truncated": True}
    return {"truncated": True}


def heartbeat(
    ctx: PlaneContext, state: str, seq: int, interval: float, cmd: Counter[str]
) -> dict[str, Any]:
    """The status topic's value for this agent now."""
    now = time.time()
    tasks = []
    infos = ctx.manager.list()
    for info in infos[:_MAX_TASKS_LISTED]:
        stats = info.stats
        counters = {k: int(stats.get(name, 0)) for k, name in _COUNTERS.items()}
        counters["dropped"] = sum(drops(stats).values())
        tasks.append(
            {
                "id": info.id,
                "state": info.state.value,
                "reason": (info.reason or "")[:300] or None,
                "started_at": info.started_at,
                "counters": counters,
            }
        )
    out: dict[str, Any] = {
        "type": "heartbeat",
        "agent_id": ctx.agent_id,
        "state": state,
        "ts": round(now, 6),
        "seq": seq,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "version": ctx.version,
        "tags": dict(ctx.tags),
        "started_at": ctx.started_at,
        "uptime_s": round(now - ctx.started_at, 3) if ctx.started_at else None,
        "heartbeat_interval_s": interval,
        "tasks": tasks,
        "commands": dict(cmd),
    }
    if len(infos) > _MAX_TASKS_LISTED:
        out["tasks_truncated"] = len(infos) - _MAX_TASKS_LISTED
    return out


class KafkaPlane:
    """Serves the command topic until cancelled (see the module docstring)."""

    def __init__(self, settings: KafkaSettings, ctx: PlaneContext) -> None:
        self.settings = settings
        self.ctx = ctx
        agent = ctx.agent_id
        self.group_id = settings.group_id or f"otus-agent-{agent}"
        self.client_id = settings.client_id or f"otus-agent-{agent}"
        path = settings.applied_file or (
            f"{ctx.state_file}.kafka-applied" if ctx.state_file else ""
        )
        self.applied = AppliedLog(Path(path) if path else None, settings.applied_max)
        self.counts: Counter[str] = Counter(
            dict.fromkeys(
                ("received", "applied", "failed", "duplicates", "skipped", "malformed", "expired"),
                0,
            )
        )
        self.listening = False
        self._loaded = False
        self._seq = 0
        self._changed = asyncio.Event()
        self._hb_failures = 0
        self._producer: Any = None
        self._deadline: float | None = None  # monotonic end of the stop budget, once cancelled

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; return only by cancellation."""
        if not self._loaded:
            await asyncio.to_thread(self.applied.load)
            self._loaded = True
            if self.applied.bad_lines:
                log.warning("kafka: unreadable lines in the command record skipped",
                            path=str(self.applied.path), lines=self.applied.bad_lines)  # fmt: skip
        unsubscribe = self.ctx.manager.subscribe(lambda _info: self._changed.set())
        backoff, tries = 1.0, 0
        try:
            while True:
                try:
                    await self._session()
                except Exception as e:
                    tries += 1
                    if tries == 1 or tries % 10 == 0:
                        log.warning("kafka command plane: no broker, or failed; retrying",
                                    brokers=",".join(self.settings.brokers), error=repr(e),
                                    tries=tries, retry_s=backoff)  # fmt: skip
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.settings.reconnect_backoff_max_s)
                else:
                    backoff, tries = 1.0, 0
        finally:
            unsubscribe()

    async def _session(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: PLC0415

        s = self.settings
        kw = client_kwargs(s, self.client_id)
        fetch = max(1 << 20, s.max_command_bytes + (64 << 10))
        producer = AIOKafkaProducer(**kw, acks="all", linger_ms=0, max_request_size=1 << 20)
        consumer = AIOKafkaConsumer(
            **kw,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            max_partition_fetch_bytes=fetch,
            fetch_max_bytes=max(fetch, 50 << 20),
            metadata_max_age_ms=60_000,
        )
        beats: asyncio.Task[None] | None = None
        try:
            timeout = s.request_timeout_ms / 1000 + 5
            for client in (producer, consumer):
                await asyncio.wait_for(client.start(), timeout)
            if s.create_topics:
                await self._create_topics(kw, timeout)
            await self._restored()
            tps = await self._assign(consumer, producer)
            self._producer = producer
            self.listening = True
            log.info("kafka command plane listening", group=self.group_id, topic=s.command_topic,
                     partitions=len(tps), brokers=",".join(s.brokers))  # fmt: skip
            beats = asyncio.create_task(self._heartbeats(producer), name="kafka-heartbeats")
            await self._consume(consumer, producer, tps)
        except (asyncio.CancelledError, Exception) as e:
            # Also a failure while a cancel is pending: wait_for() (Python 3.11) can swallow the
            # cancel as a call fails; retrying would outlive the shutdown, heartbeat unsent.
            if not isinstance(e, asyncio.CancelledError) and not cancel_requested():
                raise
            self._stop_by()
            if self.listening:
                await self._stopping_heartbeat(producer)
            if isinstance(e, asyncio.CancelledError):
                raise
            raise asyncio.CancelledError from e
        finally:
            self.listening = False
            self._producer = None
            if beats is not None:
                beats.cancel()
                await asyncio.wait([beats], timeout=self._left(1.0))
            for client in (consumer, producer):  # started or not: a failed start holds sockets
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.stop(), self._left(5.0))
            self._deadline = None

    def _stop_by(self) -> None:
        """Cancelled: start the clock of the stop budget."""
        if self._deadline is None:
            self._deadline = time.monotonic() + _STOP_BUDGET_S

    def _left(self, normally: float) -> float:
        """A step's time limit: ``normally``, or what is left of the stop budget."""
        if self._deadline is None:
            return normally
        return max(0.1, min(normally, self._deadline - time.monotonic()))

    async def _create_topics(self, kw: dict[str, Any], limit_s: float) -> None:
        try:
            problems = await asyncio.wait_for(ensure_topics(self.settings, kw), limit_s)
        except Exception as e:  # no rights to create topics: they may exist all the same
            problems = [repr(e)]
        for problem in problems:
            log.warning("kafka: cannot create a topic", problem=problem)

    async def _restored(self) -> None:
        """Wait (bounded) for the daemon's restore, so commands meet the tasks it brings back."""
        for _ in range(int(_RESTORE_WAIT_S * 10)):
            if self.ctx.manager.restored:
                return
            await asyncio.sleep(0.1)

    async def _assign(self, consumer: Any, producer: Any) -> list[Any]:
        """Assign every partition of the command topic; a new group starts at its end."""
        from aiokafka import TopicPartition  # noqa: PLC0415

        topic = self.settings.command_topic
        tries = 0
        while True:
            try:
                parts = await producer.partitions_for(topic)
            except Exception as e:  # KafkaTimeoutError: no such topic (yet)
                parts, error = None, repr(e)
            if parts:
                break
            tries += 1
            if tries % 20 == 1:
                log.warning("kafka: waiting for the command topic", topic=topic, error=error)
            await asyncio.sleep(min(0.5 * tries, 5.0))
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        fresh = {}
        for tp in tps:
            if await consumer.committed(tp) is None:
                fresh[tp] = await consumer.position(tp)  # resolves to the end: no history
        if fresh:
            # Committed now, so a restart before the first command resumes from here.
            await consumer.commit(fresh)
        return tps

    # -- commands --------------------------------------------------------------------------

    async def _consume(self, consumer: Any, producer: Any, tps: list[Any]) -> None:
        last_commit = last_check = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=64)
            for tp, msgs in batches.items():
                for msg in msgs:
                    try:
                        await self._handle(msg)
                    except _Released:
                        # The daemon is stopping and cancels this plane next; the command's
                        # offset stays uncommitted. Should no cancel come, start over from the
                        # committed offsets (the command comes back).
                        await asyncio.sleep(60)
                        return
                    await self._commit(consumer, {tp: msg.offset + 1})
                    last_commit = time.monotonic()
            now = time.monotonic()
            if now - last_commit > _RECOMMIT_S:
                positions = {tp: await consumer.position(tp) for tp in tps}
                await self._commit(consumer, positions)
                last_commit = now
            if now - last_check > _PARTITIONS_CHECK_S:
                last_check = now
                parts = consumer.partitions_for_topic(self.settings.command_topic) or set()
                if len(parts) > len(tps):
                    log.info("kafka: the command topic grew", partitions=len(parts))
                    tps = await self._assign(consumer, producer)

    async def _commit(self, consumer: Any, offsets: dict[Any, int]) -> None:
        try:
            await consumer.commit(offsets)
        except Exception as e:  # redelivery is harmless: the record catches it
            log.warning("kafka: offset commit failed", error=repr(e))

    async def _handle(self, msg: Any) -> None:
        self.counts["received"] += 1
        me, tags = self.ctx.agent_id, self.ctx.tags
        try:
            cmd = parse_command(
                msg.value,
                max_bytes=self.settings.max_command_bytes,
                header_id=_header(msg.headers, ID_HEADER),
            )
        except EnvelopeError as e:
            if e.target is not None and not e.target.matches(me, tags):
                self.counts["skipped"] += 1
                return
            self.counts["malformed"] += 1
            log.warning("kafka: malformed command", offset=msg.offset, id=e.command_id,
                        error=e.message)  # fmt: skip
            if e.command_id is not None:
                await self._reply(error_reply(e.command_id, me, e.command, e.code, e.message))
            return
        if not cmd.target.matches(me, tags):
            self.counts["skipped"] += 1
            return
        if cmd.expires_at is not None and time.time() > cmd.expires_at:
            self.counts["expired"] += 1
            await self._reply(
                error_reply(cmd.id, me, cmd.command, COMMAND_EXPIRED, "the command has expired")
            )
            return
        prior = self.applied.get(cmd.id)
        if prior is not None:
            if (refusal := reused_id_reply(cmd, prior, me)) is not None:
                self.counts["malformed"] += 1
                log.warning("kafka: command id reused for another command", id=cmd.id,
                            command=cmd.command, before=prior.get("command"))  # fmt: skip
                await self._reply(refusal)
                return
            self.counts["duplicates"] += 1
            await self._reply(duplicate_reply(cmd, prior, me))
            return
        write = asyncio.ensure_future(asyncio.to_thread(self.applied.begin, cmd.id, cmd.command))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:  # stopping before applying: leave it for the next start
            await asyncio.wait([write], timeout=1.0)
            if write.done():  # else it stays pending: reported as interrupted, never applied
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.applied.release, cmd.id)
            raise
        await self._apply(cmd)

    async def _apply(self, cmd: Command) -> None:
        call = asyncio.ensure_future(self.ctx.commands.call(cmd.command, cmd.params, plane="kafka"))
        try:
            # wait() never cancels ``call``: a shutdown must not cut a task.create in half.
            # Outcomes (errors too) are read from the future.
            await asyncio.wait([call])
        except asyncio.CancelledError:
            self._stop_by()
            await asyncio.wait([call], timeout=self._left(1.5))
            if call.done():
                with contextlib.suppress(_Released):
                    await self._settle(cmd, call)
            raise
        await self._settle(cmd, call)

    async def _settle(self, cmd: Command, call: asyncio.Future[Any]) -> None:
        me = self.ctx.agent_id
        exc = call.exception()
        if exc is None:
            await asyncio.to_thread(self.applied.finish, cmd.id, ok=True)
            self.counts["applied"] += 1
            log.info("kafka command applied", id=cmd.id, command=cmd.command)
            await self._reply(ok_reply(cmd.id, me, cmd.command, call.result()))
            return
        code, message, data = error_for(exc)
        if code == SHUTTING_DOWN:
            await asyncio.to_thread(self.applied.release, cmd.id)
            log.info("kafka command left for the next start", id=cmd.id, command=cmd.command)
            raise _Released(cmd.id)
        await asyncio.to_thread(self.applied.finish, cmd.id, ok=False, code=code, message=message)
        self.counts["failed"] += 1
        log.info("kafka command failed", id=cmd.id, command=cmd.command, code=code, error=message)
        await self._reply(error_reply(cmd.id, me, cmd.command, code, message, data))

    async def _reply(self, reply: dict[str, Any]) -> None:
        producer = self._producer
        if producer is None:
            return
        value = orjson.dumps(reply, default=str)
        if len(value) > _MAX_VALUE and "result" in reply:
            value = orjson.dumps({**reply, "result": _slim(reply["result"])}, default=str)
            if len(value) > _MAX_VALUE:
                value = orjson.dumps({**reply, "result": {"truncated": True}})
        try:
            await asyncio.wait_for(
                producer.send_and_wait(
                    self.settings.reply_topic, value, key=str(reply["request_id"]).encode()
                ),
                self._left(self.settings.request_timeout_ms / 1000),
            )
        except Exception as e:
            log.warning("kafka: reply not sent", id=reply["request_id"], error=repr(e))

    # -- heartbeats ------------------------------------------------------------------------

    async def _heartbeats(self, producer: Any) -> None:
        interval = self.settings.heartbeat_interval_s
        while True:
            self._changed.clear()
            await self._beat(producer, "running", self.settings.request_timeout_ms / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), interval)
                await asyncio.sleep(min(1.0, interval))  # several changes, one heartbeat

    async def _beat(self, producer: Any, state: str, within_s: float) -> None:
        self._seq += 1
        hb = heartbeat(self.ctx, state, self._seq, self.settings.heartbeat_interval_s, self.counts)
        try:
            await asyncio.wait_for(
                producer.send_and_wait(
                    self.settings.status_topic,
                    orjson.dumps(hb, default=str),
                    key=self.ctx.agent_id.encode(),
                ),
                within_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._hb_failures += 1
            if self._hb_failures == 1 or self._hb_failures % 20 == 0:
                log.warning("kafka: heartbeat not sent", error=repr(e), failures=self._hb_failures)
            return
        if self._hb_failures:
            log.info("kafka: heartbeats flowing again", failures=self._hb_failures)
            self._hb_failures = 0

    async def _stopping_heartbeat(self, producer: Any) -> None:
        with contextlib.suppress(BaseException):
            await self._beat(producer, "stopping", self._left(1.5))
