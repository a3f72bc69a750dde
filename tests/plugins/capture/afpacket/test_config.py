"""AfpacketConfig: defaults, the single-interface shorthand, bounds and cross-field rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from otus.plugins.capture.afpacket import (
    DEFAULT_FILTER,
    DEFAULT_FILTER_COOKED,
    SIP_FILTER,
    AfpacketCapturer,
    AfpacketConfig,
)


def test_defaults_and_their_memory() -> None:
    c = AfpacketConfig(interfaces=["eth0"])
    assert c.bpf_filter is None
    assert (
        c.filter_for(cooked=False) == DEFAULT_FILTER == f"{SIP_FILTER} or (vlan and ({SIP_FILTER}))"
    )
    assert c.filter_for(cooked=True) == DEFAULT_FILTER_COOKED == SIP_FILTER
    assert AfpacketConfig(interfaces=["e"], bpf_filter="").filter_for(cooked=False) == ""
    assert (c.fanout_size, c.fanout_mode, c.fanout_group) == (1, "hash", None)
    assert (c.block_size, c.block_count, c.block_timeout_ms) == (256 * 1024, 128, 20)
    assert c.ring_bytes == 32 << 20
    assert c.snap_len == 65535
    assert c.promiscuous is False
    assert AfpacketCapturer.Config is AfpacketConfig


def test_single_interface_shorthand() -> None:
    assert AfpacketConfig.model_validate({"interface": "eth1"}).interfaces == ["eth1"]
    with pytest.raises(ValidationError, match="either"):
        AfpacketConfig.model_validate({"interface": "a", "interfaces": ["b"]})


@pytest.mark.parametrize(
    ("cfg", "msg"),
    [
        ({"interfaces": []}, "at least 1"),
        ({"interfaces": [f"e{i}" for i in range(17)]}, "at most 16"),
        ({"interfaces": ["a" * 16]}, "at most 15"),
        ({"interfaces": ["eth 0"]}, "pattern"),
        ({"interfaces": ["any", "eth0"]}, "alone"),
        ({"interfaces": ["eth0", "eth0"]}, "twice"),
        ({"interfaces": ["any"], "promiscuous": True}, "promiscuous"),
        ({"interfaces": ["e"], "block_size": 3 * 4096 * 16}, "power of two"),
        ({"interfaces": ["e"], "block_size": 2048}, "greater than or equal"),
        ({"interfaces": ["e"], "block_size": 65536}, "snap_len"),
        ({"interfaces": ["e"], "frame_size": 2008}, "multiple of 16"),
        ({"interfaces": ["e"], "block_size": 64 << 20, "block_count": 32}, "1 GiB"),
        ({"interfaces": ["e"], "fanout_size": 65}, "less than or equal"),
        ({"interfaces": ["e"], "fanout_group": 70000}, "less than or equal"),
        ({"interfaces": ["e"], "fanout_mode": "rollover"}, "hash"),
        ({"interfaces": ["e"], "block_timeout_ms": 0}, "greater than or equal"),
        ({"interfaces": ["e"], "bpf_filter": "x" * 5000}, "at most 4096"),
        ({"interfaces": ["e"], "ring": 1}, "Extra inputs"),
    ],
)
def test_rejects(cfg: dict[str, Any], msg: str) -> None:
    with pytest.raises(ValidationError, match=msg):
        AfpacketConfig.model_validate(cfg)


def test_small_ring_for_small_snaplen() -> None:
    c = AfpacketConfig(interfaces=["e"], snap_len=256, block_size=4096, block_count=2)
    assert c.ring_bytes == 8192


def _walk(node: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            _walk(v, out)
    elif isinstance(node, list):
        for v in node:
            _walk(v, out)


def test_schema_is_bounded_for_the_crd() -> None:
    nodes: list[dict[str, Any]] = []
    _walk(AfpacketConfig.model_json_schema(), nodes)
    for n in nodes:
        if n.get("type") == "string" and "enum" not in n and "const" not in n:
            assert "maxLength" in n, n
        if n.get("type") == "array":
            assert "maxItems" in n, n
        if n.get("type") == "integer":
            assert "minimum" in n and "maximum" in n, n
