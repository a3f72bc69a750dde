"""`otus run -i IFACE` live, against tcpdump + tshark on the same interface, and under overload.

Every test builds its own namespaces (root only) and runs ``python -m otus`` as a user would:

- sipp calls (UDP, IPv4 then IPv6, INVITEs large enough to fragment at MTU 1500) cross a veth
  link while ``otus run -i`` and ``tcpdump -w`` capture the same interface; otus's records equal
  what tshark dissects from tcpdump's file, message by message, with 1 and 2 fanout workers, on
  a plain link and on an 802.1Q link (VLAN ids included). Workers write interleaved, and each
  socket stamps a frame with its own clock read, so records are compared as multisets without
  the timestamp, then timestamps pairwise (the same frame, a few microseconds apart).
- A bounded raw-frame flood of real SIP frames into a tiny ring: every frame offered is either a
  record or a kernel/shutdown drop in the summary; SIGTERM during the flood stops otus (summary
  printed, exit 0) within 2 s, with 1 and 2 workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from otus.plugins.capture.pcapfile import read_batches
from tests.infra.captures import tcpdump
from tests.infra.netns import Netns, SipTopology, netns, veth
from tests.infra.sipp import run_calls
from tests.infra.skips import requires_root, requires_tool
from tests.infra.tshark import normalize_otus, sip_messages, tshark_json

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"

pytestmark = [requires_root, pytest.mark.root, pytest.mark.slow]

_START_S = 60.0  # spawning workers on a loaded 2-core machine takes seconds; bounded anyway
_SUMMARY = re.compile(r"^otus: (packets=.*)$", re.MULTILINE)
_SAME_FRAME_US = 100_000  # two sockets' clock reads for one frame, in one softirq pass


# -- running otus -------------------------------------------------------------------------


def _bound_sockets(ns: Netns, iface: str) -> int:
    """AF_PACKET sockets in ``ns`` bound to ``iface`` (``/proc/net/packet`` is per namespace)."""
    index = json.loads(ns.ip("-j", "link", "show", iface))[0]["ifindex"]
    rows = [line.split() for line in ns.run("cat", "/proc/net/packet").splitlines()[1:]]
    return sum(1 for r in rows if len(r) > 4 and r[3] == "0003" and int(r[4]) == index)


def parse_summary(stderr: str) -> dict[str, int]:
    """The summary line's ``name=value`` pairs (drop reasons appear as ``<stage>.<reason>``)."""
    found = _SUMMARY.findall(stderr)
    assert found, f"no summary line on stderr:\n{stderr[-3000:]}"
    return {k: int(v) for k, v in (kv.split("=", 1) for kv in found[-1].split())}


@dataclass(slots=True)
class Otus:
    """One ``otus run -i`` process inside a namespace, its output in files."""

    ns: Netns
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    rc: int | None = None
    stop_s: float = 0.0
    files: list[IO[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        """SIGTERM, wait (bounded), remember the exit code and how long stopping took."""
        t0 = time.monotonic()
        self.rc = self.ns.stop(self.proc, signal.SIGTERM, wait=15)
        self.stop_s = time.monotonic() - t0
        for f in self.files:
            f.close()

    @property
    def stderr(self) -> str:
        """Everything otus wrote on stderr."""
        return self.err.read_text(errors="replace")

    def summary(self) -> dict[str, int]:
        """The counters of the summary line."""
        return parse_summary(self.stderr)

    def records(self) -> list[dict[str, Any]]:
        """Every JSON record on stdout."""
        lines = self.out.read_bytes().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@contextlib.contextmanager
def otus_live(
    ns: Netns, iface: str, tmp: Path, *, workers: int = 1, task: Path | None = None
) -> Iterator[Otus]:
    """Start ``otus run -i IFACE --format json`` in ``ns``; yield once every worker is bound."""
    before = _bound_sockets(ns, iface)
    args = [sys.executable, "-m", "otus", "run", "-i", iface, "--format", "json"]
    args += ["--workers", str(workers)]
    if task is not None:
        args += ["--task", str(task)]
    # A regular file, not a pipe: workers share it and each write(2) of a batch stays whole.
    out, err = tmp / "otus.jsonl", tmp / "otus.err"
    fo, fe = out.open("wb"), err.open("wb")
    run = Otus(ns, ns.popen(args, stdout=fo, stderr=fe, cwd=ROOT), out, err, files=[fo, fe])
    try:
        deadline = time.monotonic() + _START_S
        while _bound_sockets(ns, iface) < before + workers:
            if run.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"otus did not start capturing:\n{run.stderr[-3000:]}")
            time.sleep(0.05)
        time.sleep(0.1)  # the bound socket swaps its reject-all filter for the real one
        yield run
    finally:
        if run.rc is None:
            run.stop()


# -- live vs tshark -----------------------------------------------------------------------


def _key(msg: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in msg.items() if k != "ts_us"}, sort_keys=True)


