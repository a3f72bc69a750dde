"""The Kafka reporter against a real broker: contents, keys, ordering, codecs, outages, counters."""

from __future__ import annotations

import asyncio
import gc
import random
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from otus.core.errors import ReporterError
from otus.core.packet import Encap, OutputPacket, Tunnel
from otus.core.record import to_record
from otus.plugins.base import PluginContext
from otus.plugins.reporter.kafka import KafkaConfig, KafkaReporter, murmur2, partition_for
from tests.infra.kafka import SASL_PASSWORD, SASL_USER, KafkaBroker, free_port, read_topic

CTX = PluginContext(task_id="t1", agent_id="node-a")
DROPS = (
    "report.drop.backpressure",
    "report.drop.kafka_failed",
    "report.drop.kafka_too_large",
    "report.drop.kafka_closed",
)


def packet(call: int, seq: int, *, payload_type: str = "sip", call_id: str | None = None) -> Any:
    """One SIP-like output packet; ``seq`` numbers it across the whole test."""
    cid = call_id if call_id is not None else f"{call:06d}-{uuid.uuid4().hex[:6]}@otus.test"
    payload = {"call_id": cid or None, "method": "INVITE", "cseq": {"seq": seq}, "seq": seq}
    encap = Encap(vlans=[100], tunnels=[Tunnel("vxlan", "10.9.0.1", "10.9.0.2", 42)])
    return OutputPacket(
        1_795_315_633_000_000 + seq, "10.0.0.1", "10.0.0.2", 5060, 5060, 17, payload_type,
        payload, {"sip.method": "INVITE"}, encap if seq % 2 else None,
    )  # fmt: skip


def calls(n_calls: int, per_call: int, start: int = 0) -> list[OutputPacket]:
    """``n_calls`` calls of ``per_call`` messages each, interleaved as on the wire."""
    cids = [f"{c:06d}-{uuid.uuid4().hex[:8]}@otus.test" for c in range(n_calls)]
    out = []
    seq = start
    for _ in range(per_call):
        for c, cid in enumerate(cids):
            out.append(packet(c, seq, call_id=cid))
            seq += 1
    return out


def config(kafka: KafkaBroker | str, **kw: Any) -> KafkaConfig:
    """A reporter config for a fresh topic unless one is given."""
    bootstrap = kafka if isinstance(kafka, str) else kafka.bootstrap
    kw.setdefault("topic" if "topic_prefix" not in kw else "_", f"t-{uuid.uuid4().hex[:10]}")
    kw.pop("_", None)
    kw.setdefault("request_timeout_ms", 5000)
    kw.setdefault("retry_backoff_ms", 50)
    kw.setdefault("reconnect_backoff_max_ms", 500)
    return KafkaConfig(brokers=[bootstrap], **kw)


def assert_balanced(stats: Mapping[str, int]) -> None:
    """Every record handed to report() is sent, dropped for one reason, or still buffered."""
    assert stats["report.kafka.records"] == (
        stats["report.kafka.sent"] + sum(stats[k] for k in DROPS) + stats["report.buffered"]
    ), stats


def seqs(messages: list[Any]) -> list[int]:
    return [orjson.loads(m.value)["sip"]["seq"] for m in messages]


# -- configuration (no broker) -------------------------------------------------------------


def test_exactly_one_of_topic_and_prefix() -> None:
    with pytest.raises(ValidationError, match="exactly one of topic and topic_prefix"):
        KafkaConfig(brokers=["b:9092"])
    with pytest.raises(ValidationError, match="exactly one of topic and topic_prefix"):
        KafkaConfig(brokers=["b:9092"], topic="a", topic_prefix="b")


