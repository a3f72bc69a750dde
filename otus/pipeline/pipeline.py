"""The pipeline: capture -> decode -> parse -> process -> report, one batch at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from otus.core.packet import DecodedPacket, OutputPacket, RawBatch
from otus.core.stats import Stats, add
from otus.decoder import Decoder
from otus.pipeline.latency import Histogram
from otus.plugins.base import Capturer, HasStats, Parser, PluginContext, Processor, Reporter

__all__ = ["STAGES", "Pipeline"]

log = logging.getLogger(__name__)

STAGES = ("decode", "parse", "process", "report")
_HOUSEKEEPING_S = 1.0


class Pipeline:
    """Runs one worker's share of a task until the capture ends, a limit is hit, or stop()."""

    def __init__(
        self,
        ctx: PluginContext,
        capturer: Capturer,
        decoder: Decoder,
        parsers: Sequence[Parser],
        processors: Sequence[Processor],
        reporters: Sequence[Reporter],
        *,
        max_packets: int | None = None,
        duration_s: float | None = None,
        on_stats: Callable[[Pipeline], Awaitable[None] | None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.capturer = capturer
        self.decoder = decoder
        self.parsers = list(parsers)
        self.processors = list(processors)
        self.reporters = list(reporters)
        self.max_packets = max_packets
        self.duration_s = duration_s
        self.on_stats = on_stats
        self.latency = {s: Histogram() for s in STAGES}
        self._stopping = False
        self._packets = 0  # frames taken from the capturer (after the max_packets cut)
        self._parse_in = 0
        self._no_parser = 0
        self._parse_errors = 0
        self._records = 0
        self._reporter_errors = 0
        self._last_ts_us = 0
        self._last_seen = time.monotonic()
        self.started_at = 0.0
        self.finished = False

    def stop(self) -> None:
        """Ask the pipeline to stop after the current batch (safe from signal handlers)."""
        if not self._stopping:
            self._stopping = True
            loop = asyncio.get_running_loop()
            loop.create_task(self.capturer.close())  # noqa: RUF006 - awaited by run()'s group

    @property
    def stopping(self) -> bool:
        """Whether stop() was called or a limit was reached."""
        return self._stopping

    async def run(self) -> Stats:
        """Process batches until the end, then flush and close reporters; return the counters."""
        self.started_at = time.monotonic()
        try:
            await self._run()
        except BaseExceptionGroup as eg:
            # One task group owns the loop and the housekeeping; surface the first real error.
            raise eg.exceptions[0] from None
        return self.stats()

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                keeper = tg.create_task(self._housekeeping())
                try:
                    async for raw in self.capturer.batches():
                        await self._batch(raw)
                        if self._stopping:
                            break
                    await self._drain()
                finally:
                    keeper.cancel()
        finally:
            async with asyncio.TaskGroup() as tg:
                # Reporters may flush for a while (Kafka: up to flush_timeout_ms): go on
                # publishing, so that a worker's parent tells a flush from a hang.
                beat = tg.create_task(self._beat())
                try:
                    await self._close_parts()
                finally:
                    beat.cancel()
            self.finished = True
            await self._publish()

    async def _close_parts(self) -> None:
        """Close the capturer, then every reporter (flushing); a failing one is counted."""
        with contextlib.suppress(Exception):
            await self.capturer.close()
        for r in self.reporters:
            try:
                await r.close()
            except Exception:
                self._reporter_errors += 1

    async def _publish(self) -> None:
        if self.on_stats is not None:
            res = self.on_stats(self)
            if res is not None:
                await res

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            await self._publish()

    async def _batch(self, raw: RawBatch) -> None:
        n = len(raw.frames)
        if not n:
            return
        if self.max_packets is not None and self._packets + n >= self.max_packets:
            keep = self.max_packets - self._packets
            raw = RawBatch(raw.linktype, raw.frames[:keep], raw.ts_us[:keep], raw.ifindex)
            n = keep
            self._stopping = True
        self._packets += n
        self._last_ts_us = raw.ts_us[-1] if n else self._last_ts_us
        self._last_seen = time.monotonic()
        lat = self.latency
        clock = time.perf_counter
        t0 = clock()

        decoded: list[DecodedPacket] = []
        self.decoder.decode_batch(raw, decoded)
        t1 = clock()
        lat["decode"].observe(t1 - t0)

        outs: list[OutputPacket] = []
        self._parse_in += len(decoded)
        parsers = self.parsers
        if len(parsers) == 1:
            p = parsers[0]
            can, handle = p.can_handle, p.handle
            for pkt in decoded:
                try:
                    if can(pkt):
                        handle(pkt, outs)
                    else:
                        self._no_parser += 1
                except Exception:
                    self._parse_errors += 1
        else:
            for pkt in decoded:
                try:
                    for p in parsers:
                        if p.can_handle(pkt):
                            p.handle(pkt, outs)
                            break
                    else:
                        self._no_parser += 1
                except Exception:
                    self._parse_errors += 1
        t2 = clock()
        lat["parse"].observe(t2 - t1)

        for proc in self.processors:
            outs = proc.process(outs)
        t3 = clock()
        lat["process"].observe(t3 - t2)

        if outs:
            await self._report(outs)
            lat["report"].observe(clock() - t3)

    async def _report(self, outs: list[OutputPacket]) -> None:
        """Hand a batch to every reporter; one that raises makes it a drop, not a record."""
        failed = False
        for r in self.reporters:
            try:
                await r.report(outs)
            except Exception as e:
                if not failed and not self._reporter_errors:  # once: the counter tells the rest
                    log.error("reporter %s failed, records dropped: %r", type(r).__name__, e)
                failed = True
        # Counted once, in one place: records + reporter errors = what reached this stage.
        if failed:
            self._reporter_errors += len(outs)
        else:
            self._records += len(outs)
        if all(getattr(r, "reader_gone", False) for r in self.reporters):
            self.stop()  # every output is closed for good (a pipe whose reader exited)

    async def _drain(self) -> None:
        """End of capture: parsers with a ``drain(out)`` (TCP streams) report what they hold."""
        outs: list[OutputPacket] = []
        for p in self.parsers:
            drain = getattr(p, "drain", None)
            if drain is not None:
                try:
                    drain(outs)
                except Exception:
                    self._parse_errors += 1
        for proc in self.processors:
            outs = proc.process(outs)
        if outs:
            await self._report(outs)

    async def _housekeeping(self) -> None:
        """Expire reassembly state on idle links, enforce the duration, publish stats."""
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            now = time.monotonic()
            if self.duration_s is not None and now - self.started_at >= self.duration_s:
                self.stop()
            if self._last_ts_us:
                # Packet time, advanced by how long the link has been quiet: files replay fine.
                idle_us = int((now - self._last_seen) * 1_000_000)
                self.decoder.expire(self._last_ts_us + idle_us)
            for p in self.parsers:
                expire = getattr(p, "expire", None)
                if expire is not None:
                    expire(self._last_ts_us + int((now - self._last_seen) * 1_000_000))
            await self._publish()

    def stats(self) -> Stats:
        """Every stage's counters, merged into one flat dict."""
        out: Stats = {}
        parts: list[Any] = [self.capturer, self.decoder, *self.parsers, *self.processors]
        parts.extend(self.reporters)
        for part in parts:
            if isinstance(part, HasStats):
                add(out, part.stats())
        out["capture.packets"] = self._packets  # after the max_packets cut
        add(
            out,
            {
                "parse.packets": self._parse_in,
                "parse.drop.no_parser": self._no_parser,
                "parse.drop.internal_error": self._parse_errors,
                "report.records": self._records,
                "report.drop.reporter_error": self._reporter_errors,
            },
        )
        return out

    def latency_wire(self) -> Mapping[str, tuple[list[int], float, int]]:
        """Latency histograms in a picklable form."""
        return {k: h.to_wire() for k, h in self.latency.items()}
