"""The four plugin kinds, as small protocols, and the context every plugin is built with.

A plugin class is registered in its kind's registry (a plain ``dict`` from name to class in
``otus.plugins.<kind>``) and built as ``cls(config, ctx)`` where ``config`` is the plugin's own
pydantic model (``cls.Config``) from the task spec.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from otus.core.packet import DecodedPacket, OutputPacket, RawBatch

__all__ = ["Capturer", "HasStats", "Parser", "PluginContext", "Processor", "Reporter"]


@dataclass(slots=True)
class PluginContext:
    """Who a plugin works for: the task, the agent, and which fanout worker it runs in."""

    task_id: str = "run"
    agent_id: str = ""
    worker: int = 0
    workers: int = 1
    # A lock shared by the task's worker processes (multiprocessing.Lock), for reporters that
    # write to one stream: a pipe only writes PIPE_BUF bytes atomically, records are larger.
    output_lock: Any = None


@runtime_checkable
class HasStats(Protocol):
    """Anything that reports counters (see ``otus.core.stats`` for the naming rules)."""

    def stats(self) -> Mapping[str, int]:
        """Current counters, flat ``<stage>.<name>`` keys."""
        ...


class Capturer(Protocol):
    """A source of raw frames: a capture file, an AF_PACKET ring."""

    def batches(self) -> AsyncIterator[RawBatch]:
        """Yield batches until the source ends or :meth:`close` is called."""
        ...

    async def close(self) -> None:
        """Stop capturing and release the source; ``batches`` then ends."""
        ...

    def stats(self) -> Mapping[str, int]:
        """``capture.*`` counters, kernel drops included."""
        ...


class Parser(Protocol):
    """Turns decoded packets of one application protocol into output packets.

    Optional, for parsers that keep state (TCP streams): ``expire(now_us)``, called by the
    pipeline's housekeeping with packet time, and ``drain(out)``, called once when the capture
    ends to append what the held state still yields.
    """

    def can_handle(self, pkt: DecodedPacket) -> bool:
        """Cheap test (ports, first bytes) whether ``handle`` should see this packet."""
        ...

    def handle(self, pkt: DecodedPacket, out: list[OutputPacket]) -> None:
        """Append zero or more parsed messages to ``out``; count, never raise, on bad input."""
        ...

    def stats(self) -> Mapping[str, int]:
        """``parse.*`` (and protocol-specific) counters."""
        ...


class Processor(Protocol):
    """Filters or labels a batch of output packets."""

    def process(self, batch: list[OutputPacket]) -> list[OutputPacket]:
        """Return the packets to keep (may be ``batch`` itself, modified in place)."""
        ...

    def stats(self) -> Mapping[str, int]:
        """``process.*`` counters; what it drops goes under ``process.drop.<reason>``."""
        ...


class Reporter(Protocol):
    """Delivers output packets somewhere: stdout, a file, Kafka."""

    async def report(self, batch: list[OutputPacket]) -> None:
        """Take a batch; may wait for room (backpressure) but never for longer than its policy."""
        ...

    async def flush(self) -> None:
        """Deliver everything buffered so far."""
        ...

    async def close(self) -> None:
        """Flush, then release connections and files."""
        ...