def test_config_rejects_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="compression"):
        KafkaConfig(brokers=["b:9092"], topic="a", compression="brotli")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="needs sasl_mechanism and username"):
        KafkaConfig(brokers=["b:9092"], topic="a", security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="one of password, password_file"):
        KafkaConfig(
            brokers=["b:9092"], topic="a", security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512", username="u",
        )  # fmt: skip
    with pytest.raises(ValidationError, match="SASL settings need"):
        KafkaConfig(brokers=["b:9092"], topic="a", username="u")
    with pytest.raises(ValidationError, match="ssl_\\* files need"):
        KafkaConfig(brokers=["b:9092"], topic="a", ssl_cafile="/ca.pem")
    with pytest.raises(ValidationError, match="enable_idempotence needs acks"):
        KafkaConfig(brokers=["b:9092"], topic="a", acks="1", enable_idempotence=True)
    with pytest.raises(ValidationError, match="extra"):
        KafkaConfig(brokers=["b:9092"], topic="a", bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        KafkaConfig(brokers=["b:9092"], topic="bad topic")


def test_acks_accepts_yaml_integers() -> None:
    assert KafkaConfig(brokers=["b:9092"], topic="a", acks=1).acks == "1"  # type: ignore[arg-type]
    assert KafkaConfig(brokers=["b:9092"], topic="a", acks=0).acks == "0"  # type: ignore[arg-type]


def _unbounded(schema: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    """Schema paths of strings, arrays and numbers that have no upper bound."""
    if "$ref" in schema:
        return _unbounded(defs[schema["$ref"].rsplit("/", 1)[1]], defs, path)
    bad = []
    for sub in schema.get("anyOf", []):
        bad += _unbounded(sub, defs, path)
    kind = schema.get("type")
    if kind == "string" and "maxLength" not in schema and "enum" not in schema:
        bad.append(path)
    if kind == "array":
        if "maxItems" not in schema:
            bad.append(path)
        bad += _unbounded(schema.get("items", {}), defs, path + "[]")
    if kind in ("integer", "number") and "maximum" not in schema:
        bad.append(path)
    for name, prop in schema.get("properties", {}).items():
        bad += _unbounded(prop, defs, f"{path}.{name}")
    return bad


def test_every_field_is_bounded_for_the_crd() -> None:
    schema = KafkaConfig.model_json_schema()
    assert _unbounded(schema, schema.get("$defs", {}), "kafka") == []
    assert issubclass(KafkaReporter.Config, BaseModel)


def test_missing_tls_file_fails_at_construction(tmp_path: Any) -> None:
    cfg = KafkaConfig(
        brokers=["b:9093"], topic="a", security_protocol="SSL", ssl_cafile=str(tmp_path / "no.pem")
    )
    with pytest.raises(ReporterError, match="TLS"):
        KafkaReporter(cfg, CTX)


def test_password_file_is_read(tmp_path: Any) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    cfg = KafkaConfig(
        brokers=["b:9092"], topic="a", security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256", username="otus", password_file=str(secret),
    )  # fmt: skip
    KafkaReporter(cfg, CTX)
    cfg = cfg.model_copy(update={"password_file": str(tmp_path / "missing")})
    with pytest.raises(ReporterError, match="password_file"):
        KafkaReporter(cfg, CTX)


def test_missing_codec_library_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiokafka.codec

    monkeypatch.setattr(aiokafka.codec, "has_zstd", lambda: False)
    with pytest.raises(ReporterError, match=r"zstd.*cramjam"):
        KafkaReporter(KafkaConfig(brokers=["b:9092"], topic="a", compression="zstd"), CTX)


# -- partitioning --------------------------------------------------------------------------


def test_murmur2_matches_the_java_client() -> None:
    # Values from Kafka's UtilsTest.testMurmur2 (signed Java ints).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, java in cases.items():
        assert murmur2(data) == java & 0xFFFFFFFF


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=1000))
def test_partition_matches_the_default_partitioner(key: bytes, n: int) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)
    parts = list(range(n))
    assert partition_for(key, n) == DefaultPartitioner()(key, parts, parts)


# -- against the broker --------------------------------------------------------------------


