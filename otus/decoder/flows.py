"""Flows by key: a bounded, approximately-LRU registry with idle expiry, O(1) per packet.

A flow is whatever state a stage keeps per connection (the SIP parser keeps TCP streams); the
registry only owns *when it goes*: it is created by :meth:`FlowRegistry.add`, found (and
refreshed) by :meth:`FlowRegistry.touch`, and ends in exactly one of

- ``flows.closed`` — :meth:`FlowRegistry.remove` (FIN/RST, or the owner is done with it);
- ``flows.evicted`` — the registry is full (``max_flows``) and a new flow needs the room of the
  least recently used one;
- ``flows.expired`` — nothing touched it for ``idle_timeout_us`` (packet time);
- or it is still there: the ``flows.active`` gauge. So created = closed + evicted + expired +
  active.

Evicted and expired flows are handed to ``on_end(key, flow, reason)`` so the owner can count
what they still held.

Order: an :class:`~collections.OrderedDict` from oldest to newest. Moving an entry to the end on
every packet is a C call per packet; instead a flow is moved at most once per ``granule``
(1/8 of the idle timeout, at most 1 s), so the order is LRU to within that granule. Expiry walks
from the oldest end and stops at the first flow moved after the cutoff; a flow touched since its
last move gets a second chance (moved to the end) instead: every flow is examined O(1) times per
timeout, whatever the flow count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Flow", "FlowRegistry"]


class Flow:
    """Base of the values a :class:`FlowRegistry` holds: when it was last used and last moved."""

    __slots__ = ("last_us", "moved_us")

    def __init__(self) -> None:
        self.last_us = 0
        self.moved_us = 0


F = TypeVar("F", bound=Flow)
K = TypeVar("K", bound=Hashable)


class FlowRegistry(Generic[K, F]):
    """At most ``max_flows`` flows; the least recently used go first, idle ones expire."""

    __slots__ = (
        "_flows",
        "closed",
        "created",
        "evicted",
        "expired",
        "granule",
        "idle_us",
        "lookup",
        "max_flows",
        "on_end",
    )

    def __init__(
        self,
        max_flows: int,
        idle_timeout_us: int,
        on_end: Callable[[K, F, str], None] | None = None,
    ) -> None:
        if max_flows < 1 or idle_timeout_us < 1:
            raise ValueError("max_flows and idle_timeout_us must be positive")
        self.max_flows = max_flows
        self.idle_us = idle_timeout_us
        self.granule = min(1_000_000, idle_timeout_us // 8)
        self.on_end = on_end
        self._flows: OrderedDict[K, F] = OrderedDict()
        # get() without its Python frame, for per-packet callers (the dict is never replaced).
        self.lookup: Callable[[K], F | None] = self._flows.get
        self.created = self.closed = self.evicted = self.expired = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    def get(self, key: K) -> F | None:
        """The flow of ``key`` without refreshing it.

        A caller that refreshes a found flow itself sets ``last_us`` and calls :meth:`touch`
        only when ``now - moved_us > granule`` (one C call per packet instead of a method call).
        """
        return self._flows.get(key)

    def touch(self, key: K, now_us: int) -> F | None:
        """The flow of ``key``, marked used at ``now_us``; None when there is none."""
        f = self._flows.get(key)
        if f is not None:
            f.last_us = now_us
            if now_us - f.moved_us > self.granule:
                f.moved_us = now_us
                self._flows.move_to_end(key)
        return f

    def add(self, key: K, flow: F, now_us: int) -> F:
        """Register a new flow (evicting the least recently used one when full)."""
        flows = self._flows
        if len(flows) >= self.max_flows and key not in flows:
            old_key, old = flows.popitem(last=False)
            self.evicted += 1
            if self.on_end is not None:
                self.on_end(old_key, old, "evicted")
        flow.last_us = flow.moved_us = now_us
        flows[key] = flow
        self.created += 1
        return flow

    def remove(self, key: K) -> F | None:
        """Forget a flow its owner has finished with (counted as closed)."""
        f = self._flows.pop(key, None)
        if f is not None:
            self.closed += 1
        return f

    def expire(self, now_us: int) -> int:
        """End the flows idle since ``now_us - idle_timeout``; return how many."""
        flows = self._flows
        cutoff = now_us - self.idle_us
        on_end = self.on_end
        n = 0
        while flows:
            key = next(iter(flows))
            f = flows[key]
            if f.moved_us >= cutoff:
                break  # the rest were moved later still
            if f.last_us >= cutoff:
                f.moved_us = now_us  # used since it was moved: a second chance, in order
                flows.move_to_end(key)
                continue
            del flows[key]
            n += 1
            if on_end is not None:
                on_end(key, f, "expired")
        self.expired += n
        return n

    def clear(self, reason: str = "closed") -> None:
        """End every flow (at the end of a capture), counted under ``reason``."""
        flows = self._flows
        while flows:
            key, f = flows.popitem(last=False)
            if reason == "closed":
                self.closed += 1
            elif reason == "evicted":
                self.evicted += 1
            else:
                self.expired += 1
            if self.on_end is not None:
                self.on_end(key, f, reason)

    def values(self) -> list[F]:
        """The flows, oldest first (a copy: safe to change the registry while walking it)."""
        return list(self._flows.values())

    def stats(self) -> dict[str, int]:
        """``flows.active`` (a gauge) and the created/closed/evicted/expired totals."""
        return {
            "flows.active": len(self._flows),
            "flows.created": self.created,
            "flows.closed": self.closed,
            "flows.evicted": self.evicted,
            "flows.expired": self.expired,
        }
