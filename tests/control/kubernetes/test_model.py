"""The CaptureTask model: task ids, label selectors, secretRef placeholders, TaskSpec mapping."""

from __future__ import annotations

import re
from typing import Any

import pytest

from otus.control.kubernetes.model import (
    NODE_MESSAGE_MAX,
    REPORTER_ENTRIES,
    UNRESOLVED_DIR,
    LabelSelector,
    is_agent_task_id,
    node_message,
    parse_capture_task,
    task_id_for,
)
from otus.core.errors import SpecError
from otus.pipeline.spec import TASK_ID_PATTERN

BASE: dict[str, Any] = {"capture": {"interfaces": ["eth0"]}, "reporters": [{"type": "console"}]}


def test_task_ids_fit_the_task_pattern() -> None:
    assert task_id_for("voice", "calls") == "voice.calls"
    long_ns, long_name = "n" * 63, "a.b-" * 60 + "z"
    tid = task_id_for(long_ns, long_name)
    assert len(tid) == 63 and re.match(TASK_ID_PATTERN, tid)
    assert tid != task_id_for(long_ns, long_name[:-1] + "y")  # the hash tells them apart
    assert task_id_for(long_ns, long_name) == tid  # stable
    edge = task_id_for("x" * 51, "-" + "y" * 20)  # the cut lands on a '.' or '-'
    assert re.match(TASK_ID_PATTERN, edge), edge


def test_agent_task_ids_are_told_from_others() -> None:
    cases = [("voice", "calls"), ("voice", "a.b"), ("n" * 63, "a.b-" * 60 + "z"),
             ("x" * 51, "-" + "y" * 20), ("voice", "c" * 70)]  # fmt: skip
    for ns, name in cases:
        tid = task_id_for(ns, name)
        assert is_agent_task_id(tid) and is_agent_task_id(tid, ns), tid
        assert not is_agent_task_id(tid, "other"), tid
    for other in ("manual", "manual-capture", "x-0123456789", "voice.", "Voice.calls", "a" * 64):
        assert not is_agent_task_id(other), other


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({}, {}, True),
        ({"matchLabels": {"role": "sip"}}, {"role": "sip", "x": "y"}, True),
        ({"matchLabels": {"role": "sip"}}, {"role": "web"}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]},
         {"zone": "b"}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, {"gpu": ""}, True),
        ({"matchExpressions": [{"key": "cp", "operator": "DoesNotExist"}]}, {"cp": "1"}, False),
    ],
)  # fmt: skip
def test_label_selector(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is expected


def test_selector_operators_need_the_right_values() -> None:
    with pytest.raises(SpecError, match="In and NotIn need values"):
        parse_capture_task(
            {**BASE, "nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}
        )


def test_pcap_capture_is_not_a_cluster_task() -> None:
    with pytest.raises(SpecError, match="capture"):
        parse_capture_task({**BASE, "capture": {"type": "pcap", "path": "/x.pcap"}})


def test_to_task_spec_uses_the_task_model() -> None:
    cts = parse_capture_task(
        {**BASE, "paused": True, "parsers": ["sip"], "limits": {"maxPackets": 10}}
    )
    spec = cts.to_task_spec("ns.name")
    assert spec.id == "ns.name" and spec.limits.max_packets == 10
    assert spec.capture.model_dump()["interfaces"] == ["eth0"]


# The task model's kafka reporter, as a CaptureTask reporter entry (with secretRef).
Entry = next(e for e in REPORTER_ENTRIES if "secret_ref" in e.model_fields)
SASL = {
    "brokers": ["k:9093"],
    "topic": "sip",
    "securityProtocol": "SASL_SSL",
    "saslMechanism": "PLAIN",
}


def test_secret_ref_fills_placeholders_for_validation() -> None:
    entry = Entry.model_validate(
        {
            "type": "kafka",
            "config": SASL,
            "secretRef": {"name": "creds", "usernameKey": "u", "passwordKey": "p", "caKey": "ca"},
        }
    )
    config = entry.config  # type: ignore[attr-defined]
    assert config.password_file == f"{UNRESOLVED_DIR}/p"
    assert config.ssl_cafile == f"{UNRESOLVED_DIR}/ca"
    assert config.username == "secret-u"
    assert entry.secret_ref.keys() == {  # type: ignore[attr-defined]
        "username": "u", "password_file": "p", "ssl_cafile": "ca",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("config", "ref", "message"),
    [
        ({**SASL, "password": "x"}, None, "credentials come from a Secret"),
        ({**SASL, "sslCafile": "/etc/ca"}, None, "credentials come from a Secret"),
        ({**SASL, "username": "me"}, {"name": "c", "usernameKey": "u", "passwordKey": "p"},
         "both inline and through secretRef"),
        (SASL, {"name": "c", "keyKey": "k", "passwordKey": "p", "usernameKey": "u"},
         "keyKey needs certKey"),
        (SASL, None, "needs sasl_mechanism and username"),
    ],
)  # fmt: skip
def test_secret_ref_errors(
    config: dict[str, Any], ref: dict[str, Any] | None, message: str
) -> None:
    data: dict[str, Any] = {"type": "kafka", "config": config}
    if ref is not None:
        data["secretRef"] = ref
    with pytest.raises(ValueError, match=message):
        Entry.model_validate(data)


def test_reporters_without_credentials_take_no_secret_ref() -> None:
    with pytest.raises(SpecError, match="secret"):
        parse_capture_task(
            {**BASE, "reporters": [{"type": "console", "secretRef": {"name": "x", "caKey": "c"}}]}
        )


def test_node_messages_are_one_short_line_that_keeps_its_ending() -> None:
    assert node_message("cannot open eth9:\n  no such device") == "cannot open eth9: no such device"
    msg = node_message("a problem " * 50, "; running the previous spec")
    assert len(msg) == NODE_MESSAGE_MAX
    assert msg.startswith("a problem a problem") and msg.endswith("...; running the previous spec")