@pytest.mark.kafka
async def test_records_arrive_as_the_record_contract(kafka_broker: KafkaBroker) -> None:
    cfg = config(kafka_broker, headers=True)
    reporter = KafkaReporter(cfg, CTX)
    sent = calls(40, 5)
    for i in range(0, len(sent), 64):
        await reporter.report(sent[i : i + 64])
    await reporter.flush()
    stats = dict(reporter.stats())
    await reporter.close()
    msgs = await read_topic(kafka_broker.bootstrap, cfg.topic or "")
    assert stats["report.kafka.sent"] == len(sent) == len(msgs)
    assert stats["report.buffered"] == 0
    assert_balanced(reporter.stats())
    expected = {p.payload["seq"]: to_record(p, CTX.task_id, CTX.agent_id) for p in sent}
    by_call: dict[bytes, set[int]] = defaultdict(set)
    for m in msgs:
        record = orjson.loads(m.value)
        assert record == expected[record["sip"]["seq"]]
        assert m.key == record["sip"]["call_id"].encode()
        assert m.partition == partition_for(m.key, 3)
        assert dict(m.headers) == {"task_id": b"t1", "agent_id": b"node-a"}
        by_call[m.key].add(m.partition)
    assert all(len(p) == 1 for p in by_call.values())
    # within a partition, each call's messages keep the order they were reported in
    per_call: dict[bytes, list[int]] = defaultdict(list)
    for m in msgs:
        per_call[m.key].append(orjson.loads(m.value)["sip"]["seq"])
    assert all(s == sorted(s) and len(s) == 5 for s in per_call.values())


@pytest.mark.kafka
async def test_topic_prefix_names_topic_by_payload_type(kafka_broker: KafkaBroker) -> None:
    prefix = f"otus-{uuid.uuid4().hex[:8]}"
    reporter = KafkaReporter(config(kafka_broker, topic_prefix=prefix), CTX)
    await reporter.report([packet(1, 0), packet(2, 1, payload_type="other"), packet(3, 2)])
    await reporter.close()
    sip = await read_topic(kafka_broker.bootstrap, f"{prefix}-sip")
    other = await read_topic(kafka_broker.bootstrap, f"{prefix}-other")
    assert sorted(seqs(sip)) == [0, 2]
    assert [orjson.loads(m.value)["other"]["seq"] for m in other] == [1]


@pytest.mark.kafka
@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
async def test_each_codec_round_trips(kafka_broker: KafkaBroker, codec: str) -> None:
    cfg = config(kafka_broker, compression=codec, batch_size=16_384)
    reporter = KafkaReporter(cfg, CTX)
    sent = calls(50, 4)
    await reporter.report(sent)
    await reporter.close()
    msgs = await read_topic(kafka_broker.bootstrap, cfg.topic or "")
    assert sorted(seqs(msgs)) == [p.payload["seq"] for p in sent]
    assert reporter.stats()["report.kafka.sent"] == len(sent)


@pytest.mark.kafka
async def test_keyless_and_oversized_records(kafka_broker: KafkaBroker) -> None:
    cfg = config(kafka_broker, max_request_size=1024)
    reporter = KafkaReporter(cfg, CTX)
    big = packet(1, 1)
    big.payload["body"] = "x" * 2000
    await reporter.report([packet(0, 0, call_id=""), big, packet(2, 2)])
    await reporter.close()
    stats = reporter.stats()
    assert stats["report.drop.kafka_too_large"] == 1
    assert stats["report.kafka.sent"] == 2
    assert_balanced(stats)
    msgs = await read_topic(kafka_broker.bootstrap, cfg.topic or "")
    assert sorted((seqs([m])[0], m.key is None) for m in msgs) == [(0, True), (2, False)]


@pytest.mark.kafka
async def test_close_flushes(kafka_broker: KafkaBroker) -> None:
    cfg = config(kafka_broker, linger_ms=200)
    reporter = KafkaReporter(cfg, CTX)
    sent = calls(30, 3)
    await reporter.report(sent)
    assert reporter.stats()["report.buffered"] == len(sent)
    await reporter.close()
    assert reporter.stats()["report.kafka.sent"] == len(sent)
    assert len(await read_topic(kafka_broker.bootstrap, cfg.topic or "")) == len(sent)
    await reporter.report([packet(9, 99)])  # after close: counted, not sent
    assert reporter.stats()["report.drop.kafka_closed"] == 1
    assert_balanced(reporter.stats())


