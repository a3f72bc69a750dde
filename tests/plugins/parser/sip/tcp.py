"""Helpers for the TCP stream tests: SIP messages with distinct Call-IDs, and connections that
turn byte streams into DecodedPackets (sequence numbers, flags, timestamps)."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otus.core.packet import IPPROTO_TCP, DecodedPacket, Encap, OutputPacket
from otus.plugins.base import PluginContext
from otus.plugins.parser.sip import SipConfig, SipParser
from tests.infra.peak_rss import run_measured
from tests.plugins.parser.sip.corpus import SDP, build

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
M32 = 0xFFFF_FFFF


def message(
    i: int, *, body_lines: int = -1, method: str = "INVITE", compact: bool = False
) -> bytes:
    """A request with Call-ID ``call-<i>``: no body (-1), else SDP with ``body_lines`` more."""
    body = ""
    if body_lines >= 0:
        body = SDP + "".join(f"a=x-pad:{k:05d}\r\n" for k in range(body_lines))
    headers = [
        f"Via: SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK-{i}",
        f"From: <sip:alice@a.example>;tag=f{i}",
        "To: <sip:bob@b.example>",
        f"Call-ID: call-{i}",
        f"CSeq: {i} {method}",
        "Max-Forwards: 70",
    ]
    if body:
        headers.append("Content-Type: application/sdp")
    if compact:
        headers.append(f"l: {len(body.encode())}")
        return build(f"{method} sip:bob@b.example SIP/2.0", headers, body, content_length=False)
    return build(f"{method} sip:bob@b.example SIP/2.0", headers, body)


def response(i: int, code: int = 200) -> bytes:
    """A response to :func:`message` ``i``."""
    return build(
        f"SIP/2.0 {code} OK",
        [
            f"Via: SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK-{i}",
            f"From: <sip:alice@a.example>;tag=f{i}",
            f"To: <sip:bob@b.example>;tag=t{i}",
            f"Call-ID: call-{i}",
            f"CSeq: {i} INVITE",
        ],
    )


def call_ids(out: list[OutputPacket]) -> list[str]:
    return [o.payload["call_id"] for o in out]


@dataclass
class Conn:
    """One TCP connection: ``client`` and ``server`` byte streams become segments."""

    parser: SipParser
    client: tuple[str, int] = ("10.0.0.1", 5070)
    server: tuple[str, int] = ("10.0.0.2", 5060)
    isn: tuple[int, int] = (1000, 900_000)
    ts: int = 1_700_000_000_000_000
    encap: Encap | None = None
    seq: list[int] = field(default_factory=list)
    out: list[OutputPacket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seq = [(self.isn[0] + 1) & M32, (self.isn[1] + 1) & M32]

    def packet(
        self, data: bytes, *, server: bool = False, seq: int | None = None, flags: int = ACK
    ) -> DecodedPacket:
        """A segment (not sent): by default the next bytes of that direction."""
        (s, sp), (d, dp) = (self.server, self.client) if server else (self.client, self.server)
        self.ts += 10
        q = self.seq[server] if seq is None else seq
        return DecodedPacket(self.ts, s, d, sp, dp, IPPROTO_TCP, data, self.encap, q & M32, flags)

    def send(self, pkt: DecodedPacket) -> list[OutputPacket]:
        """Hand one segment to the parser (if it takes it); the messages it completed."""
        got: list[OutputPacket] = []
        if self.parser.can_handle(pkt):
            self.parser.handle(pkt, got)
        self.out += got
        return got

    def handshake(self) -> None:
        self.send(self.packet(b"", seq=self.isn[0], flags=SYN))
        self.send(self.packet(b"", server=True, seq=self.isn[1], flags=SYN | ACK))

    def segments(
        self, data: bytes, sizes: list[int] | int, *, server: bool = False
    ) -> list[DecodedPacket]:
        """``data`` cut into segments of ``sizes`` (cycled), advancing the direction's seq."""
        if isinstance(sizes, int):
            sizes = [sizes]
        out = []
        pos = 0
        k = 0
        while pos < len(data):
            n = sizes[k % len(sizes)]
            k += 1
            out.append(self.packet(data[pos : pos + n], server=server))
            self.seq[server] = (self.seq[server] + len(data[pos : pos + n])) & M32
            pos += n
        return out

    def stream(self, data: bytes, sizes: list[int] | int = 1460, *, server: bool = False) -> None:
        """Send ``data`` in order."""
        for p in self.segments(data, sizes, server=server):
            self.send(p)

    def close(self, flags: int = FIN | ACK) -> None:
        self.send(self.packet(b"", flags=flags))
        if flags & FIN:
            self.send(self.packet(b"", server=True, flags=flags))


def parser(**options: object) -> SipParser:
    return SipParser(SipConfig.model_validate(options), PluginContext())


BYTE_ENDS = (
    "tcp.bytes_sip",
    "tcp.bytes_keepalive",
    "tcp.bytes_websocket",
    "tcp.bytes_duplicate",
    "tcp.bytes_skipped",
    "tcp.bytes_dropped",
    "tcp.buffered_bytes",
)


def accounted(p: SipParser) -> None:
    """The accounting identity of otus.plugins.parser.sip.stream holds."""
    s = p.stats()
    assert s["tcp.bytes"] == sum(s[k] for k in BYTE_ENDS), {k: s[k] for k in BYTE_ENDS}
    assert s["flows.created"] == (
        s["flows.closed"] + s["flows.evicted"] + s["flows.expired"] + s["flows.active"]
    )


ROOT = Path(__file__).resolve().parents[4]


@dataclass
class Run:
    """What ``otus run -r`` printed: its records, its summary counters, its peak RSS."""

    records: list[dict[str, Any]]
    counters: dict[str, int]
    rss_mib: int
    stderr: str


def run_otus(path: Path, *, task: dict[str, Any] | None = None, timeout: float = 300.0) -> Run:
    """``otus run -r PATH --format json`` (optionally ``--task``); it must exit 0 cleanly."""
    args = [sys.executable, "-m", "otus", "run", "-r", str(path), "--format", "json"]
    if task is not None:
        spec = path.with_suffix(".task.json")
        spec.write_text(json.dumps(task))
        args += ["--task", str(spec)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            rc, rss = run_measured(args, stdout=out, stderr=err, env=env, cwd=ROOT, timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"otus run took more than {timeout} s on {path}") from None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read().decode(errors="replace")
    assert rc == 0, f"otus run exited {rc}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if "packets=" in ln]
    assert lines, f"no summary line:\n{stderr[-2000:]}"
    counters = {k: int(v) for k, v in re.findall(r"([\w.\-]+)=(\d+)", lines[-1])}
    records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return Run(records, counters, rss, stderr)


def byte_identity(counters: dict[str, int]) -> None:
    """The accounting identity, from the summary line (zero counters are not printed)."""
    ends = sum(counters.get(k, 0) for k in BYTE_ENDS)
    assert counters.get("tcp.bytes", 0) == ends, counters
