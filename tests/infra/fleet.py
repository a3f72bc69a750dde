"""Helpers for the Kafka command plane's tests: fresh topics, group offsets, raw commands."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

from otus.control.base import KafkaSettings
from otus.control.fleet_client import FleetClient

__all__ = ["collect", "fleet_settings", "group_offsets", "rewind_group"]


def fleet_settings(bootstrap: str, **kw: Any) -> KafkaSettings:
    """Settings on topics no other test uses, with short intervals."""
    sfx = uuid.uuid4().hex[:8]
    kw.setdefault("command_topic", f"cmd-{sfx}")
    kw.setdefault("reply_topic", f"reply-{sfx}")
    kw.setdefault("status_topic", f"status-{sfx}")
    kw.setdefault("heartbeat_interval_s", 1.0)
    kw.setdefault("request_timeout_ms", 10_000)
    kw.setdefault("reconnect_backoff_max_s", 2.0)
    return KafkaSettings(brokers=[bootstrap], **kw)


async def collect(
    settings: KafkaSettings,
    command: str,
    target: Mapping[str, Any],
    *,
    expected: set[str] | None = None,
    wait_s: float = 30.0,
    raw: bytes | None = None,
    command_id: str | None = None,
    **kw: Any,
) -> tuple[str, list[dict[str, Any]]]:
    """Send one command; return its id and the replies that came within ``wait_s``."""
    async with FleetClient(settings) as fleet:
        env = fleet.envelope(command, target, command_id=command_id, **kw)
        replies = [r async for r in fleet.request(env, expected=expected, wait_s=wait_s, raw=raw)]
    return str(env["id"]), replies


async def group_offsets(settings: KafkaSettings, group: str) -> dict[int, int | None]:
    """The committed offsets of ``group`` on the command topic, by partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=list(settings.brokers), group_id=group)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(settings.command_topic)
        if not parts:
            await consumer.topics()
            await asyncio.sleep(0.5)
            parts = consumer.partitions_for_topic(settings.command_topic) or {0}
        out = {}
        for p in sorted(parts):
            out[p] = await consumer.committed(TopicPartition(settings.command_topic, p))
        return out
    finally:
        await consumer.stop()


async def rewind_group(settings: KafkaSettings, group: str, offset: int = 0) -> None:
    """Move a stopped agent's group back, so it is handed old commands again."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=list(settings.brokers), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(settings.command_topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()
