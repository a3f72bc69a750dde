"""SIP traffic on the e2e nodes and what should reach Kafka: sipp calls, tcpdump, tshark, records.

A *round* runs sipp calls between a node's two pods while tcpdump writes the host ends of both
pod links (the interfaces its agent captures); tshark's messages from those files are what the
agent must report. Each sipp run makes fresh Call-IDs, so a round's records are found in the
topic by agent and Call-ID however many rounds went before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.infra.hub import POD_IFACES, NodeHost
from tests.infra.captures import tcpdump
from tests.infra.kafka import read_topic
from tests.infra.sipp import run_calls
from tests.infra.tshark import normalize_otus, sip_messages

__all__ = ["Round", "TopicReader", "assert_same", "run_round"]

CALLS = 2  # per node and round; 11 messages a call, each seen on both pod links
_SAME_FRAME_US = 500_000  # an agent's and tcpdump's stamps of one frame (loaded machine)


@dataclass(slots=True)
class Round:
    """One node's calls of one round: what tshark saw, and which of it the task keeps."""

    node: str
    seen: list[dict[str, Any]]  # every SIP message tshark dissected, on both links
    call_ids: set[str] = field(default_factory=set)
    dropped_methods: frozenset[str] = frozenset({"OPTIONS"})  # the example's filter

    @property
    def expected(self) -> list[dict[str, Any]]:
        """What the task reports: all but the requests (and responses) the filter drops."""
        drop = self.dropped_methods
        return [m for m in self.seen if m["method"] not in drop and m["cseq_method"] not in drop]


def run_round(host: NodeHost, workdir: Path, tag: str) -> Round:
    """sipp calls UAC pod -> UAS pod on ``host`` while tcpdump writes both pod links."""
    pcaps = [workdir / f"{tag}-{host.name}-{iface}.pcap" for iface in POD_IFACES]
    with contextlib.ExitStack() as stack:
        for iface, pcap in zip(POD_IFACES, pcaps, strict=True):
            stack.enter_context(tcpdump(host.ns, iface, pcap))
        calls = run_calls(host.topo, workdir / f"{tag}-{host.name}-sipp", calls=CALLS)
        assert calls.ok, calls.logs()
    seen = [m for pcap in pcaps for m in sip_messages(pcap)]
    # Two links, eleven messages a call (more if sipp retransmitted): fewer means tcpdump
    # missed some, and the comparison would prove nothing.
    assert len(seen) >= 2 * 11 * CALLS, f"tshark: {len(seen)} SIP messages on {host.name}"
    return Round(host.name, seen, {str(m["call_id"]) for m in seen})


class TopicReader:
    """Reads the whole topic through the broker's 127.0.0.1 listener (the test's side)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic

    def records(self) -> list[dict[str, Any]]:
        """Every record in the topic, decoded."""
        msgs = asyncio.run(read_topic(self.bootstrap, self.topic))
        return [json.loads(m.value) for m in msgs]

    def of(self, rnd: Round, records: Iterable[dict[str, Any]] | None = None) -> list[Any]:
        """The records of one round: its node's agent, its Call-IDs."""
        recs = self.records() if records is None else records
        return [
            r
            for r in recs
            if r.get("agent_id") == rnd.node and (r.get("sip") or {}).get("call_id") in rnd.call_ids
        ]

    def wait_for(
        self, rnd: Round, within: float, diagnose: Callable[[], str]
    ) -> list[dict[str, Any]]:
        """The round's records once as many as expected arrived (fails after ``within`` s)."""
        deadline = time.monotonic() + within
        want = len(rnd.expected)
        got: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            got = self.of(rnd)
            if len(got) >= want:
                time.sleep(0.5)  # duplicates would come right behind
                return self.of(rnd)
            time.sleep(0.5)
        raise AssertionError(
            f"{rnd.node}: {len(got)} of {want} records in Kafka after {within:.0f}s\n{diagnose()}"
        )


def _key(msg: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in msg.items() if k != "ts_us"}, sort_keys=True)


def assert_same(records: list[dict[str, Any]], rnd: Round) -> None:
    """Records equal tshark's kept messages as multisets; each timestamp near its frame's."""
    got, want = [normalize_otus(r) for r in records], rnd.expected
    g, w = Counter(map(_key, got)), Counter(map(_key, want))
    missing, extra = list((w - g).elements()), list((g - w).elements())
    assert not missing and not extra, (
        f"{rnd.node}: otus {len(got)} records, tshark {len(want)} messages\n"
        f"missing ({len(missing)}): {missing[:3]}\nextra ({len(extra)}): {extra[:3]}"
    )
    pairs = zip(
        sorted(got, key=lambda m: (_key(m), m["ts_us"])),
        sorted(want, key=lambda m: (_key(m), m["ts_us"])),
        strict=True,
    )
    for a, b in pairs:
        assert abs(a["ts_us"] - b["ts_us"]) < _SAME_FRAME_US, (a, b)
