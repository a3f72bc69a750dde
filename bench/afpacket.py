"""Live capture on a veth pair: otus against ``tcpdump -w /dev/null``, then with the full pipeline.

Namespace A replays real sipp frames (tests/data: IPv4, IPv6, fragmented INVITEs, 802.1Q and
QinQ; every frame passes the default filter) with tcpreplay, bounded by ``--loop``, into a veth
whose peer sits in namespace B, where the capturer runs with the default SIP filter. The sender
is pinned to CPU 0, the capturer to CPU 1 (the sender's softirq work also lands on CPU 0).

- **capture-only**: otus's AF_PACKET capturer counting frames, and tcpdump, at the same offered
  rates: an ascending ladder of ``--pps`` then ``--topspeed``. The max rate each sustains with
  zero kernel drops, and the CPU each spends per frame.
- **full**: ``otus run -i`` (one worker: capture, decode, SIP parse, JSON record to /dev/null),
  stepping the rate up until the kernel drops; a smaller ring (4 MiB) so a backlog cannot hide
  an overload for long. The last clean rate is the per-worker figure; CPU per frame gives the
  rate one whole core would sustain.
- **drain**: the capturer is stopped (SIGSTOP) while N frames pile up in a 256 MiB ring, then
  resumed; N / time-to-consume-all is its capture-only rate, independent of the sender.

The offered rate is what tcpreplay achieved (``sent / seconds``), which may be below the ask on a
busy machine; the load average is printed with the results. Needs root, tcpreplay, tcpdump and
taskset. ``python bench/afpacket.py [--quick]``; ``main()`` returns the rows ``python -m bench``
prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NS_A = f"otus-bencha-{os.getpid()}"
NS_B = f"otus-benchb-{os.getpid()}"
IF_A, IF_B = "ba0", "bb0"
LIVE_RING_MIB = 32  # the capturer's default ring (256 KiB x 128)
# 4 MiB in 128 KiB blocks for the full pipeline: ~8,000 SIP frames, and at the rates it reaches
# a block fills in about the block timeout, so the ring also holds ~0.6 s: a backlog cannot hide
# an overload for long (256 KiB blocks would leave every 20 ms mostly empty).
FULL_RING = "block_size: 131072, block_count: 32"
DRAIN_RING_MIB = 256
LADDER = (50_000, 100_000, 150_000, 200_000, 250_000, 300_000, 350_000, 400_000, 500_000, 600_000)
FULL_LADDER = (5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000, 50_000, 75_000, 100_000,
               150_000)  # fmt: skip
# Real sipp captures (tests/data), weighted towards plain IPv4; their SIP frames and fragments
# (not ARP or neighbour discovery) all pass the default filter. No QinQ: tcpdump's kernel-side
# "vlan" tests the metadata tag, so its default filter would miss those frames.
CORPUS = {
    "sip-udp4.pcap": 6,
    "sip-udp6.pcap": 2,
    "sip-udp4-frag.pcap": 1,
    "sip-udp6-frag.pcap": 1,
    "sip-udp4-vlan.pcap": 2,
    "encap-dot1q.pcap": 1,
}
_TICK = os.sysconf("SC_CLK_TCK")
_SUMMARY = re.compile(r"^otus: (packets=.*)$", re.MULTILINE)


@dataclass(slots=True)
class Run:
    """One replay into one capturer."""

    tool: str  # "otus", "tcpdump" or "otus full"
    target: str  # "topspeed", the --pps asked for, or "drain"
    offered: int  # frames tcpreplay sent
    seconds: float  # of sending (live) or of consuming the backlog (drain)
    captured: int
    dropped: int  # by the kernel (ring full), plus accepted but unread at shutdown
    cpu_s: float  # user + system time of the capturing process during the run

    @property
    def pps(self) -> float:
        """Frames per second: offered (live) or consumed (drain)."""
        n = self.captured if self.target == "drain" else self.offered
        return n / self.seconds if self.seconds else 0.0

    @property
    def us_per_frame(self) -> float:
        """Capturer CPU per captured frame, microseconds."""
        return self.cpu_s * 1e6 / self.captured if self.captured else 0.0


def _sh(*args: str, timeout: float = 120) -> str:
    return subprocess.run(
        list(args), capture_output=True, text=True, check=True, timeout=timeout
    ).stdout


def _pin(cpu: int) -> list[str]:
    """Sender on CPU 0, capturer on CPU 1 (when there are two): no fighting over one core."""
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) >= 2 else []


def _cpu(pid: int) -> float:
    """User + system seconds of a running process (``ip netns exec`` execs: same pid)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _setup() -> None:
    _sh("ip", "netns", "add", NS_A)
    _sh("ip", "netns", "add", NS_B)
    _sh("ip", "link", "add", IF_A, "netns", NS_A, "type", "veth", "peer", "name", IF_B,
        "netns", NS_B)  # fmt: skip
    for ns, iface in ((NS_A, IF_A), (NS_B, IF_B)):
        _sh("ip", "-n", ns, "link", "set", iface, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")


def _teardown() -> None:
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _write_pcap(path: Path) -> int:
    """The replayed file: CORPUS frames (Ethernet) in a plain pcap; returns the frame count."""
    from otus.core.packet import LINKTYPE_ETHERNET
    from otus.plugins.capture.pcapfile import read_batches

    frames = []
    for name, weight in CORPUS.items():
        batches = list(read_batches(str(REPO / "tests" / "data" / name)))
        assert all(b.linktype == LINKTYPE_ETHERNET for b in batches), name
        frames += [f for b in batches for f in b.frames if _sip_or_fragment(f)] * weight
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for i, f in enumerate(frames):
            out.write(struct.pack("<IIII", i, 0, len(f), len(f)) + f)
    return len(frames)


def _sip_or_fragment(frame: bytes) -> bool:
    """UDP over IPv4, or UDP or a fragment over IPv6, behind any 802.1Q/802.1ad tags."""
    off = 12
    while frame[off : off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    kind, l3 = frame[off : off + 2], off + 2
    if kind == b"\x08\x00":
        return frame[l3 + 9] == 17
    return kind == b"\x86\xdd" and frame[l3 + 6] in (17, 44)


def _replay(pcap: Path, loops: int, pps: int | None) -> tuple[int, float]:
    rate = ["--topspeed"] if pps is None else [f"--pps={pps}"]
    out = _sh("ip", "netns", "exec", NS_A, *_pin(0), "tcpreplay", *rate, "--preload-pcap",
              f"--loop={loops}", "-q", "-i", IF_A, str(pcap))  # fmt: skip
    m = re.search(r"Actual: (\d+) packets .* sent in ([\d.]+) seconds", out)
    if not m:
        raise RuntimeError(f"tcpreplay said: {out}")
    return int(m.group(1)), float(m.group(2))


def _start(argv: list[str], ready: str, *, err: bool) -> subprocess.Popen[str]:
    """Start a capturer in B on CPU 1 and wait for its ready line (stdout, or stderr)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", NS_B, *_pin(1), *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE if err else None, text=True,
    )  # fmt: skip
    stream = proc.stderr if err else proc.stdout
    assert stream is not None
    line = stream.readline()
    if ready not in line:
        proc.kill()
        raise RuntimeError(f"{argv[0]} did not start: {line!r}")
    time.sleep(0.2)
    return proc


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _loops(pps: int | None, seconds: float, frames: int) -> int:
    return max(1, int((pps or 400_000) * seconds) // frames)


def _otus(pcap: Path, frames: int, loops: int, pps: int | None, drain: bool) -> Run:
    ring = DRAIN_RING_MIB if drain else LIVE_RING_MIB
    count = loops * frames if drain else 0
    proc = _start([sys.executable, __file__, "--child", IF_B, str(ring), str(count)], "ready",
                  err=False)  # fmt: skip
    cpu0 = _cpu(proc.pid)  # start-up (imports, ring set-up) is not per-frame work
    if drain:
        os.kill(proc.pid, signal.SIGSTOP)
    sent, secs = _replay(pcap, loops, pps)
    time.sleep(0.3)
    if drain:
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
    else:
        cpu = _cpu(proc.pid) - cpu0
        proc.send_signal(signal.SIGTERM)
    out, _ = _finish(proc)
    st = json.loads(out)
    if drain:
        secs, cpu = st["done"] - t0, st["cpu"] - cpu0
    lost = st["capture.drop.kernel"] + st.get("capture.drop.ring_desync", 0)
    return Run("otus", "drain" if drain else str(pps or "topspeed"), sent, secs,
               st["capture.packets"], lost, cpu)  # fmt: skip


def _tcpdump(pcap: Path, frames: int, loops: int, pps: int | None, drain: bool) -> Run:
    from otus.plugins.capture.afpacket import DEFAULT_FILTER

    ring = (DRAIN_RING_MIB if drain else LIVE_RING_MIB) * 1024
    count = ["-c", str(loops * frames)] if drain else []
    proc = _start(["tcpdump", "-i", IF_B, "-n", "-w", "/dev/null", "-B", str(ring), "-s", "65535",
                   *count, DEFAULT_FILTER], "listening", err=True)  # fmt: skip
    cpu0 = _cpu(proc.pid)
    if drain:
        os.kill(proc.pid, signal.SIGSTOP)
    sent, secs = _replay(pcap, loops, pps)
    time.sleep(2.2)  # tcpdump's 1 s block timeout (two ticks): its last block is handed over
    cpu = _cpu(proc.pid) - cpu0
    if drain:
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(60)
        secs = time.monotonic() - t0
        cpu = 0.0  # gone: its CPU time cannot be read; the live runs show it
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = _finish(proc)
    num = {k: int(v) for v, k in re.findall(r"(\d+) packets? (captured|dropped by kernel)", err)}
    return Run("tcpdump", "drain" if drain else str(pps or "topspeed"), sent, secs,
               num["captured"], num["dropped by kernel"], cpu)  # fmt: skip


def _bound_sockets() -> int:
    """Packet sockets bound in B (``/proc/net/packet`` is per namespace)."""
    rows = _sh("ip", "netns", "exec", NS_B, "cat", "/proc/net/packet").splitlines()[1:]
    return sum(1 for r in rows if r.split()[3:4] == ["0003"])


def _otus_full(pcap: Path, task: Path, loops: int, pps: int) -> Run:
    """``otus run -i`` with one worker, records to /dev/null; counters from its summary line."""
    argv = [sys.executable, "-m", "otus", "run", "-i", IF_B, "--task", str(task)]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", NS_B, *_pin(1), *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while _bound_sockets() < 1:
        if proc.poll() is not None or time.monotonic() > deadline:
            _finish(proc)
            raise RuntimeError("otus run did not start capturing")
        time.sleep(0.05)
    time.sleep(0.3)
    cpu0 = _cpu(proc.pid)
    sent, secs = _replay(pcap, loops, pps)
    time.sleep(0.5)  # the last partly filled block is handed over and parsed
    cpu = _cpu(proc.pid) - cpu0
    proc.send_signal(signal.SIGTERM)
    _, err = _finish(proc)
    found = _SUMMARY.findall(err)
    if not found:
        raise RuntimeError(f"otus run printed no summary: {err[-2000:]}")
    s = {k: int(v) for k, v in (kv.split("=", 1) for kv in found[-1].split())}
    lost = s.get("capture.kernel_drops", 0) + s.get("capture.shutdown", 0)
    lost += s.get("capture.ring_desync", 0)
    return Run("otus full", str(pps), sent, secs, s["packets"], lost, cpu)


async def _child(iface: str, ring_mib: int, count: int) -> None:
    """Capture-only consumer: count frames until SIGTERM (or ``count``), print counters."""
    from otus.plugins.base import PluginContext
    from otus.plugins.capture.afpacket import AfpacketCapturer, AfpacketConfig

    cfg = AfpacketConfig(interfaces=[iface], block_count=ring_mib * 4)  # 256 KiB blocks
    cap = AfpacketCapturer(cfg, PluginContext())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(cap.close()))
    print("ready", flush=True)
    n = 0
    done = 0.0
    async for b in cap.batches():
        n += len(b)
        if count and n >= count:
            done = time.monotonic()
            break
    await cap.close()
    cpu = os.times()
    out = {"done": done, "cpu": cpu.user + cpu.system, **cap.stats()}
    print(json.dumps(out), flush=True)


Row = tuple[str, float, str]


def _clean_max(runs: list[Run]) -> tuple[float, bool]:
    """The highest offered rate before the first run with drops; whether any run dropped."""
    clean = 0.0
    for r in runs:  # ascending asks
        if r.dropped:
            return clean, True
        clean = max(clean, r.pps)
    return clean, False


def _report(runs: list[Run], load: tuple[str, str]) -> list[Row]:
    """Print every run; return the summary rows (label, rate, unit) ``python -m bench`` prints."""
    print(f"# {'tool':9} {'run':>9} {'pps':>10} {'frames':>9} {'captured':>9} {'drops':>7} "
          f"{'cpu us/frame':>12}")  # fmt: skip
    for r in runs:
        cpu = f"{r.us_per_frame:12.2f}" if r.cpu_s else f"{'-':>12}"
        print(f"# {r.tool:9} {r.target:>9} {r.pps:10,.0f} {r.offered:9} {r.captured:9} "
              f"{r.dropped:7} {cpu}")  # fmt: skip
    print("# live: pps = rate tcpreplay achieved; drain: pps = backlog consumed per second")
    print(f"# load average (1, 5, 15 min) before: {load[0]}; after: {load[1]}")
    rows: list[Row] = []
    labels = {
        "otus": "live capture-only, zero-drop max: otus",
        "tcpdump": "live capture-only, zero-drop max: tcpdump -w /dev/null",
        "otus full": "live capture + SIP parse + JSON, zero-drop max, 1 worker",
    }
    for tool, label in labels.items():
        live = [r for r in runs if r.tool == tool and r.target != "drain"]
        if not live:
            continue
        clean, dropped = _clean_max(live)
        if not dropped:
            print(f"# {tool}: no drops at any rate tcpreplay reached: the sender was the limit")
        rows.append((label, clean, "pps"))
        timed = [r for r in live if r.cpu_s]
        if timed:
            best = min(r.us_per_frame for r in timed)
            what = label.split(",")[0]
            rows.append((f"{what}, frames per CPU second: {tool}", 1e6 / best, "frames/s"))
    drains = [r for r in runs if r.target == "drain"]
    rows.extend((f"capture-only, drain a 256 MiB backlog: {r.tool}", r.pps, "pps") for r in drains)
    return rows


def _capture_ladder(pcap: Path, frames: int, seconds: float, quick: bool) -> list[Run]:
    runs: list[Run] = []
    rates: list[int | None] = [*(() if quick else LADDER), None]
    for pps in rates:
        loops = _loops(pps, seconds, frames)
        pair = [_otus(pcap, frames, loops, pps, False), _tcpdump(pcap, frames, loops, pps, False)]
        runs += pair
        if pps and all(r.dropped or r.pps < 0.85 * pps for r in pair):
            break  # both drop, or the sender cannot go faster: go to topspeed
    return runs


def _full_ladder(pcap: Path, frames: int, seconds: float, tmp: Path, quick: bool) -> list[Run]:
    task = tmp / "full.yaml"
    task.write_text(
        "id: bench-live\n"
        f"capture: {{type: afpacket, interfaces: [{IF_B}], {FULL_RING}}}\n"
        "reporters: [{type: console, config: {format: json}}]\n"
    )
    runs: list[Run] = []
    for pps in FULL_LADDER[::2] if quick else FULL_LADDER:
        r = _otus_full(pcap, task, _loops(pps, seconds, frames), pps)
        runs.append(r)
        if r.dropped or r.pps < 0.85 * pps:
            break
    return runs


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the comparison: print every run, return the summary rows (none when it cannot run)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each live run")
    ap.add_argument("--drain-frames", type=int, default=150_000, help="backlog of a drain run")
    ap.add_argument("--quick", action="store_true", help="topspeed, a short full ladder, drain")
    ap.add_argument("--cases", default="capture,full,drain", help="comma-separated subset")
    args = ap.parse_args(argv or [])
    cases = set(args.cases.split(","))
    missing = [t for t in ("tcpreplay", "tcpdump", "ip", "taskset") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(f"# live bench skipped: needs root and {', '.join(missing) or 'nothing else'}")
        return []
    runs: list[Run] = []
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    _setup()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pcap = Path(tmp) / "sip.pcap"
            frames = _write_pcap(pcap)
            if "capture" in cases:
                runs += _capture_ladder(pcap, frames, args.seconds, args.quick)
            if "full" in cases:
                runs += _full_ladder(pcap, frames, args.seconds, Path(tmp), args.quick)
            if "drain" in cases:
                loops = max(1, args.drain_frames // frames)
                runs.append(_otus(pcap, frames, loops, None, True))
                runs.append(_tcpdump(pcap, frames, loops, None, True))
    finally:
        _teardown()
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return _report(runs, (load0, load1))


def _child_main(iface: str, ring: str, count: str) -> None:
    """The capturing process ``_otus`` starts inside namespace B."""
    try:
        import uvloop

        uvloop.run(_child(iface, int(ring), int(count)))
    except ImportError:
        asyncio.run(_child(iface, int(ring), int(count)))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if sys.argv[1:2] == ["--child"]:
        _child_main(*sys.argv[2:5])
    else:
        for label, rate, unit in main(sys.argv[1:]):
            print(f"{label:<60} {rate:>12,.0f} {unit}")
