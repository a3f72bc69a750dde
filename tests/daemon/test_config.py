"""The global config: YAML, defaults, OTUS_* environment overrides, clear errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from otus.core.errors import ConfigError
from otus.daemon.config import FileOutput, LokiOutput, config_path, load_config, parse_listen

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    c = load_config(None, {})
    assert c.daemon.socket_path == "/run/otus/otus.sock"
    assert c.daemon.shutdown_timeout_s == 15
    assert c.log.level == "info" and c.log.format == "json"
    assert [o.type for o in c.log.outputs] == ["stdout"]
    assert c.metrics.listen == ":9090" and c.metrics.path == "/metrics"
    assert c.agent.resolved_id() == socket.gethostname()
    assert c.limits.max_tasks == 16
    assert not c.kafka.enabled and not c.kubernetes.enabled


def test_example_config_file() -> None:
    c = load_config(ROOT / "configs" / "otus.yaml", {})
    assert c.daemon.socket_mode == 0o660
    file_out = c.log.outputs[1]
    assert isinstance(file_out, FileOutput) and file_out.compress and file_out.max_backups == 5
    assert c.agent.tags == {"region": "cn-east-1", "role": "edge"}


def test_plan_style_values(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(
        """
log:
  level: WARN
  format: text
  outputs:
    - type: loki
      endpoint: http://loki:3100/loki/api/v1/push
      flush_interval: 500ms
    - type: stdout
daemon: {socket_mode: "0600", shutdown_timeout_s: 1m}
metrics: {listen: "[::1]:9100"}
"""
    )
    c = load_config(p, {})
    assert c.log.level == "warning" and c.log.format == "console"
    loki = c.log.outputs[0]
    assert isinstance(loki, LokiOutput) and loki.flush_interval == 0.5
    assert c.daemon.socket_mode == 0o600 and c.daemon.shutdown_timeout_s == 60
    assert parse_listen(c.metrics.listen) == ("::1", 9100)


def test_environment_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("log: {level: info}\nagent: {id: from-file, tags: {a: '1'}}\n")
    env = {
        "OTUS_LOG__LEVEL": "debug",
        "OTUS_AGENT__ID": "from-env",
        "OTUS_AGENT__TAGS__REGION": "eu-west",
        "OTUS_LIMITS__MAX_TASKS": "4",
        "OTUS_METRICS__ENABLED": "false",
        "OTUS_METRICS__LISTEN": "127.0.0.1:9999",
        "OTUS_KAFKA__BROKERS": "k1:9092, k2:9092",
        "OTUS_LOG__OUTPUTS": "[{type: file, path: /tmp/x.log}]",
        "OTUS_SOCKET": "/not/an/override",
        "HOME": "/root",
    }
    c = load_config(p, env)
    assert c.log.level == "debug"
    assert c.agent.id == "from-env" and c.agent.tags == {"a": "1", "region": "eu-west"}
    assert c.limits.max_tasks == 4
    assert c.metrics.enabled is False and c.metrics.listen == "127.0.0.1:9999"
    assert c.kafka.brokers == ["k1:9092", "k2:9092"] and c.kafka.enabled
    assert [o.type for o in c.log.outputs] == ["file"]


@pytest.mark.parametrize(
    ("text", "env", "expect"),
    [
        ("log: {level: loud}\n", {}, "log.level"),
        ("surprise: 1\n", {}, "surprise: Extra inputs are not permitted"),
        ("daemon: [1, 2]\n", {}, "daemon"),
        ("log: {outputs: [{type: syslog}]}\n", {}, "log.outputs.0"),
        ("metrics: {listen: nowhere}\n", {}, "metrics.listen"),
        ("limits: {max_tasks: 0}\n", {}, "limits.max_tasks"),
        ("daemon: {socket_path: /run/" + "x" * 100 + "/s.sock}\n", {}, "at most 108 (sun_path)"),
        ("", {"OTUS_LIMITS__MAX_TAKS": "3"}, "OTUS_LIMITS__MAX_TAKS"),
        ("log: [unclosed\n", {}, "not valid YAML"),
        ("- a list\n", {}, "must be a mapping"),
    ],
)
def test_errors_are_clear(tmp_path: Path, text: str, env: dict[str, str], expect: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env)
    assert expect in str(e.value)


def test_missing_file_and_path_resolution(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", {})
    assert config_path("x.yaml", {}) == Path("x.yaml")
    assert config_path(None, {"OTUS_CONFIG": "/e/o.yaml"}) == Path("/e/o.yaml")


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("a: " + "[" * 100_000, "not valid YAML: nested too deeply"),
        ("a: " + "{x: " * 50_000, "not valid YAML: nested too deeply"),
        ("a: " + "9" * 5000, "not valid YAML: an integer has more than 4300 digits"),
    ],
    ids=["deep-list", "deep-map", "huge-int"],
)
def test_unreadable_yaml_is_a_config_error(tmp_path: Path, text: str, expect: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p, {})
    assert str(e.value) == f"{p}: {expect}"


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({"OTUS_LOG__OUTPUTS": "[" * 100_000}, "log.outputs"),
        ({"OTUS_LIMITS__MAX_TASKS": "9" * 5000}, "limits.max_tasks"),
        ({"OTUS_KAFKA__BROKERS": "127.0.0.1:abc"}, "port must be a number from 1 to 65535"),
        ({"OTUS_KAFKA__BROKERS": ":9092"}, "the host is missing"),
        ({"OTUS_KAFKA__BROKERS": "k1:9092,k2:0"}, "broker 'k2:0'"),
    ],
)
def test_unusable_environment_values_are_config_errors(env: dict[str, str], expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, env)
    assert expect in str(e.value)


def test_valid_broker_forms_are_kept() -> None:
    brokers = "k1:9092,k2,[::1]:9093,[fe80::1],10.0.0.1:1"
    c = load_config(None, {"OTUS_KAFKA__BROKERS": brokers})
    assert c.kafka.brokers == brokers.split(",")
