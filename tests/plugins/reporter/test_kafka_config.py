"""Broker addresses: the forms aiokafka dials are kept, the ones it cannot are refused."""

from __future__ import annotations

import re

import pytest

from otus.plugins.reporter.kafka_config import KafkaConfig, check_broker


@pytest.mark.parametrize(
    "address",
    ["k1:9092", "k1", "kafka-0.kafka.ns.svc:9093", "10.0.0.1:1", "h:65535", "[::1]:9092",
     "[::1]", "::1", "fe80::1%eth0", "[fe80::1%eth0]:9092"],
)  # fmt: skip
def test_valid_forms_are_kept(address: str) -> None:
    assert check_broker(address) == address
    assert KafkaConfig(brokers=[address], topic="sip").brokers == [address]


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1:abc", "the port must be a number from 1 to 65535"),
        ("h:0", "the port must be a number from 1 to 65535"),
        ("h:99999", "the port must be a number from 1 to 65535"),
        ("h:", "the port must be a number from 1 to 65535"),
        ("h:+1", "the port must be a number from 1 to 65535"),
        (":", "the host is missing"),
        (":9092", "the host is missing"),
        ("a,b:1", "write host:port"),
        ("[::1", "']' missing"),
        ("[::1]9092", "write [IPv6]:port"),
        ("[::1]:0", "the port must be a number"),
        ("[nope]:9092", "not an IPv6 address"),
        ("::zz", "not an IPv6 address"),
    ],
)
def test_unusable_forms_are_refused(address: str, why: str) -> None:
    with pytest.raises(ValueError, match="broker") as e:
        check_broker(address)
    assert str(e.value).startswith(f"broker {address!r}: ") and why in str(e.value)
    with pytest.raises(ValueError, match=re.escape(f"broker {address!r}")):
        KafkaConfig(brokers=["ok:9092", address], topic="sip")


@pytest.mark.parametrize("topic", [".", "..", "a/b", "a b", "x" * 250, ""])
def test_topic_names_kafka_refuses_are_refused(topic: str) -> None:
    with pytest.raises(ValueError, match="topic"):
        KafkaConfig(brokers=["k1:9092"], topic=topic)


@pytest.mark.parametrize("topic", ["...", ".a", "a..b", "x" * 249, "sip_calls-1.v2"])
def test_topic_names_kafka_takes_are_kept(topic: str) -> None:
    assert KafkaConfig(brokers=["k1:9092"], topic=topic).topic == topic
