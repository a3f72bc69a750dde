"""Namespaces, senders and capture workers for the AF_PACKET tests (root only)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from otus.plugins.base import PluginContext
from otus.plugins.capture.afpacket import AfpacketCapturer, AfpacketConfig
from tests.infra.netns import Netns, netns, veth

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000

# A bounded raw-frame flood, run inside a namespace: argv = iface, count, seconds, frame hex.
FLOOD = """
import socket, sys, time
iface, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
frame = bytes.fromhex(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind((iface, 0))
send = s.send
deadline = time.monotonic() + seconds
sent = 0
while sent < count and time.monotonic() < deadline:
    for _ in range(256):
        try:
            send(frame)
        except OSError:
            time.sleep(0.0005)  # ENOBUFS: the qdisc is full; back off, do not count it
            continue
        sent += 1
print(sent, flush=True)
"""


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Switch this thread into namespace ``name``; sockets made inside stay there."""
    cur = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    tgt = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(tgt, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if _libc.setns(cur, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(cur)
        os.close(tgt)


@dataclass(slots=True)
class Link:
    """Namespace ``a`` (sender, ``a_if``) --veth-- namespace ``b`` (capture, ``b_if``)."""

    a: Netns
    b: Netns
    a_if: str = "xa0"
    b_if: str = "xb0"
    socks: list[socket.socket] = field(default_factory=list)

    def sender(self, iface: str | None = None, *, from_b: bool = False) -> socket.socket:
        """A raw socket in ``a`` (or ``b``) that sends prebuilt Ethernet frames out of ``iface``."""
        with in_netns(self.b.name if from_b else self.a.name):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind((iface or (self.b_if if from_b else self.a_if), 0))
        self.socks.append(s)
        return s

    def send(
        self, frames: Sequence[bytes], iface: str | None = None, *, from_b: bool = False
    ) -> None:
        """Send every frame, in order, from ``a`` (received on ``b_if``) or ``b`` (sent on it)."""
        s = self.sender(iface, from_b=from_b)
        for f in frames:
            s.send(f)

    def capturer(self, ctx: PluginContext | None = None, **cfg: Any) -> AfpacketCapturer:
        """An AfpacketCapturer created inside ``b`` (defaults: interface ``b_if``)."""
        cfg.setdefault("interfaces", [self.b_if])
        with in_netns(self.b.name):
            return AfpacketCapturer(AfpacketConfig.model_validate(cfg), ctx or PluginContext())

    def flood(self, frame: bytes, count: int, seconds: float) -> subprocess.Popen[bytes]:
        """Start a bounded flood of ``frame`` from ``a``; its stdout is the number sent."""
        return self.a.popen(
            [sys.executable, "-c", FLOOD, self.a_if, str(count), str(seconds), frame.hex()],
            stdout=subprocess.PIPE,
        )

    def close(self) -> None:
        """Close the sockets made for sending."""
        for s in self.socks:
            s.close()


@contextlib.contextmanager
def link(purpose: str, mtu: int | None = None) -> Iterator[Link]:
    """Two fresh namespaces joined by a veth pair, deleted on exit."""
    with netns(f"{purpose}a", ipv6=True) as a, netns(f"{purpose}b", ipv6=True) as b:
        veth(a, "xa0", b, "xb0", mtu=mtu)
        lk = Link(a, b)
        try:
            yield lk
        finally:
            lk.close()


class Collector:
    """Runs ``batches()`` in a task and keeps every frame, stamp and link type seen."""

    def __init__(self, cap: AfpacketCapturer) -> None:
        self.cap = cap
        self.frames: list[bytes] = []
        self.stamps: list[int] = []
        self.linktypes: set[int] = set()
        self.ifindexes: set[int] = set()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        self.task = asyncio.create_task(self._run())
        await asyncio.sleep(0.05)  # the first __anext__ binds the socket
        return self

    async def _run(self) -> None:
        async for b in self.cap.batches():
            self.frames += b.frames
            self.stamps += b.ts_us
            self.linktypes.add(b.linktype)
            self.ifindexes.add(b.ifindex)

    async def wait_for(self, n: int, seconds: float = 3.0) -> None:
        """Wait until ``n`` frames arrived (or ``seconds``), then a little more for strays."""
        deadline = time.monotonic() + seconds
        while len(self.frames) < n and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        await self.cap.close()
        assert self.task is not None
        await asyncio.wait_for(self.task, 2.0)


def fanout_worker(
    ns: str, cfg: dict[str, Any], worker: int, workers: int, conn: Connection
) -> None:
    """A spawned worker: capture in ``ns`` until told to stop, then send back what it saw."""

    async def main() -> None:
        with in_netns(ns):
            cap = AfpacketCapturer(
                AfpacketConfig.model_validate(cfg), PluginContext(worker=worker, workers=workers)
            )
        col = Collector(cap)
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_reader(conn.fileno(), lambda: stop.done() or stop.set_result(None))
        async with col:
            conn.send(("ready", cap.fanout_group))
            await asyncio.wait_for(stop, 60)
        loop.remove_reader(conn.fileno())
        conn.recv()
        conn.send(("done", col.frames, cap.stats()))

    asyncio.run(main())
