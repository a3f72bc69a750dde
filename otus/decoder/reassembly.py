"""IPv4/IPv6 fragment reassembly with hard limits and deterministic overlap handling.

Fragments are counted in *frames*: a piece normally stands for one captured frame, but the
payload of a reassembled tunnel packet can itself be an inner fragment, and then that one piece
stands for every frame it was built from (its ``weight``). So at any time::

    fragments == merged + sum(drops.values()) + pending_fragments

Overlaps follow RFC 5722 and Linux: an exact duplicate (same offset, length, M flag and bytes)
is ignored; any other overlap throws the whole datagram away.
"""

from __future__ import annotations

from collections.abc import Hashable
from operator import itemgetter
from typing import Any

from otus.decoder.common import REASSEMBLY_DROPS

__all__ = ["Completed", "Reassembler"]

# (payload, weight, protocol of the offset-0 fragment, context saved with the first fragment)
Completed = tuple[bytes, int, int, Any]

# A held piece: (start, end, data, more fragments follow, weight)
_Piece = tuple[int, int, bytes, bool, int]
_start = itemgetter(0)


class _Datagram:
    """One datagram being rebuilt."""

    __slots__ = (
        "ctx",
        "first_ts",
        "have",
        "max_end",
        "nbytes",
        "pieces",
        "proto",
        "total",
        "weight",
    )

    def __init__(self, first_ts: int, ctx: Any) -> None:
        self.first_ts = first_ts
        self.ctx = ctx  # opaque to this module: the decoder's encapsulation state
        self.total = -1  # payload length, known once the last fragment (M=0) arrived
        self.have = 0  # payload bytes held; pieces never overlap, so complete when == total
        self.max_end = 0
        self.nbytes = 0
        self.weight = 0
        self.proto = -1
        self.pieces: list[_Piece] = []


class Reassembler:
    """Holds fragments per datagram key until complete, within count, size and time limits."""

    def __init__(
        self, max_datagrams: int, max_fragments: int, max_size: int, timeout_us: int
    ) -> None:
        self.max_datagrams = max(1, max_datagrams)
        self.max_fragments = max(1, max_fragments)
        self.max_size = max_size
        self.timeout_us = timeout_us
        self._held: dict[Hashable, _Datagram] = {}  # insertion order == creation order
        self.fragments = 0
        self.merged = 0
        self.datagrams = 0
        self.pending_fragments = 0
        self.pending_bytes = 0
        self.drops: dict[str, int] = dict.fromkeys(REASSEMBLY_DROPS, 0)

    def __len__(self) -> int:
        """Datagrams being held."""
        return len(self._held)

    def add(
        self,
        key: Hashable,
        ts: int,
        start: int,
        more: bool,
        data: bytes,
        hdr_len: int,
        proto: int,
        ctx: Any,
        weight: int = 1,
        fresh: bool = True,
    ) -> Completed | None:
        """Hold one fragment; return the whole datagram when this one completes it."""
        # ``hdr_len`` plus the payload end is what the datagram's length field would say (IPv4
        # total length, IPv6 payload length): it must stay within ``max_size``. ``fresh`` is
        # false for a piece that was itself reassembled (its frames were counted already).
        if fresh:
            self.fragments += weight
        n = len(data)
        end = start + n
        if n == 0 or (more and n & 7):
            self.count("malformed", weight)
            return None
        held = self._held
        dg = held.get(key)
        if dg is not None and ts - dg.first_ts > self.timeout_us:
            self._discard(key, dg, "timeout")
            dg = None
        if hdr_len + end > self.max_size:
            if dg is not None:
                self._discard(key, dg, "too_big")
            self.count("too_big", weight)
            return None
        if dg is None:
            self._expire_oldest(ts)
            while len(held) >= self.max_datagrams:
                old = next(iter(held))
                self._discard(old, held[old], "evicted")
            dg = held[key] = _Datagram(ts, ctx)
        else:
            for s, e, d, m, _ in dg.pieces:
                if start < e and s < end:
                    if s == start and e == end and m == more and d == data:
                        self.count("duplicate", weight)
                    else:
                        self._discard(key, dg, "overlap")
                        self.count("overlap", weight)
                    return None
            if len(dg.pieces) >= self.max_fragments:
                self._discard(key, dg, "too_many_fragments")
                self.count("too_many_fragments", weight)
                return None
            # Pieces are disjoint here, so a second last fragment always disagrees.
            if (more and 0 <= dg.total < end) or (not more and (dg.total >= 0 or dg.max_end > end)):
                self._discard(key, dg, "inconsistent")
                self.count("inconsistent", weight)
                return None
        if not more:
            dg.total = end
        dg.pieces.append((start, end, data, more, weight))
        dg.have += n
        dg.nbytes += n
        dg.weight += weight
        dg.max_end = max(dg.max_end, end)
        if start == 0:
            dg.proto = proto  # IPv6: the offset-0 fragment's next header is authoritative
        self.pending_fragments += weight
        self.pending_bytes += n
        if dg.have != dg.total:
            return None
        del held[key]
        self.pending_fragments -= dg.weight
        self.pending_bytes -= dg.nbytes
        pieces = sorted(dg.pieces, key=_start)
        return b"".join([p[2] for p in pieces]), dg.weight, dg.proto, dg.ctx

    def count(self, reason: str, weight: int) -> None:
        """Count ``weight`` frames as dropped for ``reason`` (also used by the decoder)."""
        self.drops[reason] = self.drops.get(reason, 0) + weight

    def emitted(self, weight: int) -> None:
        """Count a completed datagram that became a decoded packet."""
        self.datagrams += 1
        self.merged += weight

    def expire(self, now_us: int) -> None:
        """Drop every datagram whose first fragment is older than the timeout."""
        limit = self.timeout_us
        for key, dg in [(k, d) for k, d in self._held.items() if now_us - d.first_ts > limit]:
            self._discard(key, dg, "timeout")

    def _expire_oldest(self, now_us: int) -> None:
        """Expire from the oldest datagram on, stopping at the first one still in time."""
        held = self._held
        limit = self.timeout_us
        while held:
            key = next(iter(held))
            dg = held[key]
            if now_us - dg.first_ts <= limit:
                return
            self._discard(key, dg, "timeout")

    def expire_oldest(self, now_us: int) -> None:
        """Cheap per-batch expiry (see :meth:`_expire_oldest`)."""
        if self._held:
            self._expire_oldest(now_us)

    def _discard(self, key: Hashable, dg: _Datagram, reason: str) -> None:
        """Forget a datagram, counting all its frames as dropped for ``reason``."""
        del self._held[key]
        self.pending_fragments -= dg.weight
        self.pending_bytes -= dg.nbytes
        self.count(reason, dg.weight)

    def stats(self) -> dict[str, int]:
        """``reassembly.*`` counters and gauges."""
        s = {
            "reassembly.fragments": self.fragments,
            "reassembly.merged": self.merged,
            "reassembly.datagrams": self.datagrams,
            "reassembly.pending_datagrams": len(self._held),
            "reassembly.pending_fragments": self.pending_fragments,
            "reassembly.pending_bytes": self.pending_bytes,
        }
        for reason, n in self.drops.items():
            s["reassembly.drop." + reason] = n
        return s
