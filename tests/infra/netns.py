"""Network namespaces, veth pairs and VLANs for tests that send real traffic (root only)."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

__all__ = [
    "Netns",
    "SipTopology",
    "kernel_vlan_supported",
    "netns",
    "netns_factory",
    "set_offloads",
    "sip_topology",
    "sip_topology_factory",
    "stale_namespaces",
    "veth",
]

REPO = Path(__file__).resolve().parents[2]
PREFIX = "otus"
_seq = itertools.count()
_IFNAME_MAX = 15

# Runs inside a namespace: legacy ETHTOOL_S* ioctls (no ethtool binary needed on the machine).
_OFFLOAD_SNIPPET = """
import ctypes, fcntl, socket, struct, sys
cmds = {"rx": 0x15, "tx": 0x17, "sg": 0x19, "tso": 0x1F, "gso": 0x24, "gro": 0x2C}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for arg in sys.argv[2:]:
    name, _, val = arg.partition("=")
    value = ctypes.create_string_buffer(struct.pack("II", cmds[name], val == "on"), 8)
    ifr = struct.pack("16sP16x", sys.argv[1].encode(), ctypes.addressof(value))
    fcntl.ioctl(s.fileno(), 0x8946, ifr)  # SIOCETHTOOL
"""


def _run(args: Sequence[str], *, timeout: float = 30.0, check: bool = True) -> str:
    """Run a command, return its stdout; raise with stderr in the message when it fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass(slots=True)
class Netns:
    """One network namespace we created: run commands in it, start and stop processes in it."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cmd(self, *args: str) -> list[str]:
        """The argv that runs ``args`` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run a command inside the namespace and return its stdout."""
        return _run(self.cmd(*args), timeout=timeout, check=check)

    def ip(self, *args: str, check: bool = True) -> str:
        """Run ``ip -n NS ...`` (no exec needed)."""
        return _run(["ip", "-n", self.name, *args], check=check)

    def sysctl(self, key: str, value: str | int) -> None:
        """Set a per-namespace sysctl (net.*)."""
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def popen(
        self,
        args: Sequence[str],
        *,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace; it is stopped (by PID) when the namespace goes."""
        proc = subprocess.Popen(
            self.cmd(*args), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=cwd
        )
        self.procs.append(proc)
        return proc

    def stop(
        self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 5.0
    ) -> int:
        """Signal one process we started, wait for it, SIGKILL it if it lingers; its exit code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(wait)
        if proc in self.procs:
            self.procs.remove(proc)
        return int(proc.returncode)

    def link_up(self, iface: str) -> None:
        """Bring an interface up."""
        self.ip("link", "set", iface, "up")

    def set_mtu(self, iface: str, mtu: int) -> None:
        """Set an interface's MTU."""
        self.ip("link", "set", iface, "mtu", str(mtu))

    def add_addr(self, iface: str, cidr: str) -> None:
        """Add an IPv4 or IPv6 address (IPv6 with ``nodad`` so it is usable at once)."""
        extra = ["nodad"] if ":" in cidr else []
        self.ip("addr", "add", cidr, "dev", iface, *extra)

    def add_vlan(self, parent: str, vid: int, name: str | None = None) -> str:
        """Add an 802.1Q sub-interface (needs CONFIG_VLAN_8021Q); returns its name."""
        name = name or f"{parent}.{vid}"
        _check_ifname(name)
        self.ip("link", "add", "link", parent, "name", name, "type", "vlan", "id", str(vid))
        self.link_up(name)
        return name

    def wait_listening(self, port: int, proto: str = "udp", timeout: float = 10.0) -> None:
        """Wait until something in the namespace listens on ``port`` (udp or tcp)."""
        flag = "-Hlnu" if proto == "udp" else "-Hlnt"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(rf"[:\]]{port}\s", self.run("ss", flag, check=False) + " "):
                return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on {proto} port {port} in {self.name}")

    def close(self) -> None:
        """Stop every process we started here, then delete the namespace."""
        for proc in list(self.procs):
            self.stop(proc)
        _run(["ip", "netns", "del", self.name], check=False)


def _check_ifname(name: str) -> None:
    if not 0 < len(name) <= _IFNAME_MAX:
        raise ValueError(f"interface name {name!r} must be 1..{_IFNAME_MAX} characters")


