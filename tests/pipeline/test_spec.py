"""Task files that cannot be read are a SpecError naming the file and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from otus.core.errors import SpecError
from otus.pipeline.spec import load_task, parse_task

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
