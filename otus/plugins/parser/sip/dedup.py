"""Duplicate suppression: the same SIP message seen twice within a short window is reported once.

Port mirrors and multi-interface captures often deliver one datagram twice (mirrored on two
switch ports, with and without a VLAN tag, on a bond and its slave). The key is the message's
bytes (their hash) with its source and destination address and port, so two copies collide
whatever their encapsulation; a key seen again within ``window_us`` (packet time) is a
duplicate. SIP's own retransmissions (T1 = 500 ms) fall outside the default 200 ms window
and are kept: they are real signalling. Memory is bounded by ``max_entries`` (oldest forgotten
first). When enabled it applies to every message, UDP or TCP: each message a TCP stream
delivers is checked too. A copied TCP segment rarely gets that far, since both copies land in
the same stream, which drops the second as a retransmission (``parse.drop.tcp_retransmit``).
"""

from __future__ import annotations

from collections import deque

__all__ = ["Dedup"]

DedupKey = tuple[int, str, int, str, int]


class Dedup:
    """Remembers recent message keys for ``window_us``; at most ``max_entries`` of them."""

    __slots__ = ("_order", "_seen", "max_entries", "window_us")

    def __init__(self, window_us: int, max_entries: int) -> None:
        self.window_us = window_us
        self.max_entries = max_entries
        self._seen: dict[DedupKey, int] = {}
        self._order: deque[tuple[int, DedupKey]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, key: DedupKey, now_us: int) -> bool:
        """True if ``key`` was seen within the window (a duplicate); else remember it."""
        seen = self._seen
        order = self._order
        cutoff = now_us - self.window_us
        while order and order[0][0] < cutoff:
            t, k = order.popleft()
            if seen.get(k) == t:
                del seen[k]
        t0 = seen.get(key)
        if t0 is not None and t0 >= cutoff:
            return True
        seen[key] = now_us
        order.append((now_us, key))
        if len(order) > self.max_entries:
            t, k = order.popleft()
            if seen.get(k) == t:
                del seen[k]
        return False
