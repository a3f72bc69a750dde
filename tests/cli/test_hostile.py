"""`otus run -r` on hostile input: exits 0, no traceback, counts every frame, bounded memory."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.infra.hostile import write_fragment_flood, write_hostile
from tests.infra.peak_rss import run_measured

ROOT = Path(__file__).resolve().parents[2]
MEMORY_BOUND_MIB = 256  # peak RSS of `otus run -r` on these files; the README states the bound
FLOOD = 100_000


def run_otus(path: Path, tmp: Path, timeout: float = 300.0) -> tuple[int, str, str, int, float]:
    """(exit code, stdout, stderr, peak RSS in MiB, seconds) of ``otus run -r PATH``."""
    out, err = tmp / "stdout", tmp / "stderr"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.monotonic()
    args = [sys.executable, "-m", "otus", "run", "-r", str(path), "--format", "json"]
    with out.open("wb") as o, err.open("wb") as e:
        try:
            rc, rss = run_measured(args, stdout=o, stderr=e, env=env, cwd=ROOT, timeout=timeout)
        except TimeoutError:
            pytest.fail(f"otus run took more than {timeout} s on {path.name}")
    return (
        rc,
        out.read_text(errors="replace"),
        err.read_text(errors="replace"),
        rss,
        time.monotonic() - start,
    )


def summary(stderr: str) -> dict[str, int]:
    """The counters of the one-line summary (``packets=N decoded=N ... dropped=N ...``)."""
    lines = [ln for ln in stderr.splitlines() if "packets=" in ln]
    assert lines, f"no summary line on stderr:\n{stderr[-2000:]}"
    return {k: int(v) for k, v in re.findall(r"([\w.\-]+)=(\d+)", lines[-1])}


def test_hostile_capture(tmp_path: Path) -> None:
    """Every hostile frame is read and counted; the valid controls are still reported."""
    path = tmp_path / "hostile.pcap"
    s = write_hostile(path)
    rc, out, err, rss, _ = run_otus(path, tmp_path)
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    counts = summary(err)
    assert counts["packets"] == s.frames
    assert counts["dropped"] > 0
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    call_ids = [r["sip"]["call_id"] for r in records]
    for cid in set(s.control_call_ids):
        assert call_ids.count(cid) >= s.control_call_ids.count(cid), cid
    assert rss < MEMORY_BOUND_MIB, f"peak RSS {rss} MiB"


def test_fragment_flood(tmp_path: Path) -> None:
    """100k never-completed fragments: all counted, none reported, memory stays bounded."""
    path = tmp_path / "flood.pcap"
    assert write_fragment_flood(path, FLOOD) == FLOOD
    rc, out, err, rss, _ = run_otus(path, tmp_path)
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    counts = summary(err)
    assert counts["packets"] == FLOOD
    assert counts["dropped"] > 0
    assert not out.strip()
    assert rss < MEMORY_BOUND_MIB, f"peak RSS {rss} MiB"
