"""Live capture on a veth pair: otus's AF_PACKET capturer against ``tcpdump -w /dev/null``.

Namespace A replays a pcap of SIP frames with tcpreplay (bounded ``--loop``) into a veth whose
peer sits in namespace B, where either capturer runs with the same filter and ring size.

- **live**: both see the same offered rates, an ascending ladder of ``--pps`` then
  ``--topspeed``; per run: the rate tcpreplay achieved, frames captured, kernel drops and the
  capturer's CPU time per frame. The sender shares the machine with the capturer (and its
  softirq work runs on the sender's CPU), so a hungrier capturer also slows the sender.
- **drain**: the capturer is stopped (SIGSTOP) while N frames pile up in a 256 MiB ring, then
  resumed; N / time-to-consume-all is its capture-only rate, independent of the sender.

Needs root, tcpreplay, tcpdump and taskset. ``python bench/afpacket.py [--quick]``; ``main()``
returns the summary rows for ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NS_A = f"otus-bencha-{os.getpid()}"
NS_B = f"otus-benchb-{os.getpid()}"
IF_A, IF_B = "ba0", "bb0"
LIVE_RING_MIB = 32  # the capturer's default ring (256 KiB x 128)
DRAIN_RING_MIB = 256
LADDER = (50_000, 100_000, 150_000, 200_000, 300_000, 400_000, 600_000)
PCAP_FRAMES = 2000
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Run:
    """One replay into one capturer."""

    tool: str
    target: str  # "topspeed", the --pps asked for, or "drain"
    offered: int  # frames tcpreplay sent
    seconds: float  # of sending (live) or of consuming the backlog (drain)
    captured: int
    dropped: int  # by the kernel, ring full
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


def _write_pcap(path: Path) -> None:
    """SIP over UDP, 7 messages per call (350..1100 bytes), 20 destination ports."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    sizes = (1100, 350, 450, 950, 380, 400, 360)
    pkts = []
    for i in range(PCAP_FRAMES):
        call, step = divmod(i, len(sizes))
        head = f"SIP/2.0 200 OK\r\nCall-ID: {call}@bench\r\nCSeq: {step} X\r\n"
        body = (head + "a=x\r\n" * (sizes[step] // 5)).encode()[: sizes[step]]
        a, b = ("10.0.0.1", "10.0.0.2") if step % 2 == 0 else ("10.0.0.2", "10.0.0.1")
        pkts.append(
            Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
            / IP(src=a, dst=b)
            / UDP(sport=5060, dport=5060 + call % 20)
            / body
        )
    wrpcap(str(path), pkts)


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


def _otus(pcap: Path, loops: int, pps: int | None, drain: bool) -> Run:
    ring = DRAIN_RING_MIB if drain else LIVE_RING_MIB
    count = loops * PCAP_FRAMES if drain else 0
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
    return Run("otus", "drain" if drain else str(pps or "topspeed"), sent, secs,
               st["capture.packets"], st["capture.drop.kernel"], cpu)  # fmt: skip


def _tcpdump(pcap: Path, loops: int, pps: int | None, drain: bool, expr: str) -> Run:
    ring = (DRAIN_RING_MIB if drain else LIVE_RING_MIB) * 1024
    count = ["-c", str(loops * PCAP_FRAMES)] if drain else []
    proc = _start(["tcpdump", "-i", IF_B, "-n", "-w", "/dev/null", "-B", str(ring), "-s", "65535",
                   *count, expr], "listening", err=True)  # fmt: skip
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


def _report(runs: list[Run]) -> list[Row]:
    """Print every run; return the summary rows (label, rate, unit) ``python -m bench`` prints."""
    print(f"# {'tool':8} {'run':>9} {'pps':>10} {'frames':>9} {'captured':>9} {'drops':>7} "
          f"{'cpu us/frame':>12}")  # fmt: skip
    for r in runs:
        cpu = f"{r.us_per_frame:12.2f}" if r.cpu_s else f"{'-':>12}"
        print(f"# {r.tool:8} {r.target:>9} {r.pps:10,.0f} {r.offered:9} {r.captured:9} "
              f"{r.dropped:7} {cpu}")  # fmt: skip
    print("# live: pps = rate tcpreplay achieved; drain: pps = backlog consumed per second")
    rows: list[Row] = []
    for tool in ("otus", "tcpdump"):
        live = [r for r in runs if r.tool == tool and r.target != "drain"]
        clean = 0.0
        for r in live:  # ascending asks: the rate reached before the first run with drops
            if r.dropped:
                break
            clean = max(clean, r.pps)
        rows.append((f"afpacket live, zero kernel drops up to: {tool}", clean, "pps"))
        label = f"afpacket capture-only (drain a backlog): {tool}"
        rows.extend((label, r.pps, "pps") for r in runs if r.tool == tool and r.target == "drain")
        cpu = [r for r in live if r.cpu_s]
        if cpu:
            best = min(r.us_per_frame for r in cpu)
            rows.append((f"afpacket live, frames per CPU second: {tool}", 1e6 / best, "frames/s"))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the comparison: print every run, return the summary rows (none when it cannot run)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each live run")
    ap.add_argument("--drain-frames", type=int, default=150_000, help="backlog of a drain run")
    ap.add_argument("--quick", action="store_true", help="topspeed and drain only")
    args = ap.parse_args(argv or [])
    missing = [t for t in ("tcpreplay", "tcpdump", "ip", "taskset") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(f"# afpacket bench skipped: needs root and {', '.join(missing) or 'nothing else'}")
        return []
    from otus.plugins.capture.afpacket import DEFAULT_FILTER

    runs: list[Run] = []
    _setup()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pcap = Path(tmp) / "sip.pcap"
            _write_pcap(pcap)
            rates: list[int | None] = [*(() if args.quick else LADDER), None]
            for pps in rates:
                loops = max(1, int((pps or 400_000) * args.seconds) // PCAP_FRAMES)
                pair = [_otus(pcap, loops, pps, False),
                        _tcpdump(pcap, loops, pps, False, DEFAULT_FILTER)]  # fmt: skip
                runs += pair
                if pps and all(r.dropped or r.pps < 0.85 * pps for r in pair):
                    break  # both drop, or the sender cannot go faster: go to topspeed
            loops = max(1, args.drain_frames // PCAP_FRAMES)
            runs.append(_otus(pcap, loops, None, True))
            runs.append(_tcpdump(pcap, loops, None, True, DEFAULT_FILTER))
    finally:
        _teardown()
    return _report(runs)


def _child_main(iface: str, ring: str, count: str) -> None:
    """The capturing process ``_otus`` starts inside namespace B."""
    try:
        import uvloop

        uvloop.run(_child(iface, int(ring), int(count)))
    except ImportError:
        asyncio.run(_child(iface, int(ring), int(count)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child_main(*sys.argv[2:5])
    else:
        for label, rate, unit in main(sys.argv[1:]):
            print(f"{label:<60} {rate:>12,.0f} {unit}")
