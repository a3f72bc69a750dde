"""The TPACKET_V3 receive ring: set up, mmap, and turn each block the kernel hands over into lists.

The kernel fills blocks in order and flips a block's status to TP_STATUS_USER when it is full or
its timeout expires; we copy every frame out (``mm[a:b]`` makes ``bytes``, so nothing keeps a
view into the mapping), then hand the block back by writing TP_STATUS_KERNEL. Frames of one
block are walked through ``tp_next_offset``.
"""

from __future__ import annotations

import mmap
import socket

from otus.core.errors import CaptureError

from .consts import (
    BLOCK_HDR,
    BLOCK_SEQ,
    BLOCK_SEQ_OFFSET,
    BLOCK_STATUS,
    BLOCK_STATUS_OFFSET,
    ETH_P_8021Q,
    FRAME_HDR,
    FRAME_SLL,
    FRAME_SLL_LEN,
    FRAME_SLL_OFFSET,
    FRAME_VLAN,
    FRAME_VLAN_OFFSET,
    PACKET_RX_RING,
    SLL2_HDR,
    SOL_PACKET,
    TP_STATUS_KERNEL,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    TPACKET_REQ3,
    VLAN_TAG,
)

__all__ = ["Ring"]

_COOKED_CACHE_MAX = 4096  # distinct (protocol, ifindex, hatype, pkttype, address) headers kept
_TAG_CACHE_MAX = 4096  # distinct (TPID, TCI) tags kept as bytes


