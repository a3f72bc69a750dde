"""Task files that cannot be read are a SpecError naming the file and the reason; the spec
round-trips to data, secrets included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otus.core.errors import SpecError
from otus.pipeline.spec import KafkaReporterSpec, load_task, parse_task, task_data
from otus.plugins.capture.pcapfile import PcapConfig

DEEP = "[" * 100_000


@pytest.mark.parametrize(
    ("name", "text", "expect"),
    [
        ("t.json", DEEP, "not valid JSON: nested too deeply"),
        ("t.yaml", DEEP, "not valid YAML: nested too deeply"),
        ("t.yaml", "id: " + "{a: " * 50_000, "not valid YAML: nested too deeply"),
        ("t.json", '{"id": ' + "9" * 5000 + "}", "not valid JSON: an integer has more than 4300"),
        ("t.yaml", "id: " + "9" * 5000, "not valid YAML: an integer has more than 4300 digits"),
    ],
    ids=["deep-json", "deep-yaml-list", "deep-yaml-map", "huge-int-json", "huge-int-yaml"],
)
def test_unreadable_task_file_is_a_spec_error(
    tmp_path: Path, name: str, text: str, expect: str
) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(SpecError) as e:
        load_task(p)
    assert str(e.value).startswith(f"{p}: {expect}")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_duration_must_be_finite(value: float) -> None:
    task = {"id": "t", "capture": {"type": "pcap", "path": "/x"}, "limits": {"duration_s": value}}
    with pytest.raises(SpecError) as e:
        parse_task(task)
    assert e.value.errors == ["limits.duration_s: Input should be a finite number"]


@pytest.mark.parametrize("broker", ["127.0.0.1:abc", ":", "h:0", "h:99999", "h:", "[::1"])
def test_bad_kafka_broker_in_a_task_is_refused(broker: str) -> None:
    task = {
        "id": "t",
        "capture": {"type": "pcap", "path": "/x"},
        "reporters": [{"type": "kafka", "config": {"brokers": [broker], "topic": "sip"}}],
    }
    with pytest.raises(SpecError) as e:
        parse_task(task)
    [line] = e.value.errors
    assert line.startswith("reporters.0.kafka.config.brokers.0: Value error, broker ")


@pytest.mark.parametrize(
    ("name", "text", "expect"),
    [
        (
            "t.yaml",
            "id: t\nid: u\ncapture: {type: pcap, path: x}\n",
            "not valid YAML: duplicate key 'id' (line 2, column 1)",
        ),
        (
            "t.yaml",
            "id: t\ncapture: {type: pcap, path: x}\nprocessors: [{type: filter}]\nprocessors: []\n",
            "not valid YAML: duplicate key 'processors' (line 4, column 1)",
        ),
        (
            "t.yaml",
            "id: t\ncapture: {type: pcap, path: x, path: y}\n",
            "not valid YAML: duplicate key 'path' (line 2, column 32)",
        ),
        (
            "t.json",
            '{"id": "t", "id": "u", "capture": {"type": "pcap", "path": "x"}}',
            "not valid JSON: duplicate key 'id'",
        ),
    ],
    ids=["yaml-top", "yaml-processors", "yaml-nested", "json"],
)
def test_a_key_given_twice_is_refused(tmp_path: Path, name: str, text: str, expect: str) -> None:
    """PyYAML and json keep the last value: a second ``processors:`` silently lost the filter."""
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(SpecError) as e:
        load_task(p)
    assert str(e.value) == f"{p}: {expect}"


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text("id: t\ncapture:\n  <<: {type: pcap, path: base}\n  path: mine\n")
    capture = load_task(p).capture
    assert isinstance(capture, PcapConfig) and capture.path == "mine"


def test_a_json_task_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_bytes(b'\xef\xbb\xbf{"id": "t", "capture": {"type": "pcap", "path": "x"}}')
    assert load_task(p).id == "t"


SASL = {
    "brokers": ["k:9092"],
    "topic": "sip",
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_mechanism": "PLAIN",
    "username": "otus",
    "password": "hunter2",
}


def test_task_data_keeps_secrets_and_round_trips() -> None:
    """model_dump(mode="json") writes a password as stars; a worker then logged in with them."""
    task = {
        "id": "t",
        "capture": {"type": "pcap", "path": "/x"},
        "processors": [{"type": "filter", "config": {"drop_methods": ["options"]}}],
        "reporters": [{"type": "kafka", "config": SASL}],
    }
    spec = parse_task(task)
    data = task_data(spec)
    assert data["reporters"][0]["config"]["password"] == "hunter2"
    assert json.loads(json.dumps(data)) == data
    again = parse_task(data)
    assert again == spec
    [reporter] = again.reporters
    assert isinstance(reporter, KafkaReporterSpec)
    assert reporter.config.password is not None
    assert reporter.config.password.get_secret_value() == "hunter2"


def test_task_data_without_secrets_is_the_json_dump() -> None:
    spec = parse_task({"id": "t", "capture": {"type": "pcap", "path": "/x"}, "parsers": ["sip"]})
    assert task_data(spec) == spec.model_dump(mode="json", exclude_unset=True)