async def test_unreachable_broker_does_not_crash_the_pipeline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = config(f"127.0.0.1:{free_port()}", flush_timeout_ms=300, buffer_max_records=50)
    reporter = KafkaReporter(cfg, CTX)
    await reporter.report(calls(10, 3))  # 30 fit
    await reporter.report(calls(10, 3))  # 20 fit, 10 wait block_ms then drop
    await reporter.report(calls(1, 1))  # dropped too: logged once for both
    full = [r.getMessage() for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(full) == 1, full  # dropping records is never silent in the log either
    assert re.fullmatch(
        r"kafka: buffer full \(50 records, \d+ bytes\) for block_ms: 10 records dropped so far "
        r"\(report.drop.backpressure\)",
        full[0],
    ), full
    await asyncio.sleep(0.5)
    stats = reporter.stats()
    assert stats["report.kafka.connect_failed"] >= 1
    assert stats["report.buffered"] == 50
    assert stats["report.drop.backpressure"] == 11
    await reporter.close()
    stats = reporter.stats()
    assert stats["report.drop.kafka_closed"] == 50
    assert stats["report.buffered"] == 0
    assert_balanced(stats)


async def _stream(reporter: KafkaReporter, packets: list[OutputPacket], pause: float) -> None:
    for i in range(0, len(packets), 100):
        await reporter.report(packets[i : i + 100])
        await asyncio.sleep(pause)


@pytest.mark.kafka
@pytest.mark.slow
async def test_broker_restart_mid_stream_loses_nothing_within_the_bound(
    kafka_broker: KafkaBroker,
) -> None:
    cfg = config(kafka_broker, buffer_max_records=20_000, block_ms=60_000, flush_timeout_ms=90_000)
    reporter = KafkaReporter(cfg, CTX)
    sent = calls(200, 20)  # 4000 records
    try:
        streaming = asyncio.create_task(_stream(reporter, sent, 0.05))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(kafka_broker.stop)
        await asyncio.sleep(1.0)  # records keep coming while the broker is away
        await asyncio.to_thread(kafka_broker.start)
        await streaming
        await reporter.flush()
    finally:
        if kafka_broker.pid is None:
            kafka_broker.start()
    await reporter.close()
    stats = reporter.stats()
    msgs = await read_topic(kafka_broker.bootstrap, cfg.topic or "")
    assert sorted(seqs(msgs)) == [p.payload["seq"] for p in sent]  # each exactly once
    assert stats["report.kafka.sent"] == len(sent)
    assert sum(stats[k] for k in DROPS) == 0
    assert_balanced(stats)


@pytest.mark.kafka
@pytest.mark.slow
async def test_closing_during_an_outage_keeps_to_the_flush_timeout_and_raises_nothing(
    kafka_broker: KafkaBroker,
) -> None:
    # Tearing down a producer whose batches aiokafka had re-queued after the broker went away
    # raised KeyError in aiokafka's callbacks and left failed futures unread: tracebacks after
    # the summary of `otus run`, whose last line must say how many records were not delivered.
    # And close() then waited 5 s more for aiokafka's stop(): a daemon stopping the task (9 s
    # grace) killed the worker even with flush_timeout_ms 5000, its buffered records uncounted.
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, c: errors.append(c))
    cfg = config(kafka_broker, flush_timeout_ms=1000, linger_ms=0)
    reporter = KafkaReporter(cfg, CTX)
    sent = calls(200, 10)  # 2000 records
    try:
        streaming = asyncio.create_task(_stream(reporter, sent, 0.2))  # 4 s
        await asyncio.sleep(0.5)
        await asyncio.to_thread(kafka_broker.stop)  # while batches are in flight
        await streaming
        t0 = time.monotonic()
        await reporter.close()
        closing = time.monotonic() - t0
    finally:
        if kafka_broker.pid is None:
            kafka_broker.start()
    stats = dict(reporter.stats())
    del reporter, streaming
    gc.collect()  # unread future exceptions are reported when the future is collected
    await asyncio.sleep(0.1)
    assert [(c["message"], c.get("exception")) for c in errors] == []
    assert closing < 1.0 + 3.0  # the flush timeout, then the teardown of the producer
    assert stats["report.drop.kafka_closed"] > 0, stats
    assert (stats["report.buffered"], stats["report.buffered_bytes"]) == (0, 0), stats
    got = seqs(await read_topic(kafka_broker.bootstrap, cfg.topic or ""))
    assert len(got) == len(set(got)), stats
    # A batch the broker wrote as it went down, unacknowledged, counts as undelivered.
    assert stats["report.kafka.sent"] <= len(got), stats
    assert_balanced(stats)


