"""The ``afpacket`` capturer: one TPACKET_V3 socket per worker process, in one fanout group."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
import zlib
from collections.abc import AsyncIterator

from otus.core.errors import CaptureError
from otus.core.packet import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, RawBatch
from otus.plugins.base import PluginContext

from . import bpf
from .config import AfpacketConfig
from .consts import (
    AF_PACKET,
    ARPHRD_LOOPBACK,
    ETH_P_ALL,
    ETHERNET_HATYPES,
    FANOUT_MODES,
    PACKET_ADD_MEMBERSHIP,
    PACKET_FANOUT,
    PACKET_FANOUT_CBPF,
    PACKET_FANOUT_DATA,
    PACKET_FANOUT_FLAG_DEFRAG,
    PACKET_MR_PROMISC,
    PACKET_MREQ,
    PACKET_STATISTICS,
    PACKET_VERSION,
    SOCKADDR_LL,
    SOL_PACKET,
    TPACKET_STATS_V3,
    TPACKET_V3,
)
from .fanout import flow_hash_program
from .iface import Interface, resolve
from .ring import Ring

__all__ = ["AfpacketCapturer", "check"]

log = logging.getLogger(__name__)

_MAX_LINK_HDR = 18  # Ethernet header and one 802.1Q tag
# A missed wake-up (or an interface that went down and up) costs at most this much latency.
_SAFETY_WAKE_S = 0.5
_FLOW_HASH = flow_hash_program()
_SIOCGIFNAME = 0x8910  # interface index -> name; ENODEV once the interface is gone
_IFREQ = struct.Struct("16si20x")  # struct ifreq: name, then ifr_ifindex in the union

_libc = ctypes.CDLL(None, use_errno=True)
_libc.bind.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
_libc.bind.restype = ctypes.c_int


class AfpacketCapturer:
    """Capture live frames from a TPACKET_V3 ring; build one per worker process."""

    Config = AfpacketConfig

    def __init__(self, config: AfpacketConfig, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        any_mode = config.interfaces == ["any"]
        ifaces = [] if any_mode else resolve(list(config.interfaces))
        self.interfaces = ifaces
        for i in ifaces:
            if not i.up:
                # Not an error: the kernel hooks the socket up when the link comes up, and an
                # agent started before its interfaces should not need a restart.
                log.warning("interface %s is down; capture starts when it comes up", i.name)
            # Only a snap_len the user chose is worth a warning: the default (65535) is one
            # short of lo's MTU (65536) and would warn on every loopback capture.
            explicit = "snap_len" in config.model_fields_set
            if explicit and config.snap_len < i.mtu + _MAX_LINK_HDR:
                log.warning(
                    "snap_len %d < MTU %d of %s plus its header: longer frames are cut",
                    config.snap_len,
                    i.mtu,
                    i.name,
                )
        cooked = _cooked(any_mode, ifaces)
        self.linktype = LINKTYPE_LINUX_SLL2 if cooked else LINKTYPE_ETHERNET
        self.ifindex = ifaces[0].index if len(ifaces) == 1 else 0
        self._program = self._build_program(ifaces, any_mode, cooked)
        self._fanout_arg = self._fanout_arg_for(config, ctx)
        self._packets = 0
        self._bytes = 0
        self._k_packets = 0
        self._k_drops = 0
        self._k_freezes = 0
        self._started = False
        self._closing = False
        self._close_done = asyncio.Event()
        self._closed = False
        self._unread = 0
        self._desync = 0  # frames in blocks the kernel passed without handing them over
        self._ring_unread = 0  # what the ring walk found at close (a cross-check)
        self._gone: set[int] = set()  # indexes of captured interfaces that were removed
        self._waiter: asyncio.Future[None] | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._sock = _open_socket(cooked)
        try:
            self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            # Silent until bound and in its fanout group: nothing unfiltered is ever queued, and a
            # worker joining a running group never sees another worker's share twice.
            bpf.attach(self._sock, bpf.reject_all())
            self._ring = Ring(
                self._sock,
                config.block_size,
                config.block_count,
                config.frame_size,
                config.block_timeout_ms,
            )
            if config.promiscuous:
                for i in ifaces:
                    mreq = PACKET_MREQ.pack(i.index, PACKET_MR_PROMISC, 0, b"")
                    self._sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as e:
            self._sock.close()
            raise CaptureError(f"cannot set up AF_PACKET capture: {e.strerror or e}") from e
        except CaptureError:
            self._sock.close()
            raise
        self._read = self._ring.read_cooked if cooked else self._ring.read_ethernet

    def _build_program(
        self, ifaces: list[Interface], any_mode: bool, cooked: bool
    ) -> list[bpf.Insn]:
        """The user's filter behind prologues for interface selection and loopback echoes."""
        cfg = self.config
        user = bpf.compile_filter(cfg.filter_for(cooked), self.linktype, cfg.snap_len)
        prologue: list[bpf.Insn] = []
        if len(ifaces) > 1:
            prologue += bpf.ifindex_prologue([i.index for i in ifaces])
        loops = ifaces
        if any_mode:
            loops = []
            with contextlib.suppress(CaptureError):  # a namespace without lo: nothing to skip
                loops = resolve(["lo"])
        loops = [i for i in loops if i.hatype == ARPHRD_LOOPBACK]
        for lo in loops:
            # Loopback shows each frame twice, sent and received; keep the received copy.
            prologue += bpf.skip_outgoing(lo.index)
        return prologue + user

    @staticmethod
    def _fanout_arg_for(config: AfpacketConfig, ctx: PluginContext) -> int | None:
        """The PACKET_FANOUT argument, or None when this socket captures alone."""
        if ctx.workers <= 1 and config.fanout_size <= 1 and config.fanout_group is None:
            return None
        group = config.fanout_group
        if group is None:
            # Every worker of one task is a child of the same runner: same inputs, same id;
            # another task (or another `otus run`) gets another group.
            seed = f"otus/{ctx.agent_id}/{ctx.task_id}/{os.getppid()}".encode()
            group = zlib.crc32(seed) & 0xFFFF
        mode = FANOUT_MODES[config.fanout_mode] | PACKET_FANOUT_FLAG_DEFRAG
        return group | (mode << 16)

    @property
    def ring_unread(self) -> int:
        """Frames the ring walk found unread at close (capture.drop.shutdown's cross-check)."""
        return self._ring_unread

    @property
    def fanout_group(self) -> int | None:
        """The fanout group id this worker joins, if any."""
        return None if self._fanout_arg is None else self._fanout_arg & 0xFFFF

    def _start(self) -> None:
        """Bind, join the fanout group, then swap the reject-all filter for the real one."""
        addr = SOCKADDR_LL.pack(AF_PACKET, ETH_P_ALL.to_bytes(2, "big"), self.ifindex, 0, 0, 0, b"")
        if _libc.bind(self._sock.fileno(), addr, len(addr)) != 0:
            err = ctypes.get_errno()
            raise CaptureError(f"cannot bind the capture socket: {os.strerror(err)}")
        if self._fanout_arg is not None:
            try:
                # As bytes: with the defrag flag the value does not fit a C int.
                arg = self._fanout_arg.to_bytes(4, sys.byteorder)
                self._sock.setsockopt(SOL_PACKET, PACKET_FANOUT, arg)
            except OSError as e:
                hint = (
                    " (the group exists with another mode or interface: set fanout_group)"
                    if e.errno == errno.EINVAL
                    else ""
                )
                raise CaptureError(
                    f"cannot join fanout group {self.fanout_group}: {e.strerror or e}{hint}"
                ) from e
            if (self._fanout_arg >> 16) & 0xFF == PACKET_FANOUT_CBPF:
                # The group's program; every member sets the same one (the last write wins).
                what = "set the fanout hash program"
                bpf.set_program(self._sock, SOL_PACKET, PACKET_FANOUT_DATA, _FLOW_HASH, what)
        bpf.attach(self._sock, self._program)
        self._started = True

    async def batches(self) -> AsyncIterator[RawBatch]:
        """Yield one batch per ring block until :meth:`close`."""
        if self._closed:
            return
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        ring = self._ring
        read = self._read
        linktype, ifindex = self.linktype, self.ifindex
        while not self._closed:
            if not ring.ready():
                await self._wait(loop)
                if not self._closed and not ring.ready():
                    self._resync()
                continue
            batch = RawBatch(linktype, ifindex=ifindex)
            n = read(batch.frames, batch.ts_us)
            self._packets += n
            self._bytes += sum(map(len, batch.frames))
            self._read_kernel_stats()
            if n:
                yield batch
            # A generator that always has data never suspends; give signal handlers, timers
            # and close() a turn once per block.
            await asyncio.sleep(0)

    def _resync(self) -> None:
        """Skip blocks the kernel passed without handing them over (counted, logged)."""
        skipped = self._ring.resync()
        if skipped:
            if not self._desync:  # once: the counter tells the rest
                log.warning(
                    "capture: the kernel passed a ring block without handing it over; "
                    "%d frames skipped (capture.drop.ring_desync)",
                    skipped,
                )
            self._desync += skipped

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sleep until the socket is readable (a block was retired), close(), or a safety tick."""
        fut: asyncio.Future[None] = loop.create_future()
        fd = self._sock.fileno()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self._waiter = fut
        self._reader_loop = loop
        loop.add_reader(fd, wake)
        timer = loop.call_later(_SAFETY_WAKE_S, wake)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiter = None
            if not self._closed:
                loop.remove_reader(fd)
        if not self._closed and not self._ring.ready():
            # Woken without a block: an error is pending (ENETDOWN when the link went down or
            # was removed); reading SO_ERROR clears it, otherwise poll would keep reporting it.
            err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self._check_interfaces()
            if err:
                names = ",".join(i.name for i in self.interfaces) or "any"
                log.warning("capture on %s: %s", names, os.strerror(err))

    def _check_interfaces(self) -> None:
        """Fail (one interface) or say so (several) when a captured interface was removed."""
        # The kernel unhooks a socket from a removed device for good: a new device of the same
        # name gets a new index, so capture would go on silently capturing nothing.
        for i in self.interfaces:
            if i.index in self._gone:
                continue
            try:
                # Asked through the capture socket: it answers for its own network namespace,
                # whatever namespace this thread is in.
                fcntl.ioctl(self._sock.fileno(), _SIOCGIFNAME, _IFREQ.pack(b"", i.index))
            except OSError:
                self._gone.add(i.index)
                if len(self.interfaces) == 1:
                    raise CaptureError(
                        f"interface {i.name} was removed: nothing left to capture "
                        "(start the task again once it is back)"
                    ) from None
                log.error(
                    "interface %s was removed: its traffic is no longer captured "
                    "(restart the task to capture a new %s)",
                    i.name,
                    i.name,
                )

    def _read_kernel_stats(self) -> None:
        """Fold PACKET_STATISTICS in; the kernel zeroes them on every read, so we accumulate."""
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_V3.size)
        packets, drops, freezes = TPACKET_STATS_V3.unpack(raw)
        self._k_packets += packets  # received by the socket (past the filter), drops included
        self._k_drops += drops
        self._k_freezes += freezes

    def stats(self) -> dict[str, int]:
        """``capture.*`` counters, with the kernel's numbers read now."""
        if not self._closed:
            self._read_kernel_stats()
        return {
            "capture.packets": self._packets,
            "capture.bytes": self._bytes,
            "capture.kernel_packets": self._k_packets,
            "capture.drop.kernel": self._k_drops,
            "capture.drop.shutdown": self._unread,
            "capture.drop.ring_desync": self._desync,
            "capture.kernel_freezes": self._k_freezes,
            "capture.snap_cut": self._ring.snap_cut,
        }

    async def close(self) -> None:
        """Stop intake, let the kernel hand over its last block, then release everything."""
        if self._closed:
            return
        if self._closing:
            await self._close_done.wait()
            return
        self._closing = True
        if self._started:
            # Frames the kernel accepted but nobody read end as capture.drop.shutdown, so
            # kernel_packets = packets + the drops. The ring walk that cross-checks that count
            # wants the partly filled block retired: up to two timer ticks, capped to stay prompt.
            with contextlib.suppress(CaptureError):
                bpf.attach(self._sock, bpf.reject_all())
            await asyncio.sleep(min(2 * self.config.block_timeout_ms + 5, 250) / 1000)
        self.close_now()

    def close_now(self) -> None:
        """Release at once (no wait for the last block); safe to call twice."""
        if self._closed:
            return
        if self._started and not self._closing:
            with contextlib.suppress(CaptureError):
                bpf.attach(self._sock, bpf.reject_all())  # freeze the counts read below
        stats_read = False
        with contextlib.suppress(OSError):
            self._read_kernel_stats()
            stats_read = True
        self._unread = self._ring_unread = self._ring.unread()
        if stats_read:
            # Accepted and never read is the shutdown drop, by definition: the kernel's counts
            # are exact, so kernel_packets = packets + the drops holds even if a frame is
            # somewhere the ring walk does not see. A disagreement is worth a line in the log.
            unread = self._k_packets - self._k_drops - self._packets - self._desync
            if unread < 0:  # the kernel is the authority: a skipped block said more than was lost
                self._desync = max(0, self._desync + unread)
            self._unread = max(0, unread)
            if self._unread != self._ring_unread:
                log.warning(
                    "capture: %d frames the kernel accepted were never read (the ring walk "
                    "found %d); counted as capture.drop.shutdown; %s",
                    self._unread,
                    self._ring_unread,
                    self._ring.describe(),
                )
        self._closed = True
        loop, waiter = self._reader_loop, self._waiter
        if waiter is not None and loop is not None and not loop.is_closed():
            loop.remove_reader(self._sock.fileno())
            if not waiter.done():
                waiter.set_result(None)
        self._ring.close()
        self._sock.close()
        self._close_done.set()