def _ns_name(purpose: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{1,16}", purpose):
        raise ValueError(f"purpose {purpose!r} must be 1..16 lowercase letters or digits")
    return f"{PREFIX}-{purpose}-{os.getpid()}-{next(_seq)}"


@contextlib.contextmanager
def netns(purpose: str, *, ipv6: bool = True) -> Iterator[Netns]:
    """Create ``otus-<purpose>-<pid>-<n>`` with lo up; always deleted on exit."""
    ns = Netns(_ns_name(purpose))
    _run(["ip", "netns", "add", ns.name])
    try:
        ns.link_up("lo")
        # Quiet, deterministic links: no DAD delay, no router solicitations, IPv6 only if asked.
        for key, value in (
            ("net.ipv6.conf.default.disable_ipv6", 0 if ipv6 else 1),
            ("net.ipv6.conf.all.accept_dad", 0),
            ("net.ipv6.conf.default.accept_dad", 0),
            ("net.ipv6.conf.default.router_solicitations", 0),
        ):
            ns.sysctl(key, value)
        yield ns
    finally:
        ns.close()


def veth(a: Netns, a_if: str, b: Netns, b_if: str, *, mtu: int | None = None) -> None:
    """Create a veth pair with one end in each namespace (never in ours), MTU set, both up."""
    _check_ifname(a_if)
    _check_ifname(b_if)
    peer = ["type", "veth", "peer", "name", b_if, "netns", b.name]
    _run(["ip", "link", "add", a_if, "netns", a.name, *peer])
    for ns, iface in ((a, a_if), (b, b_if)):
        if mtu is not None:
            ns.set_mtu(iface, mtu)
        ns.link_up(iface)


def set_offloads(ns: Netns, iface: str, **features: bool) -> None:
    """Switch NIC offloads (tx, tso, gso, gro, ...) with ethtool ioctls inside the namespace."""
    args = [f"{k}={'on' if v else 'off'}" for k, v in features.items()]
    ns.run(sys.executable, "-c", _OFFLOAD_SNIPPET, iface, *args)


_vlan_probe: bool | None = None


def kernel_vlan_supported() -> bool:
    """Whether this kernel can create 802.1Q sub-interfaces (CONFIG_VLAN_8021Q), probed once."""
    global _vlan_probe  # noqa: PLW0603 - a process-wide cached probe
    if _vlan_probe is None:
        with netns("probe", ipv6=False) as ns:
            ns.ip("link", "add", "p0", "type", "veth", "peer", "name", "p1")
            try:
                ns.add_vlan("p0", 100)
                _vlan_probe = True
            except RuntimeError:
                _vlan_probe = False
    return _vlan_probe


def stale_namespaces() -> list[str]:
    """Namespaces named ``otus-*-<pid>-*`` whose creating process is gone (leaked by a crash)."""
    out = []
    for line in _run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.fullmatch(rf"{PREFIX}-[a-z0-9]+-(\d+)-\d+", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            out.append(name)
    return out


@dataclass(slots=True)
class SipTopology:
    """Two SIP hosts (UAC, UAS) on one link, and where to capture what goes between them."""

    uac: Netns
    uas: Netns
    capture_ns: Netns
    capture_if: str  # tcpdump/otus interface inside capture_ns
    uac_if: str  # interface carrying the UAC's addresses
    uas_if: str
    mtu: int
    vlan: int | None
    vlan_mode: str  # "" | "kernel" (802.1Q sub-interfaces) | "tagger" (userspace 802.1Q relay)
    uac_ip4: str = "10.47.0.1"
    uas_ip4: str = "10.47.0.2"
    uac_ip6: str = "fd00:47::1"
    uas_ip6: str = "fd00:47::2"

    def addrs(self, ipv6: bool) -> tuple[str, str]:
        """(UAC address, UAS address) of one family."""
        return (self.uac_ip6, self.uas_ip6) if ipv6 else (self.uac_ip4, self.uas_ip4)


@contextlib.contextmanager
def sip_topology(
    purpose: str = "sip",
    *,
    mtu: int = 1500,
    vlan: int | None = None,
    vxlan: int | None = None,
    ipv6: bool = True,
) -> Iterator[SipTopology]:
    """UAC ns --veth-- UAS ns, capture on the UAS side; with ``vlan`` the link carries 802.1Q.

    With ``vxlan`` (a VNI) the SIP hosts talk over kernel VXLAN devices (UDP 4789) whose
    underlay is the veth link (10.47.1.0/24); the capture point sees the encapsulated frames.

    Without CONFIG_VLAN_8021Q (as in some VM kernels) the VLAN link is built from a third
    namespace where ``tools/vlantag.py`` relays frames between access ports and a veth trunk,
    tagging them; the capture point is then the trunk end, where frames carry the tag.
    """
    with contextlib.ExitStack() as stack:
        uac = stack.enter_context(netns(f"{purpose}a", ipv6=ipv6))
        uas = stack.enter_context(netns(f"{purpose}b", ipv6=ipv6))
        mode = ""
        if vlan is not None and vxlan is not None:
            raise ValueError("vlan and vxlan together are not supported")
        if vxlan is not None:
            veth(uac, "ua0", uas, "ub0", mtu=mtu)
            for ns, iface, local, remote in (
                (uac, "ua0", "10.47.1.1", "10.47.1.2"),
                (uas, "ub0", "10.47.1.2", "10.47.1.1"),
            ):
                ns.add_addr(iface, f"{local}/24")
                vx = ["type", "vxlan", "id", str(vxlan), "local", local, "remote", remote]
                ns.ip("link", "add", "vx0", *vx, "dstport", "4789", "dev", iface)
                ns.link_up("vx0")
            topo = SipTopology(uac, uas, uas, "ub0", "vx0", "vx0", mtu, None, mode)
        elif vlan is None:
            veth(uac, "ua0", uas, "ub0", mtu=mtu)
            topo = SipTopology(uac, uas, uas, "ub0", "ua0", "ub0", mtu, None, mode)
        elif kernel_vlan_supported():
            mode = "kernel"
            veth(uac, "ua0", uas, "ub0", mtu=mtu)
            ua = uac.add_vlan("ua0", vlan, "ua0v")
            ub = uas.add_vlan("ub0", vlan, "ub0v")
            topo = SipTopology(uac, uas, uas, "ub0", ua, ub, mtu, vlan, mode)
        else:
            mode = "tagger"
            tap = stack.enter_context(netns(f"{purpose}t", ipv6=False))
            veth(uac, "ua0", tap, "ta0", mtu=mtu)
            veth(uas, "ub0", tap, "tb0", mtu=mtu)
            veth(tap, "tt0", tap, "tt1", mtu=mtu)
            topo = SipTopology(uac, uas, tap, "tt0", "ua0", "ub0", mtu, vlan, mode)
        # Real segmentation on the wire: no TSO/GSO super-frames; full checksums so relayed
        # frames are valid.
        for ns, iface in ((uac, "ua0"), (uas, "ub0")):
            set_offloads(ns, iface, tso=False, gso=False, gro=False, tx=mode != "tagger")
        uac.add_addr(topo.uac_if, f"{topo.uac_ip4}/24")
        uas.add_addr(topo.uas_if, f"{topo.uas_ip4}/24")
        if ipv6:
            uac.add_addr(topo.uac_if, f"{topo.uac_ip6}/64")
            uas.add_addr(topo.uas_if, f"{topo.uas_ip6}/64")
        if mode == "tagger":
            _start_tagger(topo.capture_ns, vlan or 0)
        yield topo


def _start_tagger(tap: Netns, vid: int) -> None:
    """Start the userspace 802.1Q relay in ``tap`` and wait until its sockets are bound."""
    script = str(REPO / "tools" / "vlantag.py")
    args = [sys.executable, script, "--vid", str(vid), "--max-seconds", "900", "ta0:tt0", "tb0:tt1"]
    # Only the "ready" line is ever written to stdout, so the pipe cannot fill up.
    proc = tap.popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    line = proc.stdout.readline() if ready else b""
    if b"ready" not in line:
        tap.stop(proc)
        raise RuntimeError(f"tools/vlantag.py did not start in {tap.name}: {line!r}")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces); CI runs as root")


@pytest.fixture
def netns_factory() -> Iterator[Any]:
    """A factory ``make(purpose, ipv6=True) -> Netns``; every namespace is deleted at teardown."""
    _need_root()
    with contextlib.ExitStack() as stack:

        def make(purpose: str, *, ipv6: bool = True) -> Netns:
            return stack.enter_context(netns(purpose, ipv6=ipv6))

        yield make


@pytest.fixture
def sip_topology_factory() -> Iterator[Any]:
    """A factory ``make(purpose, mtu=, vlan=, ipv6=) -> SipTopology``, torn down at teardown."""
    _need_root()
    with contextlib.ExitStack() as stack:

        def make(purpose: str = "sip", **kw: Any) -> SipTopology:
            return stack.enter_context(sip_topology(purpose, **kw))

        yield make
