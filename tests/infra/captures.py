"""Record real captures: sipp calls between namespaces, written by tcpdump (root only)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.infra.netns import Netns, SipTopology, sip_topology
from tests.infra.sipp import SippRun, run_calls

__all__ = [
    "COMMITTED",
    "EXAMPLE",
    "CaptureSpec",
    "missing_tools",
    "record",
    "recorded_captures",
    "tcpdump",
]

TOOLS = ("sipp", "tcpdump", "tshark", "ip")


@dataclass(frozen=True, slots=True)
class CaptureSpec:
    """How one capture file is made: the link, the calls, where and how tcpdump listens."""

    name: str
    transport: str = "udp"
    ipv6: bool = False
    mtu: int = 1500
    vlan: int | None = None
    vxlan: int | None = None
    sdp_lines: int = 0  # extra a= lines in the INVITE's SDP; ~80 makes a ~5 KB INVITE
    calls: int = 2
    scenario: str = "varied"  # or "builtin" (sipp -sn uac / -sn uas)
    any_iface: bool = False  # tcpdump -i any (Linux cooked capture)
    linktype: str = ""  # tcpdump -y value ("" = tcpdump's default)
    note: str = ""

    def describe(self) -> str:
        """One line for tests/data/README.md."""
        parts = [
            f"{self.calls} {self.scenario} call(s) over {self.transport.upper()}",
            "IPv6" if self.ipv6 else "IPv4",
            f"MTU {self.mtu}",
        ]
        if self.sdp_lines:
            parts.append(f"INVITE SDP padded with {self.sdp_lines} a= lines")
        if self.vlan is not None:
            parts.append(f"VLAN {self.vlan}")
        if self.vxlan is not None:
            parts.append(f"kernel VXLAN VNI {self.vxlan}")
        parts.append("tcpdump -i any" if self.any_iface else "tcpdump on the UAS-side link")
        if self.linktype:
            parts.append(f"-y {self.linktype}")
        return ", ".join(parts) + (f" ({self.note})" if self.note else "")


_FRAG = 80  # a ~5 KB INVITE: 4 IPv4 fragments at MTU 1500, ~10 TCP segments at MTU 576
COMMITTED: tuple[CaptureSpec, ...] = (
    CaptureSpec("sip-udp4.pcap", calls=3),
    CaptureSpec("sip-udp6.pcap", ipv6=True),
    CaptureSpec("sip-udp4-frag.pcap", sdp_lines=_FRAG),
    CaptureSpec("sip-udp6-frag.pcap", ipv6=True, sdp_lines=_FRAG),
    CaptureSpec("sip-any.pcap", any_iface=True, note="tcpdump's default for any"),
    CaptureSpec("sip-any-sll.pcap", any_iface=True, linktype="LINUX_SLL"),
    CaptureSpec("sip-any-sll2.pcap", any_iface=True, linktype="LINUX_SLL2"),
    CaptureSpec(
        "sip-tcp-mtu576.pcap",
        transport="tcp",
        mtu=576,
        sdp_lines=_FRAG,
        calls=3,
        note="sipp -t t1: one TCP connection",
    ),
    CaptureSpec("sip-udp4-vlan.pcap", vlan=100, sdp_lines=40),
    CaptureSpec("sip-vxlan.pcap", vxlan=4242, note="real kernel VXLAN between the hosts"),
)
EXAMPLE = CaptureSpec("sipp-uac-uas.pcap", scenario="builtin", calls=2)


def missing_tools() -> list[str]:
    """The external tools a recording needs that are not on PATH."""
    return [t for t in TOOLS if shutil.which(t) is None]


@contextlib.contextmanager
def tcpdump(ns: Netns, iface: str, out: Path, *, linktype: str = "") -> Iterator[None]:
    """Run tcpdump in ``ns`` writing ``out`` until the block ends (immediate mode, flushed)."""
    args = [
        "tcpdump",
        "-i",
        iface,
        "-w",
        str(out),
        "-U",
        "--immediate-mode",
        "-n",
        "-s",
        "0",
        "-Z",
        "root",
    ]
    if linktype:
        args += ["-y", linktype]
    err = out.with_suffix(out.suffix + ".tcpdump.log")
    with err.open("w+b") as log:
        proc = ns.popen(args, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while b"listening on" not in err.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                ns.stop(proc)
                raise RuntimeError(f"tcpdump did not start: {err.read_text(errors='replace')}")
            time.sleep(0.02)
        try:
            yield
        finally:
            time.sleep(0.3)  # let the last replies reach the capture point
            ns.stop(proc, wait=10)
    err.unlink(missing_ok=True)


def _record_one(spec: CaptureSpec, topo: SipTopology, out: Path, workdir: Path) -> SippRun:
    """Run the calls of ``spec`` on ``topo`` while tcpdump writes ``out``."""
    iface = "any" if spec.any_iface else topo.capture_if
    with tcpdump(topo.capture_ns, iface, out, linktype=spec.linktype):
        time.sleep(0.1)
        return run_calls(
            topo,
            workdir,
            calls=spec.calls,
            transport=spec.transport,
            ipv6=spec.ipv6,
            scenario=spec.scenario,
            sdp_lines=spec.sdp_lines,
        )


def record(spec: CaptureSpec, out_dir: Path, *, attempts: int = 2) -> Path:
    """Record one capture into ``out_dir``/``spec.name``; raise if sipp reports a failed call."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / spec.name
    last = ""
    for _ in range(attempts):
        with (
            tempfile.TemporaryDirectory(prefix="otus-sipp-") as tmp,
            sip_topology(
                "cap", mtu=spec.mtu, vlan=spec.vlan, vxlan=spec.vxlan, ipv6=spec.ipv6
            ) as topo,
        ):
            tmp_out = Path(tmp) / spec.name
            run = _record_one(spec, topo, tmp_out, Path(tmp) / "sipp")
            if run.ok:
                shutil.copyfile(tmp_out, out)
                return out
            last = f"uac={run.uac_rc} uas={run.uas_rc}\n{run.logs()}"
    raise RuntimeError(f"sipp calls failed while recording {spec.name}: {last}")


def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "recording captures needs root (network namespaces)"
    missing = missing_tools()
    if missing:
        return f"recording captures needs {', '.join(missing)} (make test installs them as root)"
    return ""


@pytest.fixture(scope="session")
def recorded_captures(tmp_path_factory: Any) -> dict[str, Path]:
    """Fresh captures recorded now (a subset of COMMITTED, fewer calls): name -> path."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out_dir: Path = tmp_path_factory.mktemp("captures")
    fresh = {}
    for spec in COMMITTED:
        if spec.linktype:  # the -y variants add nothing a fresh -i any capture does not
            continue
        name = re.sub(r"\.pcap$", "-fresh.pcap", spec.name)
        fresh_spec = CaptureSpec(**{**_asdict(spec), "name": name, "calls": 1})
        fresh[spec.name] = record(fresh_spec, out_dir)
    return fresh


def _asdict(spec: CaptureSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in spec.__slots__}