@pytest.mark.kafka
@pytest.mark.slow
async def test_losses_beyond_the_bound_equal_the_drop_counter(kafka_broker: KafkaBroker) -> None:
    cfg = config(kafka_broker, buffer_max_records=500, block_ms=20, flush_timeout_ms=90_000)
    reporter = KafkaReporter(cfg, CTX)
    sent = calls(100, 25)  # 2500 records
    try:
        await reporter.report(sent[:300])
        await reporter.flush()
        await asyncio.to_thread(kafka_broker.stop)
        await _stream(reporter, sent[300:], 0.0)
        during = dict(reporter.stats())
        await asyncio.to_thread(kafka_broker.start)
        await reporter.flush()
    finally:
        if kafka_broker.pid is None:
            kafka_broker.start()
    await reporter.close()
    stats = reporter.stats()
    got = seqs(await read_topic(kafka_broker.bootstrap, cfg.topic or ""))
    lost = {p.payload["seq"] for p in sent} - set(got)
    assert len(got) == len(set(got)) == stats["report.kafka.sent"]
    assert during["report.buffered"] == 500
    assert len(lost) == stats["report.drop.backpressure"] == len(sent) - 800
    assert min(lost) == 800  # the newest records were dropped, the buffered ones delivered
    assert_balanced(stats)


@pytest.mark.kafka
async def test_partitions_follow_keys_across_batches(kafka_broker: KafkaBroker) -> None:
    cfg = config(kafka_broker)
    reporter = KafkaReporter(cfg, CTX)
    rng = random.Random(7)
    sent = calls(60, 6)
    rng.shuffle(sent)  # not interleaved as on the wire: still one partition per call
    for i in range(0, len(sent), 37):
        await reporter.report(sent[i : i + 37])
    await reporter.close()
    msgs = await read_topic(kafka_broker.bootstrap, cfg.topic or "")
    assert len(msgs) == len(sent)
    order = {p.payload["seq"]: i for i, p in enumerate(sent)}
    per_call: dict[bytes, list[int]] = defaultdict(list)
    for m in msgs:
        assert m.partition == partition_for(m.key, 3)
        per_call[m.key].append(order[seqs([m])[0]])
    assert all(v == sorted(v) for v in per_call.values())


async def _create_topic(bootstrap: str, partitions: int, **configs: str) -> str:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = f"t-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()
    return name


@pytest.mark.kafka
async def test_a_batch_too_large_for_the_topic_is_split_and_a_record_too_large_counted(
    kafka_broker: KafkaBroker,
) -> None:
    # A topic whose max.message.bytes is below the batch size: the broker refuses whole batches.
    # One oversized record (a huge SDP) used to take the small records batched with it along.
    topic = await _create_topic(kafka_broker.bootstrap, 3, **{"max.message.bytes": "4096"})
    reporter = KafkaReporter(config(kafka_broker, topic=topic, linger_ms=0), CTX)
    cid = "one-call@otus.test"  # one call: one partition, so the order is checkable
    await reporter.report([packet(0, 0, call_id=cid)])
    await reporter.flush()
    batch = [packet(0, seq, call_id=cid) for seq in range(1, 31)]  # ~9 kB in one batch
    batch[14].payload["body"] = "a=sendrecv\r\n" * 600  # seq 15: ~8 kB, over the topic's limit
    await reporter.report(batch)
    for seq in range(31, 41):  # queued behind the refused batch: they meet its sequence gap
        await reporter.report([packet(0, seq, call_id=cid)])
        await asyncio.sleep(0.001)
    await reporter.flush()
    # Split, resent, one record dropped: each half gave its bytes back, none left behind.
    held = reporter.stats()
    assert (held["report.buffered"], held["report.buffered_bytes"]) == (0, 0), held
    await reporter.close()
    stats = reporter.stats()
    got = seqs(await read_topic(kafka_broker.bootstrap, topic))
    assert got == [seq for seq in range(41) if seq != 15]  # each once, in the reported order
    assert stats["report.drop.kafka_too_large"] == 1
    assert stats["report.drop.kafka_failed"] == 0
    assert stats["report.kafka.sent"] == 40
    assert_balanced(stats)


