"""The decoder: raw frames in, DecodedPackets with the innermost addresses out, drops counted.

Two paths. The fast path (:mod:`otus.decoder.fast`) inlines the shapes nearly all SIP traffic
has; the general path (:mod:`otus.decoder.walk`) decodes everything else from the start: every
link type, VLAN stack, tunnel nesting and IPv6 extension chain, and hands IP fragments to the
reassembler (:mod:`otus.decoder.reassembly`).

Counting: every frame ends in exactly one of ``decode.packets``, ``decode.drop.<reason>`` or
``reassembly.fragments``; see :mod:`otus.decoder.reassembly` for what fragments become. Every
packet emitted is one of ``decode.packets`` or ``reassembly.datagrams``.

Packets with the same VLAN tags or tunnel may share one :class:`Encap`: treat it as read-only.
"""

from __future__ import annotations

from otus.core.packet import DecodedPacket, RawBatch, RawPacket
from otus.decoder.fast import FastPath
from otus.decoder.options import DecoderOptions
from otus.decoder.walk import Walker

__all__ = ["Decoder"]


class Decoder:
    """Decodes raw frames to DecodedPackets; counts, never raises, on anything else."""

    __slots__ = ("_fast", "_frames", "_packets", "_walker", "options")

    def __init__(self, options: DecoderOptions | None = None) -> None:
        self.options = options if options is not None else DecoderOptions()
        self._walker = Walker(self.options)
        self._fast = FastPath(self._walker)
        self._frames = 0
        self._packets = 0  # fast-path packets; the walker counts its own

    def decode_batch(self, batch: RawBatch, out: list[DecodedPacket]) -> None:
        """Append a DecodedPacket per decodable frame of ``batch`` to ``out``; never raises."""
        frames = batch.frames
        tss = batch.ts_us
        self._frames += len(frames)
        self._packets += self._fast.run(frames, tss, batch.linktype, out)
        if tss:
            # Packet time moves on even without fragments: stale datagrams expire with it.
            self._walker.reasm.expire_oldest(tss[-1])

    def decode(self, pkt: RawPacket) -> DecodedPacket | None:
        """Decode one frame (counted like a batch of one); None when dropped or held."""
        out: list[DecodedPacket] = []
        self.decode_batch(RawBatch(pkt.linktype, [pkt.data], [pkt.ts_us], pkt.ifindex), out)
        return out[0] if out else None

    def expire(self, now_us: int) -> None:
        """Drop reassembly state older than the timeout (the pipeline calls this when idle)."""
        self._walker.reasm.expire(now_us)

    def stats(self) -> dict[str, int]:
        """``decode.*`` and ``reassembly.*`` counters (see the module docstring for the sums)."""
        w = self._walker
        s = {"decode.frames": self._frames, "decode.packets": self._packets + w.packets}
        for reason, n in w.drops.items():
            s["decode.drop." + reason] = n
        s.update(w.reasm.stats())
        return s
