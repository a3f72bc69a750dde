"""aiokafka's repeated lines: a missing topic is said once, then once per interval with a count."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

import pytest

from otus.plugins.reporter.kafka import KafkaReporter
from otus.plugins.reporter.kafka_logs import REPEAT_EVERY_S, RepeatFilter, quiet_aiokafka
from tests.infra.kafka import KafkaBroker
from tests.plugins.reporter.test_kafka import CTX, assert_balanced, calls, config


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_a_repeated_line_passes_once_per_interval_with_the_count_it_held(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = logging.getLogger(f"otus-test-{uuid.uuid4().hex[:8]}")
    log.addFilter(RepeatFilter(60.0, clock=lambda: now[0]))
    for t in range(0, 130, 2):  # every 2 s for 130 s, as a metadata refresh would
        now[0] = float(t)
        log.error("Topic %s not found in cluster metadata", "otus-sip")
        if t == 10:
            log.error("Topic %s not found in cluster metadata", "otus-other")
    assert lines(caplog, log.name) == [
        "Topic otus-sip not found in cluster metadata",
        "Topic otus-other not found in cluster metadata",
        "Topic otus-sip not found in cluster metadata (29 more like this in the last 60 s)",
        "Topic otus-sip not found in cluster metadata (29 more like this in the last 60 s)",
    ]


def test_the_filter_is_installed_once_on_aiokafkas_metadata_logger() -> None:
    KafkaReporter(config("b:9092"), CTX)
    KafkaReporter(config("b:9092"), CTX)
    mine = [f for f in logging.getLogger("aiokafka.cluster").filters if isinstance(f, RepeatFilter)]
    assert mine == [quiet_aiokafka()]
    assert mine[0].every_s == REPEAT_EVERY_S


@pytest.mark.kafka
@pytest.mark.slow
async def test_a_missing_topic_is_logged_once_not_at_every_metadata_refresh(
    kafka_broker_no_autocreate: KafkaBroker,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    broker = kafka_broker_no_autocreate
    cfg = config(broker, flush_timeout_ms=15_000)
    topic = cfg.topic or ""
    reporter = KafkaReporter(cfg, CTX)
    # A short interval so the test sees the reminder too (a minute in production).
    monkeypatch.setattr(quiet_aiokafka(), "every_s", 1.0)
    for _ in range(25):  # 2.5 s of records for a topic nobody created
        await reporter.report(calls(2, 1))
        await asyncio.sleep(0.1)
    said = [m for m in lines(caplog, "aiokafka.cluster") if topic in m]
    # aiokafka says it at every refresh (retry_backoff_ms: 50 ms here): some 50 lines, not 3.
    assert said[0] == f"Topic {topic} not found in cluster metadata"
    assert 2 <= len(said) <= 4, said
    for reminder in said[1:]:
        assert re.fullmatch(
            rf"Topic {topic} not found in cluster metadata \(\d+ more like this in the last 1 s\)",
            reminder,
        ), reminder
    # Once the topic exists, what waited is delivered.
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    await reporter.flush()
    stats = dict(reporter.stats())
    await reporter.close()
    assert stats["report.kafka.sent"] == stats["report.kafka.records"] == 50, stats
    assert_balanced(stats)
