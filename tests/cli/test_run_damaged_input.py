"""`otus run` on damaged or lying input: what the user sees (exit code, records, summary)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.infra.daemon import wait_for
from tools.pcapio import epb, idb, read_pcap, shb

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sipp-uac-uas.pcap"  # 14 frames, 12 SIP messages


@dataclass
class Run:
    rc: int
    records: list[dict[str, object]]
    counters: dict[str, int]
    stderr: str


def otus(*argv: str, stdout: str | None = None) -> Run:
    """Run ``python -m otus ARGV``; stdout to a file when given (``/dev/full``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "otus", *argv]
    if stdout is None:
        p = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, timeout=120, check=False)
        out = p.stdout
    else:
        with open(stdout, "wb") as f:
            p = subprocess.run(
                cmd, stdout=f, stderr=subprocess.PIPE, env=env, cwd=ROOT, timeout=120, check=False
            )
        out = b""
    err = p.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "packets=" in ln]
    counters = {k: int(v) for k, v in re.findall(r"([\w.\-]+)=(\d+)", lines[-1])} if lines else {}
    records = [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    return Run(p.returncode, records, counters, err)


def example_blocks(bad_clock_on: int | None = None) -> list[bytes]:
    """The example as pcapng blocks; frame ``bad_clock_on`` on an interface with if_tsresol=0."""
    linktype, frames = read_pcap(EXAMPLE)
    blocks = [shb(), idb(linktype), idb(linktype, tsresol=0)]
    blocks += [epb(f.ts_us, f.data, int(i == bad_clock_on)) for i, f in enumerate(frames)]
    return blocks


def run_file(path: Path) -> Run:
    return otus("run", "-r", str(path), "--format", "json")


def test_the_pcapng_example_reads_like_the_pcap(tmp_path: Path) -> None:
    path = tmp_path / "ok.pcapng"
    path.write_bytes(b"".join(example_blocks()))
    run = run_file(path)
    assert run.rc == 0, run.stderr
    assert (len(run.records), run.counters["reported"], run.counters["packets"]) == (12, 12, 14)


@pytest.mark.parametrize("blen", [12, 16])
@pytest.mark.parametrize("where", [8, -1], ids=["after-5-packets", "last"])
def test_short_enhanced_packet_block_is_a_clear_error(
    tmp_path: Path, blen: int, where: int
) -> None:
    blocks = example_blocks()
    short = struct.pack("<II", 6, blen).ljust(blen - 4, b"\0") + struct.pack("<I", blen)
    if where < 0:
        blocks.append(short)
        where = len(blocks) - 1
    else:
        blocks.insert(where, short)
    path = tmp_path / "short.pcapng"
    path.write_bytes(b"".join(blocks))
    run = run_file(path)
    assert run.rc == 1
    at = sum(map(len, blocks[:where]))
    assert f"is corrupt at byte {at}: block of type 0x6 has length {blen}" in run.stderr
    assert "unpack_from" not in run.stderr
    assert run.counters["packets"] == where - 3  # the packets before the break are processed
    assert len(run.records) == run.counters["reported"] > 0


def test_truncated_pcapng_keeps_its_complete_packets(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcapng"
    path.write_bytes(b"".join(example_blocks())[:-9])
    run = run_file(path)
    assert run.rc == 0, run.stderr
    assert run.counters["packets"] == 13
    assert run.counters["capture.file_truncated"] == 1
    assert len(run.records) == run.counters["reported"] == 11


def test_one_absurd_timestamp_costs_nothing_but_a_counter(tmp_path: Path) -> None:
    """if_tsresol=0 on microsecond ticks: year ~50 million; the record is kept, clamped."""
    path = tmp_path / "clock.pcapng"
    path.write_bytes(b"".join(example_blocks(bad_clock_on=2)))
    run = run_file(path)
    assert run.rc == 0, run.stderr
    assert len(run.records) == run.counters["reported"] == 12
    assert run.counters["capture.bad_timestamp"] == 1
    assert "report.reporter_error" not in run.counters
    assert sum(r["ts"] == "9999-12-31T23:59:59.999999Z" for r in run.records) == 1


def test_a_full_stdout_is_said_once(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    run = otus("run", "-r", str(EXAMPLE), "--format", "json", stdout="/dev/full")
    assert run.rc == 0
    assert run.counters["report.console_failed"] == 12
    said = [ln for ln in run.stderr.splitlines() if "cannot write records" in ln]
    assert said == ["console: cannot write records: [Errno 28] No space left on device"]


def test_a_filter_the_kernel_refuses_is_a_usage_error() -> None:
    run = otus("run", "-i", "lo", "-f", "ip6 protochain 6", "--duration", "0.1")
    assert run.rc == 2
    assert run.stderr == (
        "otus: task run: invalid BPF filter 'ip6 protochain 6': "
        "the kernel refuses the compiled program (Invalid argument)\n"
    )


@pytest.mark.slow
def test_a_daemon_task_on_a_short_block_fails_with_the_reason(
    daemon_factory: Any, tmp_path: Path
) -> None:
    """``otus task create``: the reader's one-line reason, not a worker's traceback."""
    blocks = example_blocks()
    blocks.append(bytes.fromhex("06000000 0c000000 0c000000"))  # once a struct.error traceback
    path = tmp_path / "short.pcapng"
    path.write_bytes(b"".join(blocks))
    task = {
        "id": "short",
        "capture": {"type": "pcap", "path": str(path)},
        "reporters": [{"type": "console", "config": {"path": str(tmp_path / "out.jsonl")}}],
    }
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(task))
    d = daemon_factory()
    d.start()
    r = d.cli("task", "create", "-f", str(task_file))
    if r.returncode == 0:  # the worker failed after create answered: the reason is in status
        info = wait_for(
            lambda: (s := d.rpc("task.status", ["short"]))["state"] == "failed" and s,
            what="the task to fail",
        )
        said = str(info["reason"])
    else:
        assert r.returncode == 1, r.stderr
        said = r.stderr
    at = sum(map(len, blocks[:-1]))
    assert f"is corrupt at byte {at}: block of type 0x6 has length 12" in said, said
    assert "Traceback" not in said and "unpack_from" not in said, said
    assert len(said.strip().splitlines()) == 1, said
