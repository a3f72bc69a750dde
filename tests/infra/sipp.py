"""Run sipp UAS and UAC between the namespaces of a SipTopology, with bounded calls and time."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.infra.netns import Netns, SipTopology

__all__ = ["SippRun", "big_sdp", "run_calls", "uac_scenario", "uas_scenario"]

UAS_PORT = 5060
UAC_PORT = 5070  # not 5061: tshark treats TCP 5061 as SIP over TLS


def big_sdp(extra_lines: int) -> str:
    """An SDP offer body (sipp keywords inside) padded with ``extra_lines`` realistic a= lines."""
    lines = [
        "v=0",
        "o=alice 53655765 2353687637 IN IP[local_ip_type] [local_ip]",
        "s=Otus test call [call_number]",
        "c=IN IP[media_ip_type] [media_ip]",
        "t=0 0",
        "m=audio [media_port] RTP/AVP 0 8 9 18 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:18 G729/8000",
        "a=fmtp:18 annexb=no",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]
    for i in range(extra_lines):
        kind = i % 4
        if kind == 0:
            lines.append(
                f"a=candidate:{i} 1 UDP {2130706431 - i} 192.0.2.{i % 250 + 1} {20000 + i} typ host"
            )
        elif kind == 1:
            lines.append(f"a=rtcp-fb:{96 + i % 32} nack pli")
        elif kind == 2:
            lines.append(f"a=extmap:{i % 14 + 1} urn:ietf:params:rtp-hdrext:otus-test-{i}")
        else:
            lines.append(f"a=ssrc:{100000 + i} cname:otus-{i:05d}@example.invalid")
    if extra_lines:
        lines += [
            "m=video [media_port+2] RTP/AVP 96 97",
            "a=rtpmap:96 H264/90000",
            "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1",
            "a=rtpmap:97 VP8/90000",
        ]
    return "\n".join(lines) + "\n"


def uac_scenario(sdp_lines: int = 0, *, compact: bool = True) -> str:
    """UAC: OPTIONS, REGISTER, INVITE (SDP padded by ``sdp_lines``), ACK, BYE; varied headers.

    ``compact`` uses compact header forms in OPTIONS and BYE (i: f: t: v: l: ...).
    """
    ua = "User-Agent: Otus-UAC/1.0 (sipp [call_number])"
    cl = "l: [len]" if compact else "Content-Length: [len]"
    options = (
        [
            "OPTIONS sip:[service]@[remote_ip]:[remote_port] SIP/2.0",
            "v: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport",
            'f: "Zo\u00eb [call_number]" <sip:zoe@[local_ip]:[local_port]>'
            ";tag=o[pid]T[call_number]",
            "t: <sip:[service]@[remote_ip]:[remote_port]>",
            "i: [call_id]",
            "CSeq: 1 OPTIONS",
            "m: <sip:zoe@[local_ip]:[local_port];transport=[transport]>",
            "Max-Forwards: 70",
            "Accept: application/sdp",
            ua,
            cl,
        ]
        if compact
        else [
            "OPTIONS sip:[service]@[remote_ip]:[remote_port] SIP/2.0",
            "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport",
            "From: <sip:zoe@[local_ip]:[local_port]>;tag=o[pid]T[call_number]",
            "To: <sip:[service]@[remote_ip]:[remote_port]>",
            "Call-ID: [call_id]",
            "CSeq: 1 OPTIONS",
            "Max-Forwards: 70",
            ua,
            "Content-Length: 0",
        ]
    )
    register = [
        "REGISTER sip:[remote_ip]:[remote_port] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        "From: Alice <sip:alice[call_number]@[remote_ip]>;tag=r[pid]T[call_number]",
        "To: Alice <sip:alice[call_number]@[remote_ip]>",
        "Call-ID: [call_id]",
        "CSeq: 2 REGISTER",
        "Contact: <sip:alice[call_number]@[local_ip]:[local_port];transport=[transport]>",
        "Expires: 3600",
        "Max-Forwards: 70",
        "User-Agent: Otus-UAC/1.0 registrar-client",
        "Content-Length: [len]",
    ]
    invite = [
        "INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        'From: "Alice Example" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]',
        "To: <sip:[service]@[remote_ip]:[remote_port]>",
        "Call-ID: [call_id]",
        "CSeq: 3 INVITE",
        "Contact: sip:alice@[local_ip]:[local_port]",
        "Max-Forwards: 70",
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REGISTER",
        "P-Asserted-Identity: <sip:+15550100[call_number]@example.invalid>",
        "Subject: Otus performance test",
        ua,
        "Content-Type: application/sdp",
        "Content-Length: [len]",
        "",
        big_sdp(sdp_lines),
    ]
    ack = [
        "ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        'From: "Alice Example" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]',
        "[last_To:]",
        "Call-ID: [call_id]",
        "CSeq: 3 ACK",
        "Max-Forwards: 70",
        ua,
        "Content-Length: 0",
    ]
    bye = [
        "BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0",
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]",
        'From: "Alice Example" <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]',
        "[last_To:]",
        "i: [call_id]" if compact else "Call-ID: [call_id]",
        "CSeq: 4 BYE",
        "Max-Forwards: 70",
        'Reason: Q.850;cause=16;text="Normal call clearing"',
        ua,
        cl,
    ]
    return _scenario(
        "otus varied UAC",
        [
            _send(options),
            '<recv response="200"/>',
            _send(register),
            '<recv response="200"/>',
            _send(invite, retrans=True),
            '<recv response="100" optional="true"/>',
            '<recv response="180" optional="true"/>',
            '<recv response="200" rrs="true"/>',
            _send(ack),
            '<pause milliseconds="20"/>',
            _send(bye),
            '<recv response="200" crlf="true"/>',
        ],
    )


def uas_scenario(sdp_lines: int = 0) -> str:
    """UAS for :func:`uac_scenario`: answers OPTIONS, REGISTER, INVITE (100/180/200), BYE."""
    server = "Server: Otus-UAS/2.1 (sipp)"
    common = ["[last_Via:]", "[last_From:]", "[last_Call-ID:]", "[last_CSeq:]"]
    ok_options = [
        "SIP/2.0 200 OK",
        *common,
        "[last_To:];tag=[pid]OPT[call_number]",
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE",
        "Accept: application/sdp",
        server,
        "Content-Length: [len]",
    ]
    ok_register = [
        "SIP/2.0 200 OK",
        *common,
        "[last_To:];tag=[pid]REG[call_number]",
        "[last_Contact:];expires=3600",
        server,
        "l: [len]",
    ]
    answer = big_sdp(sdp_lines // 4).replace("alice", "bob").replace("test call", "answer")
    to = "[last_To:];tag=[pid]SIPpTag01[call_number]"
    trying = ["SIP/2.0 100 Trying", *common, "[last_To:]", server, "Content-Length: 0"]
    ringing = [
        "SIP/2.0 180 Ringing",
        *common,
        to,
        "Contact: <sip:bob@[local_ip]:[local_port]>",
        server,
        "Content-Length: 0",
    ]
    ok_invite = [
        "SIP/2.0 200 OK",
        *common,
        to,
        "Contact: <sip:bob@[local_ip]:[local_port];transport=[transport]>",
        server,
        "Content-Type: application/sdp",
        "Content-Length: [len]",
        "",
        answer,
    ]
    ok_bye = ["SIP/2.0 200 OK", *common, "[last_To:]", server, "Content-Length: [len]"]
    return _scenario(
        "otus varied UAS",
        [
            '<recv request="OPTIONS"/>',
            _send(ok_options),
            '<recv request="REGISTER"/>',
            _send(ok_register),
            '<recv request="INVITE" crlf="true"/>',
            _send(trying),
            _send(ringing),
            _send(ok_invite, retrans=True),
            '<recv request="ACK" optional="false" rtd="true" crlf="true"/>',
            '<recv request="BYE"/>',
            _send(ok_bye),
        ],
    )


def _send(lines: list[str], *, retrans: bool = False) -> str:
    """A <send> element; sipp rebuilds line endings as CRLF."""
    body = "\n".join(lines).rstrip("\n") + "\n"
    if body.count("\n\n") == 0:
        body += "\n"
    attr = ' retrans="500"' if retrans else ""
    return f"<send{attr}>\n<![CDATA[\n\n{body}\n]]>\n</send>"


def _scenario(name: str, steps: list[str]) -> str:
    """Wrap steps in a sipp scenario document."""
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
        f'<scenario name="{name}">\n' + "\n".join(steps) + "\n</scenario>\n"
    )


@dataclass(slots=True)
class SippRun:
    """Exit codes and logs of one UAC/UAS run (sipp exits 0 when every call succeeded)."""

    uac_rc: int
    uas_rc: int
    workdir: Path

    @property
    def ok(self) -> bool:
        """Both sides finished every call."""
        return self.uac_rc == 0 and self.uas_rc == 0

    def logs(self) -> str:
        """The tail of every log sipp wrote, for an assertion message."""
        out = []
        for p in sorted(self.workdir.glob("*.log")):
            out.append(f"== {p.name}\n{p.read_text(errors='replace')[-2000:]}")
        return "\n".join(out)


def run_calls(
    topo: SipTopology,
    workdir: Path,
    *,
    calls: int = 2,
    transport: str = "udp",
    ipv6: bool = False,
    scenario: str = "varied",
    sdp_lines: int = 0,
    rate: int = 5,
    timeout_s: int = 30,
) -> SippRun:
    """Run ``calls`` sipp calls UAC -> UAS (``scenario`` "varied" or the built-in "uac"/"uas").

    ``transport`` is "udp" (``-t u1``) or "tcp" (``-t t1``: one connection for every call).
    Bounded: ``-m calls``, ``-timeout``, and a hard kill after ``timeout_s + 10`` seconds.
    """
    if shutil.which("sipp") is None:
        raise FileNotFoundError("sipp is not installed (Debian package sip-tester)")
    workdir.mkdir(parents=True, exist_ok=True)
    uac_ip, uas_ip = topo.addrs(ipv6)
    remote = f"[{uas_ip}]:{UAS_PORT}" if ipv6 else f"{uas_ip}:{UAS_PORT}"
    mode = {"udp": "u1", "tcp": "t1"}[transport]
    if scenario == "varied":
        # sipp frames TCP with Content-Length; keep compact l: to UDP so sipp itself copes.
        compact = transport == "udp"
        (workdir / "uac.xml").write_text(uac_scenario(sdp_lines, compact=compact))
        (workdir / "uas.xml").write_text(uas_scenario(sdp_lines))
        uas_scn, uac_scn = ["-sf", "uas.xml"], ["-sf", "uac.xml"]
    elif scenario == "builtin":
        uas_scn, uac_scn = ["-sn", "uas"], ["-sn", "uac"]
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    limits = f"-m {calls} -timeout {timeout_s}s -nostdin -trace_err -trace_screen"
    common = ["-t", mode, *limits.split(), "-max_socket", "64", "-skip_rlimit"]
    uas_cmd = ["sipp", *uas_scn, "-i", uas_ip, "-p", str(UAS_PORT), "-mi", uas_ip, *common]
    rates = ["-r", str(rate), "-rp", "1000", "-l", "2"]
    uac_cmd = ["sipp", *uac_scn, remote, "-i", uac_ip, "-p", str(UAC_PORT), "-mi", uac_ip]
    uac_cmd += rates + common
    with (workdir / "uas.out").open("wb") as uas_out, (workdir / "uac.out").open("wb") as uac_out:
        uas = topo.uas.popen(uas_cmd, stdout=uas_out, stderr=subprocess.STDOUT, cwd=workdir)
        try:
            topo.uas.wait_listening(UAS_PORT, transport)
            uac = topo.uac.popen(uac_cmd, stdout=uac_out, stderr=subprocess.STDOUT, cwd=workdir)
            uac_rc = _wait(topo.uac, uac, timeout_s + 10)
            uas_rc = _wait(topo.uas, uas, 10)
        finally:
            topo.uas.stop(uas)  # a no-op when it has exited; the namespace stops the rest
    return SippRun(uac_rc, uas_rc, workdir)


def _wait(ns: Netns, proc: subprocess.Popen[bytes], seconds: float) -> int:
    """Wait for a sipp process to exit; stop it (by PID) when it overruns; its exit code."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return ns.stop(proc)
