"""Offline hot path: decode only, decode + full SIP parse (+ JSON record), UDP and TCP.

A pass keeps one decoder and one parser, as a worker does: their caches and flow tables carry
over from round to round, and each round's calls are new (see :func:`bench.corpus.make_round`).
The TCP case is measured as the SIP-over-TCP issue defines it (decode + reassembly + SIP parse)
and again with the JSON record, as the UDP case is.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.corpus import TCP_FILES, UDP_FILES, Unit, load, make_round
from bench.corpus import frames as corpus_frames
from otus.core.packet import DecodedPacket, OutputPacket, RawBatch
from otus.core.record import dumps, to_record
from otus.decoder import Decoder
from otus.plugins.base import PluginContext
from otus.plugins.parser.sip import SipConfig, SipParser

MIN_FRAMES = 300_000
ROUNDS = 3


Run = Callable[[list[RawBatch]], int]


def _best(make: Callable[[], Run], corpus: list[Unit]) -> tuple[float, int]:
    """Best of ROUNDS (frames per second, messages out); each pass sees fresh calls."""
    reps = max(1, MIN_FRAMES // corpus_frames(corpus))
    best = 0.0
    out = 0
    for k in range(ROUNDS):
        work = [make_round(corpus, k * reps + i + 1) for i in range(reps)]
        frames = sum(len(b) for r in work for b in r)
        run = make()  # one decoder and parser per pass, as a worker keeps them
        t0 = time.perf_counter()
        out = 0
        for r in work:
            out += run(r)
        dt = time.perf_counter() - t0
        best = max(best, frames / dt)
    return best, out


def decode_only() -> Run:
    """Decode every frame; return DecodedPackets produced."""
    dec = Decoder()

    def run(corpus: list[RawBatch]) -> int:
        n = 0
        for b in corpus:
            out: list[DecodedPacket] = []
            dec.decode_batch(b, out)
            n += len(out)
        return n

    return run


def _parsing(record: bool) -> Run:
    """Decode and parse SIP (over TCP: reassemble first), with or without the JSON record."""
    dec = Decoder()
    sip = SipParser(SipConfig(), PluginContext())
    can, handle = sip.can_handle, sip.handle

    def run(corpus: list[RawBatch]) -> int:
        n = 0
        for b in corpus:
            decoded: list[DecodedPacket] = []
            dec.decode_batch(b, decoded)
            outs: list[OutputPacket] = []
            for pkt in decoded:
                if can(pkt):
                    handle(pkt, outs)
            if record:
                data = [dumps(to_record(o, "bench", "bench")) for o in outs]
                n += len(data)
            else:
                n += len(outs)
        return n

    return run


def parse_only() -> Run:
    """Decode and parse SIP; return messages produced."""
    return _parsing(record=False)


def full() -> Run:
    """Decode, parse SIP, build and serialize the record; return records produced."""
    return _parsing(record=True)


def main() -> list[tuple[str, float, str]]:
    """Run the offline cases; return (name, rate, unit) rows."""
    udp = load(UDP_FILES)
    rows = []
    rate, _ = _best(decode_only, udp)
    rows.append(("decode only, varied SIP over UDP", rate, "frames/s"))
    rate, _ = _best(full, udp)
    rows.append(("decode + SIP parse + JSON record, varied UDP", rate, "frames/s"))
    tcp = load(TCP_FILES)
    rate, _ = _best(parse_only, tcp)
    rows.append(("decode + TCP reassembly + SIP parse, MTU 576", rate, "frames/s"))
    rate, _ = _best(full, tcp)
    rows.append(("decode + TCP reassembly + SIP parse + JSON record, MTU 576", rate, "frames/s"))
    return rows
