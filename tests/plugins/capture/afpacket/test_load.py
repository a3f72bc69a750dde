"""Under load: kernel drops accounted exactly, close() and SIGTERM prompt during a flood."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from otus.plugins.capture.afpacket import capturer as capmod
from tests.infra.skips import requires_root

from .frames import udp4
from .helpers import Link, link

pytestmark = [requires_root, pytest.mark.slow]

FLOOD_FRAME = udp4(1)


class _Spy(struct.Struct):
    """TPACKET_STATS_V3 that remembers every PACKET_STATISTICS answer it decodes."""

    seen: list[tuple[int, ...]]

    def unpack(self, buffer: Any) -> tuple[Any, ...]:
        out = super().unpack(buffer)
        self.seen.append(out)
        return out


def _tx_dropped(lk: Link) -> int:
    """Frames the sending veth dropped (the peer's backlog was full): never offered to taps."""
    out = json.loads(lk.a.ip("-j", "-s", "link", "show", lk.a_if))
    return int(out[0]["stats64"]["tx"]["dropped"])


async def test_kernel_drops_add_up_to_what_was_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy("=III")
    spy.seen = []
    monkeypatch.setattr(capmod, "TPACKET_STATS_V3", spy)
    with link("afpdrop") as lk:
        # A 8 KiB ring: two blocks of ~40 frames each, and a consumer that stops reading.
        cap = lk.capturer(bpf_filter="udp port 5060", snap_len=256, block_size=4096, block_count=2)
        it = aiter(cap.batches())
        first = asyncio.create_task(anext(it))
        await asyncio.sleep(0.05)  # bound, waiting for its first block
        flood = lk.flood(FLOOD_FRAME, count=20_000, seconds=10)
        out, _ = flood.communicate(timeout=30)
        sent = int(out)
        await asyncio.wait_for(first, 2)
        got = len(first.result())
        # Drain what is left, then stop.
        while True:
            try:
                batch = await asyncio.wait_for(anext(it), 0.3)
            except TimeoutError:
                break
            got += len(batch)
        await cap.close()
        st = cap.stats()
        offered = sent - _tx_dropped(lk)
    assert st["capture.packets"] == got
    assert st["capture.drop.kernel"] > 0
    assert st["capture.kernel_freezes"] > 0
    assert st["capture.drop.kernel"] == sum(s[1] for s in spy.seen)
    assert st["capture.kernel_packets"] == sum(s[0] for s in spy.seen)
    assert (
        st["capture.packets"] + st["capture.drop.kernel"] + st["capture.drop.shutdown"]
        == st["capture.kernel_packets"]
        == offered
    )
    assert cap.ring_unread == st["capture.drop.shutdown"]


async def test_close_during_a_flood_ends_batches_within_two_seconds() -> None:
    with link("afpclose") as lk:
        cap = lk.capturer(bpf_filter="udp")
        seen = 0

        async def consume() -> None:
            nonlocal seen
            async for b in cap.batches():
                seen += len(b)
                time.sleep(0.005)  # noqa: ASYNC251 - a busy pipeline: CPU work, no await

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        flood = lk.flood(FLOOD_FRAME, count=2_000_000, seconds=8)
        try:
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            await cap.close()
            await asyncio.wait_for(task, 2)
            elapsed = time.monotonic() - t0
        finally:
            lk.a.stop(flood)
    assert seen > 0
    assert elapsed < 2.0
    st = cap.stats()
    assert st["capture.packets"] == seen


_SIGTERM_WORKER = """
import asyncio, json, signal, sys, time
from otus.plugins.base import PluginContext
from otus.plugins.capture.afpacket import AfpacketCapturer, AfpacketConfig

async def main():
    cfg = AfpacketConfig(interfaces=[sys.argv[1]], bpf_filter="udp", snap_len=1500,
                         block_size=65536, block_count=8)  # 512 KiB: overflows quickly
    cap = AfpacketCapturer(cfg, PluginContext())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(cap.close()))
    n = 0
    it = cap.batches()
    print("ready", flush=True)
    async for b in it:
        n += len(b)
        time.sleep(0.02)  # far slower than the flood: the ring overflows
    print(json.dumps(cap.stats()), flush=True)

asyncio.run(main())
"""


def test_sigterm_under_overload_stops_within_two_seconds() -> None:
    with link("afpterm") as lk:
        proc = lk.b.popen(
            [sys.executable, "-c", _SIGTERM_WORKER, lk.b_if],
            stdout=subprocess.PIPE,
            cwd=os.getcwd(),
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        flood = lk.flood(FLOOD_FRAME, count=5_000_000, seconds=10)
        try:
            time.sleep(1.5)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(5)
            elapsed = time.monotonic() - t0
        finally:
            lk.a.stop(flood)
        st = json.loads(proc.stdout.read())
    assert proc.returncode == 0
    assert elapsed < 2.0
    assert st["capture.drop.kernel"] > 0
    assert (
        st["capture.packets"] + st["capture.drop.kernel"] + st["capture.drop.shutdown"]
        == st["capture.kernel_packets"]
    )
