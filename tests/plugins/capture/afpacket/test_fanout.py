"""Fanout: two worker processes, one PACKET_FANOUT group, every frame exactly once."""

from __future__ import annotations

import multiprocessing
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP

from otus.core.errors import CaptureError
from otus.plugins.base import PluginContext
from tests.infra.skips import requires_root

from .frames import MAC_A, MAC_B, eth, frags4, frags6, sip, udp4
from .helpers import Collector, Link, fanout_worker, link

pytestmark = [requires_root]


def _run_workers(
    lk: Link,
    cfg: dict[str, Any],
    frames: list[bytes],
    sent_by_b: Sequence[bytes] = (),
) -> list[list[bytes]]:
    """Start two capture workers in ``b``; send ``frames`` from ``a``, ``sent_by_b`` from b."""
    mp = multiprocessing.get_context("spawn")
    conns, procs = [], []
    try:
        for i in range(2):
            parent, child = mp.Pipe()
            p = mp.Process(target=fanout_worker, args=(lk.b.name, cfg, i, 2, child), daemon=True)
            p.start()
            child.close()
            conns.append(parent)
            procs.append(p)
        groups = set()
        for c in conns:
            assert c.poll(30), "worker did not start"
            msg = c.recv()
            assert msg[0] == "ready", msg
            groups.add(msg[1])
        assert len(groups) == 1 and None not in groups  # both derived the same group id
        lk.send(frames)
        lk.send(sent_by_b, from_b=True)
        time.sleep(0.3)  # several block timeouts: every frame is in a retired block
        out = []
        for c in conns:
            c.send("stop")
        for c in conns:
            c.send("results")
        for c in conns:
            assert c.poll(30), "worker did not answer"
            kind, got, stats = c.recv()
            assert kind == "done"
            assert stats["capture.drop.kernel"] == 0
            out.append(got)
        return out
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


def _flow(frame: bytes) -> bytes:
    return frame[26:38]  # IPv4 addresses and ports


@pytest.fixture
def lk() -> Iterator[Link]:
    with link("afpfan") as lk:
        yield lk


def test_hash_mode_every_frame_once_and_flows_stay_together(lk: Link) -> None:
    frames = [udp4(n, sport=10000 + n % 64) for n in range(640)]
    cfg = {"interfaces": [lk.b_if], "fanout_size": 2, "bpf_filter": "udp"}
    a, b = _run_workers(lk, cfg, frames)
    assert Counter(a + b) == Counter(frames)
    assert a and b  # 64 flows all hashed to one worker: p = 2**-63
    assert not {_flow(f) for f in a} & {_flow(f) for f in b}
    assert a == [f for f in frames if f in set(a)]  # each worker keeps the order


def test_lb_mode_every_frame_once(lk: Link) -> None:
    frames = [udp4(n) for n in range(400)]
    cfg = {"interfaces": [lk.b_if], "fanout_size": 2, "fanout_mode": "lb", "bpf_filter": "udp"}
    a, b = _run_workers(lk, cfg, frames)
    assert Counter(a + b) == Counter(frames)
    assert abs(len(a) - len(b)) <= 2


def test_fragments_reach_one_worker_whole(lk: Link) -> None:
    # PACKET_FANOUT_FLAG_DEFRAG: the kernel reassembles IPv4 before choosing a worker, so each
    # worker sees whole datagrams (and the filter can see their ports). IPv6 is not reassembled,
    # but its fragments hash on addresses only and stay together.
    v4 = [frags4(n, size=2500 + n) for n in range(20)]
    v6 = [frags6(n, size=2500 + n) for n in range(5)]
    frames = [f for d in v4 + v6 for f in d]
    cfg = {"interfaces": [lk.b_if], "fanout_size": 2}  # default SIP filter
    a, b = _run_workers(lk, cfg, frames)
    got = a + b
    whole = [f for f in got if f[12:14] == b"\x08\x00"]
    assert len(whole) == len(v4)
    for f in whole:
        total, frag = struct.unpack("!H2xH", f[16:22])
        assert frag & 0x3FFF == 0  # no MF, offset 0: a reassembled datagram
        assert len(f) == 14 + total
        n = int(f.split(b"Call-ID: ")[1].split(b"\r")[0])
        assert total == 20 + 8 + 2500 + n
    six_a = [f for f in a if f[12:14] == b"\x86\xdd"]
    six_b = [f for f in b if f[12:14] == b"\x86\xdd"]
    assert Counter(six_a + six_b) == Counter(f for d in v6 for f in d)
    for d in v6:
        assert set(d) <= set(six_a) or set(d) <= set(six_b)


def _udp(src: str, dst: str, sport: int, dport: int, size: int, vlan: int | None) -> bytes:
    e = eth(vlan=vlan)
    if src == "10.1.0.2":  # b -> a: the reverse direction
        e.src, e.dst = MAC_B, MAC_A
    return bytes(e / IP(src=src, dst=dst, id=size) / UDP(sport=sport, dport=dport) / sip(0, size))


def test_hash_keeps_flows_and_fragments_together_tagged_sent_frames_too(lk: Link) -> None:
    # A frame sent with its 802.1Q tag in the data (no VLAN transmit offload, or written by a
    # packet socket, as here from b) fools the kernel's own hash: it spread one flow over the
    # workers by packet length and split fragments. Our hash finds the IP header itself, and is
    # symmetric: a flow's received and sent frames meet on one worker.
    received, sent = [], []
    flow_of: dict[bytes, int] = {}
    for n in range(16):
        for size in (100, 700, 1300):
            for vlan in (None, 100):
                there = _udp("10.1.0.1", "10.1.0.2", 10000 + n, 5060, size, vlan)
                back = _udp("10.1.0.2", "10.1.0.1", 5060, 10000 + n, size, vlan)
                received.append(there)
                sent.append(back)
                flow_of[there] = flow_of[back] = n
    dgrams = [frags4(n, size=2500 + 100 * n, vlan=100) for n in range(8)]  # sent, tag inline
    for n, d in enumerate(dgrams):
        for f in d:
            flow_of[f] = 100 + n
    sent += [f for d in dgrams for f in d]
    cfg = {"interfaces": [lk.b_if], "fanout_size": 2, "bpf_filter": ""}
    a, b = _run_workers(lk, cfg, received, sent)
    a = [f for f in a if f in flow_of]  # IPv6 neighbour discovery and the like
    b = [f for f in b if f in flow_of]
    assert Counter(a + b) == Counter(received + sent)
    assert a and b
    assert not {flow_of[f] for f in a} & {flow_of[f] for f in b}


async def test_mismatched_group_settings_are_a_clear_error(lk: Link) -> None:
    first = lk.capturer(PluginContext(workers=2), fanout_group=4242)
    second = lk.capturer(PluginContext(workers=2), fanout_group=4242, fanout_mode="lb")
    async with Collector(first):
        with pytest.raises(CaptureError, match=r"fanout group 4242.*set fanout_group"):
            await anext(aiter(second.batches()))
    await second.close()
