"""The suite's Kafka broker works: aiokafka produces to it and reads the message back."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.infra.kafka import KafkaBroker, metadata_broker_ports

pytestmark = pytest.mark.kafka


def test_metadata_lists_the_broker(kafka_broker: KafkaBroker) -> None:
    assert kafka_broker.port in metadata_broker_ports("127.0.0.1", kafka_broker.port)


async def test_produce_and_consume(kafka_broker: KafkaBroker) -> None:
    topic = f"infra-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, b"hello", key=b"call-1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        msg = await consumer.getone()
    finally:
        await consumer.stop()
    assert (msg.key, msg.value, msg.partition, msg.offset) == (
        b"call-1",
        b"hello",
        meta.partition,
        meta.offset,
    )
