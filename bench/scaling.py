"""Fanout scaling: the offline full-parse case in one process, then in one per core at once."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from bench.corpus import UDP_FILES, load, make_round
from bench.corpus import frames as corpus_frames
from bench.offline import full

ROUNDS = 200  # fresh rounds per process (~2 s of parsing, ~100 MB): no call is seen twice


def _worker(barrier: Barrier, seed: int, results: Queue[tuple[int, float]]) -> None:
    """Parse ROUNDS fresh rounds of the UDP corpus; put (frames, seconds)."""
    corpus = load(UDP_FILES)
    rounds = [make_round(corpus, seed * ROUNDS + i + 1) for i in range(ROUNDS)]
    frames = corpus_frames(corpus) * ROUNDS
    run = full()
    barrier.wait()
    t0 = time.perf_counter()
    for r in rounds:
        run(r)
    results.put((frames, time.perf_counter() - t0))


def _run(n: int) -> float:
    """Aggregate frames/s of ``n`` processes parsing at the same time."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    results: Queue[tuple[int, float]] = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(barrier, i, results)) for i in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return sum(f / dt for f, dt in got)


def main() -> list[tuple[str, float, str]]:
    """One process, then one per core; return (name, rate, unit) rows."""
    cores = len(os.sched_getaffinity(0))
    one = _run(1)
    rows = [("decode + SIP parse + JSON, UDP, 1 process", one, "frames/s")]
    if cores > 1:
        many = _run(cores)
        rows.append((f"the same, {cores} processes at once (x{many / one:.2f})", many, "frames/s"))
    return rows
