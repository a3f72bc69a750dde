"""Where a capture comes from: stdin, FIFOs, pipes, big files, odd paths, and what is not one."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from otus.core.errors import CaptureError
from otus.plugins.base import PluginContext
from otus.plugins.capture.pcapfile import PcapConfig, PcapFileCapturer, read_batches
from tests.infra.cli import ROOT, run_otus
from tools.pcapio import epb, idb, read_pcap, shb

DATA = ROOT / "tests" / "data"
PCAP = DATA / "sip-udp4.pcap"  # 35 frames, 33 SIP messages
_, FRAMES = read_pcap(PCAP)


def pcapng_bytes() -> bytes:
    return b"".join([shb(), idb(), *(epb(f.ts_us, f.data) for f in FRAMES)])


@pytest.mark.parametrize("name", ["pcap", "pcapng"])
def test_stdin(tmp_path: Path, name: str) -> None:
    data = PCAP.read_bytes() if name == "pcap" else pcapng_bytes()
    proc = run_otus("run", "-r", "-", "--format", "json", stdin=data, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 33
    assert "packets=35 " in proc.stderr


def test_empty_stdin_is_one_clear_line() -> None:
    proc = run_otus("run", "-r", "-", stdin=b"", timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "otus: task run: '-' is empty"


def test_stdin_that_is_a_terminal_is_refused() -> None:
    """`otus run -r -` typed without a pipe: one line, not a wait for keystrokes."""
    master, slave = os.openpty()
    try:
        with os.fdopen(os.dup(slave), "rb") as tty:
            proc = run_otus("run", "-r", "-", stdin=tty, timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "otus: task run: -: standard input is a terminal, not a capture file"


def release(fifo: Path) -> None:
    """Let a writer blocked opening ``fifo`` go: open and close its read end."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))


def test_fifo(tmp_path: Path) -> None:
    """`mkfifo f; tcpdump -w f & otus run -r f`: read once, to the writer's end, no hang."""
    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)

    def write() -> None:
        with contextlib.suppress(OSError), fifo.open("wb") as f:
            f.write(PCAP.read_bytes())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        proc = run_otus("run", "-r", str(fifo), "--format", "json", timeout=30)
    finally:
        release(fifo)
        writer.join(5)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 33
    assert "packets=35 " in proc.stderr


def test_process_substitution() -> None:
    """`otus run -r <(zcat f.pcap.gz)`: /dev/fd/N is a pipe whose first bytes must not be lost."""
    r, w = os.pipe()
    try:
        os.write(w, PCAP.read_bytes())  # 15 KB: fits in the pipe
        os.close(w)
        proc = run_otus("run", "-r", f"/dev/fd/{r}", "--format", "json", pass_fds=(r,), timeout=60)
    finally:
        os.close(r)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 33


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_a_pipe_is_read_as_it_is_written(fmt: str) -> None:
    """`tcpdump -w - | otus run -r -`: frames come out while the writer is still writing."""
    data = PCAP.read_bytes() if fmt == "pcap" else pcapng_bytes()
    split = len(data) // 3
    first_batch = threading.Event()
    wrote_all = threading.Event()
    r, w = os.pipe()

    def write() -> None:
        with os.fdopen(w, "wb") as f:
            f.write(data[:split])
            f.flush()
            first_batch.wait(5)
            f.write(data[split:])
        wrote_all.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        it = read_batches(f"/dev/fd/{r}", 256)
        first = next(it)
        early = not wrote_all.is_set()
        first_batch.set()
        frames = first.frames + [f for b in it for f in b.frames]
    finally:
        first_batch.set()
        writer.join(10)
        os.close(r)
    assert early, "the first frames waited for the writer to finish"
    assert 0 < len(first.frames) < len(FRAMES)
    assert frames == [f.data for f in FRAMES]


def test_a_pipe_or_stdin_cannot_be_replayed(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        os.write(w, PCAP.read_bytes())
        with pytest.raises(CaptureError, match=r"is read once \(a pipe or stdin\): loop must be 1"):
            PcapFileCapturer(PcapConfig(path=f"/dev/fd/{r}", loop=2), PluginContext())
    finally:
        os.close(r)
        os.close(w)
    task = tmp_path / "t.yaml"
    task.write_text("id: t\ncapture: {type: pcap, path: '-', loop: 2}\n")
    with PCAP.open("rb") as f:  # stdin is the file itself: its offset is shared, read once too
        proc = run_otus("run", "--task", str(task), stdin=f, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "otus: task t: '-' is read once (a pipe or stdin): loop must be 1"


def test_a_cut_file_is_replayed_on_every_pass(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    path.write_bytes(PCAP.read_bytes()[:-10])

    async def go() -> tuple[int, dict[str, int]]:
        cap = PcapFileCapturer(PcapConfig(path=str(path), loop=3), PluginContext())
        n = 0
        async for b in cap.batches():
            n += len(b)
        return n, cap.stats()

    n, stats = asyncio.run(go())
    assert n == 3 * (len(FRAMES) - 1)
    assert stats["capture.file_truncated"] == 1


def test_big_pcapng_is_read_in_bounded_memory(tmp_path: Path) -> None:
    """A pcapng is streamed like a pcap, not loaded whole (a capture can be many GB)."""
    one = b"".join(epb(f.ts_us, f.data) for f in FRAMES)
    copies = (16 << 20) // len(one)
    path = tmp_path / "big.pcapng"
    with path.open("wb") as f:
        f.write(shb() + idb())
        for _ in range(copies):
            f.write(one)
    n = 0
    tracemalloc.start()
    try:
        for b in read_batches(str(path), 256):
            n += len(b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == copies * len(FRAMES)
    assert peak < 8 << 20, f"peak {peak >> 20} MiB reading a {path.stat().st_size >> 20} MiB file"


@pytest.mark.parametrize("name", ["a b\nü;$(x)'.pcap", "-dash.pcap"])
def test_odd_file_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(PCAP.read_bytes())
    proc = run_otus("run", f"--read={path}", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 33


def cases(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(path, the one line `otus run -r` must say) for inputs that are not a capture."""
    empty = tmp_path / "empty.pcap"
    empty.touch()
    yield str(empty), f"{str(empty)!r} is empty"
    yield str(tmp_path), f"cannot open capture file {str(tmp_path)!r}: Is a directory"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    yield str(text), f"{str(text)!r} is not a pcap or pcapng file (it starts with 68656c6c)"
    gz = tmp_path / "text.gz"
    gz.write_bytes(gzip.compress(b"hello"))
    yield str(gz), f"{str(gz)!r} is not a pcap or pcapng file (it starts with 68656c6c)"
    bad = tmp_path / "bad.pcap.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(60)))
    yield str(bad), f"cannot read capture file {str(bad)!r}"


def test_what_is_not_a_capture_is_one_clear_line(tmp_path: Path) -> None:
    for path, line in cases(tmp_path):
        proc = run_otus("run", f"--read={path}")
        assert proc.returncode == 1, (path, proc.stderr)
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"otus: task run: {line}"), (path, last)


def test_a_nul_in_the_path_is_a_capture_error() -> None:
    with pytest.raises(CaptureError, match="cannot open capture file"):
        list(read_batches("a\0b.pcap"))