def assert_same_messages(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal as multisets (every message exactly once), then timestamps of the same frames."""
    g, w = Counter(map(_key, got)), Counter(map(_key, want))
    missing, extra = list((w - g).elements()), list((g - w).elements())
    assert not missing and not extra, (
        f"otus: {len(got)} messages, tshark: {len(want)}\n"
        f"missing from otus ({len(missing)}): {missing[:3]}\n"
        f"extra in otus, e.g. duplicates ({len(extra)}): {extra[:3]}"
    )
    pairs = zip(
        sorted(got, key=lambda m: (_key(m), m["ts_us"])),
        sorted(want, key=lambda m: (_key(m), m["ts_us"])),
        strict=True,
    )
    for a, b in pairs:
        assert abs(a["ts_us"] - b["ts_us"]) < _SAME_FRAME_US, (a, b)


def _has_fragments(pcap: Path) -> tuple[bool, bool]:
    """Whether the capture holds IPv4 and IPv6 fragments (the INVITEs did fragment)."""
    v4 = tshark_json(pcap, display_filter="ip.flags.mf == 1 || ip.frag_offset > 0")
    v6 = tshark_json(pcap, display_filter="ipv6.fragment")
    return bool(v4), bool(v6)


_FRAG_SDP = 80  # a ~5 KB INVITE: four fragments at MTU 1500


@requires_tool("sipp", "tcpdump", "tshark")
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("vlan", [None, 100], ids=["plain", "vlan100"])
def test_live_equals_tshark(
    vlan: int | None, workers: int, sip_topology_factory: Any, tmp_path: Path
) -> None:
    """UDP over IPv4 and IPv6, fragmented INVITEs, optional 802.1Q: the same messages, once."""
    topo: SipTopology = sip_topology_factory("live", mtu=1500, vlan=vlan, ipv6=True)
    pcap = tmp_path / "tcpdump.pcap"
    ns, iface = topo.capture_ns, topo.capture_if
    with tcpdump(ns, iface, pcap), otus_live(ns, iface, tmp_path, workers=workers) as run:
        for ipv6 in (False, True):
            calls = run_calls(
                topo, tmp_path / f"sipp{int(ipv6)}", calls=2, ipv6=ipv6, sdp_lines=_FRAG_SDP
            )
            assert calls.ok, calls.logs()
        time.sleep(0.3)  # the last replies reach the capture point (tcpdump waits as long)
        run.stop()
    assert run.rc == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert _has_fragments(pcap) == (True, True), "the INVITEs did not fragment"

    want = sip_messages(pcap)
    records = run.records()
    assert len(want) >= 2 * 2 * 11  # two calls per family, eleven messages each (+ retransmits)
    assert_same_messages([normalize_otus(r) for r in records], want)
    if vlan is not None:
        assert {json.dumps(r["encap"]) for r in records} == {json.dumps({"vlans": [vlan]})}

    s = run.summary()
    assert s["reported"] == len(records)
    assert s["dropped"] == 0, s
    assert "capture.kernel_drops" in s, "kernel drops missing from the summary of a live run"
    assert s["capture.kernel_drops"] == 0
    assert s["capture.kernel_packets"] == s["packets"]


# -- overload -----------------------------------------------------------------------------

# Sends prebuilt frames round-robin from a raw socket, bounded in count and time; prints how
# many the kernel accepted (ENOBUFS from a full qdisc is retried later, never counted).
_FLOOD = """
import socket, sys, time
iface, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
frames = [bytes.fromhex(h) for h in open(sys.argv[4]).read().split()]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind((iface, 0))
send, n, sent = s.send, len(frames), 0
deadline = time.monotonic() + seconds
while sent < count and time.monotonic() < deadline:
    for _ in range(256):
        try:
            send(frames[sent % n])
        except OSError:
            time.sleep(0.0005)
            continue
        sent += 1
print(sent, flush=True)
"""

# A 32 KiB ring per worker: it overflows within milliseconds of a flood. lb spreads one flow
# over both workers, so each of them is overloaded (hash would send it all to one).
_SMALL_RING = (
    "id: overload\n"
    "capture: {type: afpacket, interfaces: [xb0], fanout_mode: lb, snap_len: 4096,\n"
    "          block_size: 8192, block_count: 4}\n"
)


def _sip_frames() -> list[bytes]:
    """Real sipp frames (IPv4/UDP, every one a SIP message) from a committed capture."""
    frames = [f for b in read_batches(str(DATA / "sip-udp4.pcap"), 64) for f in b.frames]
    return [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 17]


@contextlib.contextmanager
def _flood_link() -> Iterator[tuple[Netns, Netns]]:
    """Sender namespace --veth xa0/xb0-- capture namespace, IPv6 off: no stray frames."""
    with netns("floada", ipv6=False) as a, netns("floodb", ipv6=False) as b:
        veth(a, "xa0", b, "xb0")
        yield a, b


def _flood(a: Netns, tmp: Path, count: int, seconds: float) -> subprocess.Popen[bytes]:
    """Start the bounded flood of real SIP frames out of ``xa0``; its stdout is the count sent."""
    frames = tmp / "frames.hex"
    frames.write_text(" ".join(f.hex() for f in _sip_frames()))
    args = [sys.executable, "-c", _FLOOD, "xa0", str(count), str(seconds), str(frames)]
    return a.popen(args, stdout=subprocess.PIPE)


def _tx_dropped(a: Netns) -> int:
    """Frames the sending veth dropped (its peer's backlog was full): never seen by a socket."""
    return int(json.loads(a.ip("-j", "-s", "link", "show", "xa0"))[0]["stats64"]["tx"]["dropped"])


@pytest.mark.parametrize("workers", [1, 2])
def test_overload_every_frame_is_a_record_or_a_counted_drop(workers: int, tmp_path: Path) -> None:
    """A flood into a tiny ring: kernel drops reported, and they account for every frame."""
    task = tmp_path / "task.yaml"
    task.write_text(_SMALL_RING)
    with _flood_link() as (a, b), otus_live(b, "xb0", tmp_path, workers=workers, task=task) as run:
        tx0 = _tx_dropped(a)
        flood = _flood(a, tmp_path, count=200_000, seconds=20)
        out, _ = flood.communicate(timeout=60)
        offered = int(out) - (_tx_dropped(a) - tx0)
        time.sleep(1.0)  # otus works through what the ring still holds
        run.stop()
    assert run.rc == 0, run.stderr[-3000:]
    s = run.summary()
    records = run.records()
    assert s["capture.kernel_drops"] > 0, "the flood did not overflow the ring"
    assert s["capture.kernel_packets"] == offered
    # Nothing lost silently: each frame is a record, or dropped by the kernel (ring full) or
    # at shutdown (accepted, never read).
    why = f"summary {s}, stderr:\n{run.stderr[-2000:]}"
    # A ring block the kernel passed without handing it over is skipped and counted (rare).
    lost = s["capture.kernel_drops"] + s.get("capture.shutdown", 0)
    lost += s.get("capture.ring_desync", 0)
    assert len(records) + lost == offered, why
    assert s["packets"] == s["reported"] == len(records), why
    assert s["dropped"] == lost, why


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_overload_stops_within_two_seconds(workers: int, tmp_path: Path) -> None:
    """Overloaded, otus keeps reporting and still stops on SIGTERM in time, with its summary."""
    task = tmp_path / "task.yaml"
    task.write_text(_SMALL_RING)
    with _flood_link() as (a, b), otus_live(b, "xb0", tmp_path, workers=workers, task=task) as run:
        flood = _flood(a, tmp_path, count=5_000_000, seconds=15)
        try:
            time.sleep(1.5)
            size = run.out.stat().st_size
            time.sleep(0.5)
            growing = run.out.stat().st_size > size  # still writing records while overloaded
            run.stop()
        finally:
            a.stop(flood)
    assert growing
    assert run.rc == 0, run.stderr[-3000:]
    assert run.stop_s < 2.0, f"otus took {run.stop_s:.2f} s to stop"
    s = run.summary()
    assert s["capture.kernel_drops"] > 0
    assert s["capture.kernel_packets"] == (
        s["packets"]
        + s["capture.kernel_drops"]
        + s.get("capture.shutdown", 0)
        + s.get("capture.ring_desync", 0)
    )
    assert s["reported"] == len(run.records())


def test_two_workers_on_a_slow_pipe_never_tear_records(tmp_path: Path) -> None:
    """Fanout workers share stdout: piped into a slow reader, every line is whole JSON."""
    args = [sys.executable, "-m", "otus", "run", "-i", "xb0", "--format", "json"]
    args += ["--workers", "2"]
    out, err = tmp_path / "out.jsonl", tmp_path / "err"
    # Small reads with pauses keep the pipe full, so writers block mid-batch.
    slow = "import sys,time\nwhile c := sys.stdin.buffer.read1(1000):\n"
    slow += "    sys.stdout.buffer.write(c); time.sleep(0.001)\n"
    with _flood_link() as (a, b), out.open("wb") as fo, err.open("wb") as fe:
        before = _bound_sockets(b, "xb0")
        r, w = os.pipe()
        proc = b.popen(args, stdout=w, stderr=fe, cwd=ROOT)
        reader = subprocess.Popen([sys.executable, "-c", slow], stdin=r, stdout=fo)
        os.close(r)
        os.close(w)
        try:
            deadline = time.monotonic() + _START_S
            while _bound_sockets(b, "xb0") < before + 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.1)
            flood = _flood(a, tmp_path, count=20_000, seconds=10)
            flood.communicate(timeout=60)
            time.sleep(1.0)
        finally:
            rc = b.stop(proc, signal.SIGTERM, wait=30)
            reader.wait(timeout=60)
    errtext = err.read_text(errors="replace")
    assert rc == 0, errtext[-3000:]
    lines = out.read_bytes().splitlines()
    assert len(lines) > 1000, "too few records to have exercised both workers"
    bad = [(i, line[:100]) for i, line in enumerate(lines) if not _is_json(line)]
    assert not bad, f"{len(bad)} torn lines of {len(lines)}\n{errtext[-1500:]}"
    assert len(lines) == parse_summary(errtext)["reported"]


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_dead_worker_stops_the_run_and_says_which(tmp_path: Path) -> None:
    """One of two workers killed: its share is lost, so otus stops the other and exits 1."""
    with _flood_link() as (_a, b), otus_live(b, "xb0", tmp_path, workers=2) as run:
        workers = [p for p in _children(run.proc.pid) if "spawn_main" in _cmdline(p)]
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)
        try:
            run.proc.wait(timeout=15)
        finally:
            run.stop()
    assert run.rc == 1, run.stderr[-3000:]
    err = run.stderr
    assert "killed by signal SIGKILL; stopping" in err, err[-3000:]
    assert "task failed: worker" in err
    run.summary()  # and the counters of what was captured


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
