"""The flow registry: bounded (LRU), idle expiry, and counters that add up."""

from __future__ import annotations

import pytest

from otus.decoder.flows import Flow, FlowRegistry

S = 1_000_000  # microseconds


class F(Flow):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def registry(max_flows: int = 4, idle_s: int = 10) -> tuple[FlowRegistry[str, F], list[str]]:
    ended: list[str] = []
    reg: FlowRegistry[str, F] = FlowRegistry(
        max_flows, idle_s * S, lambda k, f, why: ended.append(f"{k}:{why}")
    )
    return reg, ended


def identity(reg: FlowRegistry[str, F]) -> None:
    s = reg.stats()
    assert s["flows.created"] == (
        s["flows.closed"] + s["flows.evicted"] + s["flows.expired"] + s["flows.active"]
    )


def test_add_touch_remove() -> None:
    reg, ended = registry()
    reg.add("a", F("a"), 0)
    assert reg.touch("a", 5)
    assert reg.touch("b", 5) is None
    assert "a" in reg and len(reg) == 1
    assert reg.remove("a") is not None
    assert reg.remove("a") is None
    assert reg.stats() == {
        "flows.active": 0,
        "flows.created": 1,
        "flows.closed": 1,
        "flows.evicted": 0,
        "flows.expired": 0,
    }
    assert ended == []  # removal is the owner's doing: no callback
    identity(reg)


def test_full_registry_evicts_the_least_recently_used() -> None:
    reg, ended = registry(max_flows=3)
    for i, k in enumerate("abc"):
        reg.add(k, F(k), i * S)
    reg.touch("a", 5 * S)  # used again: b is now the oldest
    reg.add("d", F("d"), 6 * S)
    assert ended == ["b:evicted"]
    assert sorted(f.name for f in reg.values()) == ["a", "c", "d"]
    reg.add("e", F("e"), 7 * S)
    assert ended == ["b:evicted", "c:evicted"]
    assert len(reg) == 3
    identity(reg)


def test_idle_flows_expire_in_packet_time() -> None:
    reg, ended = registry(max_flows=10, idle_s=10)
    reg.add("a", F("a"), 0)
    reg.add("b", F("b"), 2 * S)
    reg.add("c", F("c"), 4 * S)
    assert reg.expire(9 * S) == 0
    assert reg.expire(12_500_000) == 2  # a (idle 12.5 s) and b (10.5 s); c has 8.5 s
    assert ended == ["a:expired", "b:expired"]
    assert [f.name for f in reg.values()] == ["c"]
    identity(reg)


def test_a_flow_used_since_it_was_moved_gets_a_second_chance() -> None:
    reg, ended = registry(max_flows=10, idle_s=8)  # granule: 1 s
    reg.add("a", F("a"), 0)
    reg.add("b", F("b"), 0)
    # Touched within the granule: not moved, but its last use is recorded.
    reg.touch("a", 900_000)
    assert [f.name for f in reg.values()] == ["a", "b"]
    assert reg.expire(8_500_000) == 1
    assert ended == ["b:expired"]
    assert reg.expire(9_000_000) == 0  # a got its second chance at 8.5 s
    assert reg.expire(17_000_000) == 1
    assert ended == ["b:expired", "a:expired"]
    identity(reg)


def test_clear_ends_everything() -> None:
    reg, ended = registry()
    for k in "ab":
        reg.add(k, F(k), 0)
    reg.clear()
    assert len(reg) == 0
    assert ended == ["a:closed", "b:closed"]
    identity(reg)


def test_expiry_touches_each_flow_a_bounded_number_of_times() -> None:
    """Many flows, expired in steps: every call stops at the first flow it cannot expire."""
    reg, ended = registry(max_flows=100_000, idle_s=10)
    for i in range(50_000):
        reg.add(f"f{i}", F(str(i)), i * 100)  # one every 0.1 ms, over 5 s
    assert reg.expire(10 * S) == 0
    total = 0
    for t in range(11, 17):
        total += reg.expire(t * S)
    assert total == 50_000
    assert len(ended) == 50_000
    identity(reg)


@pytest.mark.parametrize(("max_flows", "idle"), [(0, 1), (1, 0)])
def test_bounds_must_be_positive(max_flows: int, idle: int) -> None:
    with pytest.raises(ValueError):
        FlowRegistry(max_flows, idle)