def check(config: AfpacketConfig) -> None:
    """Resolve the interfaces and compile the filter, as a capturer would, with no socket.

    Needs no privilege. An unknown interface or an invalid filter raises
    :class:`~otus.core.errors.CaptureInputError`; other failures :class:`CaptureError`.
    """
    any_mode = config.interfaces == ["any"]
    ifaces = [] if any_mode else resolve(list(config.interfaces))
    cooked = _cooked(any_mode, ifaces)
    linktype = LINKTYPE_LINUX_SLL2 if cooked else LINKTYPE_ETHERNET
    bpf.compile_filter(config.filter_for(cooked), linktype, config.snap_len)


def _cooked(any_mode: bool, ifaces: list[Interface]) -> bool:
    """Linux cooked (SOCK_DGRAM) for ``any`` and for devices without an Ethernet header."""
    return any_mode or any(i.hatype not in ETHERNET_HATYPES for i in ifaces)


def _open_socket(cooked: bool) -> socket.socket:
    """An AF_PACKET socket with protocol 0, so it receives nothing until bound."""
    kind = socket.SOCK_DGRAM if cooked else socket.SOCK_RAW
    try:
        return socket.socket(socket.AF_PACKET, kind, 0)
    except PermissionError as e:
        raise CaptureError(
            "live capture needs CAP_NET_RAW: run as root, or grant it to the systemd unit "
            "(AmbientCapabilities=CAP_NET_RAW), the container (securityContext.capabilities."
            "add: [NET_RAW]) or the Python interpreter binary (setcap cap_net_raw+ep on the "
            "real python file; setcap on the otus script does nothing)"
        ) from e
    except OSError as e:
        raise CaptureError(f"cannot open an AF_PACKET socket: {e.strerror or e}") from e