class Ring:
    """One socket's mmap'ed TPACKET_V3 RX ring and a cursor on the next block to read."""

    __slots__ = ("_cooked", "_cur", "_tags", "block_count", "block_size", "mm", "snap_cut")

    def __init__(
        self,
        sock: socket.socket,
        block_size: int,
        block_count: int,
        frame_size: int,
        timeout_ms: int,
    ) -> None:
        frame_nr = (block_size // frame_size) * block_count
        req = TPACKET_REQ3.pack(block_size, block_count, frame_size, frame_nr, timeout_ms, 0, 0)
        size = block_size * block_count
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.mm = mmap.mmap(
                sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as e:
            raise CaptureError(
                f"cannot set up a {size >> 20} MiB capture ring "
                f"({block_count} x {block_size} bytes): {e.strerror or e}"
            ) from e
        self.block_size = block_size
        self.block_count = block_count
        self._cur = 0
        self._cooked: dict[bytes, bytes] = {}
        self._tags: dict[int, bytes] = {}
        self.snap_cut = 0  # frames the kernel cut to the snap length (tp_snaplen < tp_len)

    def ready(self) -> bool:
        """Whether the kernel has handed over the next block."""
        off = self._cur * self.block_size + BLOCK_STATUS_OFFSET
        return bool(BLOCK_STATUS.unpack_from(self.mm, off)[0] & TP_STATUS_USER)

    def _release(self, off: int) -> None:
        BLOCK_STATUS.pack_into(self.mm, off + BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
        self._cur = (self._cur + 1) % self.block_count

    def read_ethernet(self, frames: list[bytes], stamps: list[int]) -> int:
        """Append the next block's frames (802.1Q tag put back) and stamps; release it."""
        mm = self.mm
        off = self._cur * self.block_size
        num: int
        _status, num, first = BLOCK_HDR.unpack_from(mm, off + BLOCK_STATUS_OFFSET)
        unpack = FRAME_HDR.unpack_from
        unpack_vlan = FRAME_VLAN.unpack_from
        tags = self._tags
        add_frame = frames.append
        add_ts = stamps.append
        p = off + first
        last_sec = -1
        base_us = 0
        cut = 0
        for _ in range(num):
            nxt, sec, nsec, snap, wire, status, mac = unpack(mm, p)
            if snap != wire:
                cut += 1
            if sec != last_sec:  # a block spans a second or two: one big-int multiply each
                last_sec, base_us = sec, sec * 1_000_000
            a = p + mac
            if status & TP_STATUS_VLAN_VALID:
                # The NIC or the stack moved the tag into metadata; put it back after the MACs
                # so VLAN ids survive, as libpcap does.
                tci, tpid = unpack_vlan(mm, p + FRAME_VLAN_OFFSET)
                key = (
                    tci & 0xFFFF
                    | (tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q) << 16
                )
                tag = tags.get(key)
                if tag is None:
                    tag = self._tag(key)
                add_frame(mm[a : a + 12] + tag + mm[a + 12 : a + snap])
            else:
                add_frame(mm[a : a + snap])
            add_ts(base_us + nsec // 1000)
            p += nxt
        self._release(off)
        if cut:
            self.snap_cut += cut
        return num

    def read_cooked(self, frames: list[bytes], stamps: list[int]) -> int:
        """Like :meth:`read_ethernet` for SOCK_DGRAM: each frame gets a Linux cooked v2 header."""
        mm = self.mm
        off = self._cur * self.block_size
        num: int
        _status, num, first = BLOCK_HDR.unpack_from(mm, off + BLOCK_STATUS_OFFSET)
        unpack = FRAME_HDR.unpack_from
        unpack_vlan = FRAME_VLAN.unpack_from
        tags = self._tags
        add_frame = frames.append
        add_ts = stamps.append
        cache = self._cooked
        get = cache.get
        p = off + first
        last_sec = -1
        base_us = 0
        cut = 0
        for _ in range(num):
            nxt, sec, nsec, snap, wire, status, mac = unpack(mm, p)
            if snap != wire:
                cut += 1
            if sec != last_sec:  # a block spans a second or two: one big-int multiply each
                last_sec, base_us = sec, sec * 1_000_000
            s = p + FRAME_SLL_OFFSET
            key = mm[s : s + FRAME_SLL_LEN]
            hdr = get(key)
            if hdr is None:
                hdr = _sll2(key)
                if len(cache) >= _COOKED_CACHE_MAX:
                    cache.clear()
                cache[key] = hdr
            a = p + mac
            if status & TP_STATUS_VLAN_VALID:
                # Same layout as Ethernet: the protocol field becomes the TPID, then TCI and the
                # original protocol precede the network header.
                tci, tpid = unpack_vlan(mm, p + FRAME_VLAN_OFFSET)
                key = (
                    tci & 0xFFFF
                    | (tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q) << 16
                )
                tag = tags.get(key)
                if tag is None:
                    tag = self._tag(key)
                add_frame(tag[:2] + hdr[2:] + tag[2:] + hdr[:2] + mm[a : a + snap])
            else:
                add_frame(hdr + mm[a : a + snap])
            add_ts(base_us + nsec // 1000)
            p += nxt
        self._release(off)
        if cut:
            self.snap_cut += cut
        return num

    def _tag(self, key: int) -> bytes:
        """The 4 bytes of the tag ``TPID << 16 | TCI``, cached (a link carries a few VLANs)."""
        if len(self._tags) >= _TAG_CACHE_MAX:
            self._tags.clear()
        tag = self._tags[key] = VLAN_TAG.pack(key >> 16, key & 0xFFFF)
        return tag

    def unread(self) -> int:
        """Frames in the ring not read: retired blocks, and the block the kernel is filling.

        The open block's ``num_pkts`` is kept current as frames land; it is the block with
        the highest ``seq_num`` (a block given back keeps its old, lower number until reopened).
        Call it with intake stopped, or the open block may still grow.
        """
        blocks = [self._header(i) for i in range(self.block_count)]
        n = sum(num for status, num, _seq in blocks if status & TP_STATUS_USER)
        status, num, _seq = max(blocks, key=lambda b: b[2])
        if not status & TP_STATUS_USER:
            n += num
        return int(n)

    def _header(self, i: int) -> tuple[int, int, int]:
        """Block ``i``'s status, frame count and sequence number."""
        off = i * self.block_size
        status, num, _first = BLOCK_HDR.unpack_from(self.mm, off + BLOCK_STATUS_OFFSET)
        return status, num, BLOCK_SEQ.unpack_from(self.mm, off + BLOCK_SEQ_OFFSET)[0]

    def resync(self) -> int:
        """Move past blocks the kernel left behind not handed over; return the frames in them.

        Call it when the next block is not ready. The kernel fills and hands over blocks in
        order, so a handed-over block while the next one is still the kernel's means that one
        was passed without ever being marked ours (seen on 6.18 under overload, about once in a
        hundred floods). Waiting on it would stall the capture until the kernel wraps around and
        overwrites it; instead skip to the oldest block handed over, counting what is skipped.
        """
        count = self.block_count
        blocks = [self._header(i) for i in range(count)]
        handed = [
            (seq, i) for i, (status, _num, seq) in enumerate(blocks) if status & TP_STATUS_USER
        ]
        if not handed:
            return 0
        oldest_seq, oldest = min(handed)
        if oldest == self._cur or self.ready():
            return 0  # in order after all (the kernel moved meanwhile)
        skipped, i = 0, self._cur
        while i != oldest:
            status, num, seq = blocks[i]
            if not status & TP_STATUS_USER and seq < oldest_seq:
                skipped += num
            i = (i + 1) % count
        self._cur = oldest
        return int(skipped)

    def describe(self) -> str:
        """Each block's status, frame count and sequence number, and the read cursor (for logs)."""
        parts = (
            f"{i}:{s:#x}/{n}/{q}"
            for i, (s, n, q) in enumerate(map(self._header, range(self.block_count)))
        )
        return f"next={self._cur} blocks(status/frames/seq)=" + " ".join(parts)

    def close(self) -> None:
        """Unmap the ring (the kernel frees it when the socket closes)."""
        self.mm.close()


def _sll2(sll: bytes) -> bytes:
    """The 20-byte LINKTYPE_LINUX_SLL2 header for a sockaddr_ll (from sll_protocol on)."""
    proto, ifindex, hatype, pkttype, halen, addr = FRAME_SLL.unpack(sll)
    return SLL2_HDR.pack(proto, ifindex, hatype, pkttype, halen, addr)