@pytest.mark.kafka
async def test_new_partitions_are_used_after_a_metadata_refresh(kafka_broker: KafkaBroker) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

    topic = await _create_topic(kafka_broker.bootstrap, 2)
    reporter = KafkaReporter(config(kafka_broker, topic=topic, metadata_max_age_ms=1000), CTX)
    await reporter.report(calls(20, 1))
    await reporter.flush()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(total_count=5)})
    finally:
        await admin.close()
    later = calls(20, 1, start=100)
    for _ in range(40):  # bounded: the producer refreshes metadata every second
        await asyncio.sleep(0.25)
        await reporter.report([packet(0, 1000)])
        await reporter.flush()
        if len(reporter._lanes[topic]) == 5:
            break
    await reporter.report(later)
    await reporter.close()
    msgs = await read_topic(kafka_broker.bootstrap, topic)
    late = {p.payload["seq"] for p in later}
    moved = [m for m in msgs if seqs([m])[0] in late]
    assert len(moved) == len(later)
    assert all(m.partition == partition_for(m.key, 5) for m in moved)
    assert {m.partition for m in moved} - {0, 1}  # some keys now land on the new partitions


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_mechanisms(kafka_broker: KafkaBroker, mechanism: str, tmp_path: Any) -> None:
    secret = tmp_path / "password"  # as a Kubernetes Secret is mounted
    secret.write_text(SASL_PASSWORD + "\n")
    cfg = config(
        kafka_broker.sasl_bootstrap, security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism, username=SASL_USER, password_file=str(secret),
    )  # fmt: skip
    reporter = KafkaReporter(cfg, CTX)
    await reporter.report(calls(5, 2))
    await reporter.close()
    assert reporter.stats()["report.kafka.sent"] == 10
    assert len(await read_topic(kafka_broker.bootstrap, cfg.topic or "")) == 10


@pytest.mark.kafka
async def test_wrong_password_keeps_records_buffered(kafka_broker: KafkaBroker) -> None:
    cfg = config(
        kafka_broker.sasl_bootstrap, security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256", username=SASL_USER, password="wrong", flush_timeout_ms=500,
    )  # fmt: skip
    reporter = KafkaReporter(cfg, CTX)
    await reporter.report(calls(5, 2))
    await asyncio.sleep(1.0)
    assert reporter.stats()["report.kafka.connect_failed"] >= 1
    await reporter.close()
    stats = reporter.stats()
    assert stats["report.drop.kafka_closed"] == 10
    assert_balanced(stats)


@pytest.mark.kafka
async def test_tls_with_the_broker_ca(kafka_broker: KafkaBroker) -> None:
    if kafka_broker.ssl_bootstrap is None:
        pytest.skip("needs the openssl command to give the test broker a TLS listener")
    cfg = config(
        kafka_broker.ssl_bootstrap, security_protocol="SSL", ssl_cafile=str(kafka_broker.ca_file)
    )
    reporter = KafkaReporter(cfg, CTX)
    await reporter.report(calls(5, 2))
    await reporter.close()
    assert reporter.stats()["report.kafka.sent"] == 10
    assert len(await read_topic(kafka_broker.bootstrap, cfg.topic or "")) == 10


async def test_close_returns_while_an_unreachable_broker_is_being_retried() -> None:
    # close() cancels the connecting task; on Python 3.11 that cancel can be lost as a connection
    # attempt fails, and a reporter that retried on regardless kept `otus run` alive forever.
    # Closing at different moments of the retry cycle hits that window.
    for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.45):
        cfg = config(f"127.0.0.1:{free_port()}", flush_timeout_ms=100, retry_backoff_ms=50)
        reporter = KafkaReporter(cfg, CTX)
        await reporter.report(calls(5, 1))
        await asyncio.sleep(delay)
        await asyncio.wait_for(reporter.close(), 20)
        stats = reporter.stats()
        assert stats["report.drop.kafka_closed"] == 5
        assert_balanced(stats)
        await asyncio.sleep(0.3)  # nothing keeps connecting after close
        after = reporter.stats()["report.kafka.connect_failed"]
        await asyncio.sleep(0.3)
        assert reporter.stats()["report.kafka.connect_failed"] == after
