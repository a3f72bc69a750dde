"""Record the committed captures from real sipp calls in network namespaces (root).

Run from the repository root: ``.venv/bin/python -m tools.captures --out tests/data``.
Records every capture of tests/infra/captures.py:COMMITTED into --out, the demo capture into
--examples, rewrites sip-udp4/sip-udp6/sip-udp4-frag into each encapsulation (tools/wrap.py),
then writes ``manifest.json`` (SIP message counts as tshark dissects them) and ``README.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tests.infra.captures import COMMITTED, EXAMPLE, CaptureSpec, missing_tools, record
from tests.infra.netns import stale_namespaces
from tests.infra.tshark import sip_messages
from tools.wrap import KINDS, wrap_file

README_HEAD = """\
# Test captures

Small captures recorded from real tools, the inputs of the tshark-vs-Otus comparison tests
(`tests/cli/test_run_vs_tshark.py`) and of the infrastructure self-tests (`tests/infra`).
Do not edit by hand: regenerate everything (root, sipp, tcpdump, tshark needed) with

    .venv/bin/python -m tools.captures --out tests/data --examples examples

or only the encapsulated rewrites with `.venv/bin/python -m tools.wrap --src tests/data
--out tests/data`. `manifest.json` holds the SIP message count tshark dissects from each file
(`tshark -o tcp.desegment_tcp_streams:TRUE -o sip.desegment_headers:TRUE
-o sip.desegment_body:TRUE -o ip.defragment:TRUE -o ipv6.defragment:TRUE -T json -Y sip`);
a self-test checks those counts.

## How the calls are made

Two network namespaces joined by a veth pair (`tests/infra/netns.py`): the UAC at 10.47.0.1 /
fd00:47::1 (port 5070), the UAS at 10.47.0.2 / fd00:47::2 (port 5060). TSO/GSO/GRO are off on
the veths so TCP segments and IP fragments are what a real wire carries; TX checksum offload is
left on (as on most veths), so many UDP/TCP checksums in these files are *not* valid: a decoder
must not drop on L4 checksums. `tests/infra/sipp.py` writes the scenarios: the "varied" UAC
sends per call OPTIONS, REGISTER, INVITE (SDP; padded with `a=` lines for the large-INVITE
files), ACK and BYE, with compact headers (`v: f: t: i: m: l:`) in OPTIONS and BYE over UDP, a
UTF-8 display name, User-Agent on requests and Server on responses; its UAS answers 200, 100,
180, 200 (SDP), 200. "builtin" is `sipp -sn uac` / `sipp -sn uas`. Every run is bounded:
`-m CALLS -r 5 -l 2 -timeout 30s`. tcpdump runs with `-U --immediate-mode -s 0` (without
immediate mode the last TPACKET_V3 block is lost when tcpdump is stopped).

VLAN: this kernel may lack CONFIG_VLAN_8021Q; then the VLAN link is built from a third
namespace where `tools/vlantag.py` relays frames between the hosts' access ports and a veth
trunk, adding the 802.1Q tag; tcpdump listens on the trunk end (incoming tags come back from
the kernel's packet auxdata through libpcap). With 802.1Q support the hosts use
`ip link add link ua0 name ua0v type vlan id 100` and tcpdump listens on the parent veth.

## Files
"""


def _versions() -> str:
    """The tool versions, one line each."""
    out = []
    for args in (["tshark", "--version"], ["tcpdump", "--version"], ["sipp", "-v"]):
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        text = (proc.stdout + proc.stderr).strip().splitlines()
        line = next((t.strip() for t in text if any(c.isdigit() for c in t)), "?")
        out.append(f"- `{args[0]}`: {line}")
    out.append(f"- Python {sys.version.split()[0]}, scapy (tools/wrap.py)")
    out.append(f"- kernel {Path('/proc/sys/kernel/osrelease').read_text().strip()}")
    return "\n".join(out)


def _linktype(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "little")


def main(argv: list[str] | None = None) -> int:
    """Record, wrap, count, document."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/data"))
    ap.add_argument("--examples", type=Path, default=Path("examples"))
    ap.add_argument("--only", nargs="*", default=None, help="record only these file names")
    ap.add_argument("--no-record", action="store_true", help="only wrap, count and document")
    args = ap.parse_args(argv)
    missing = missing_tools()
    if missing and not args.no_record:
        print(f"missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    specs: list[tuple[CaptureSpec, Path]] = [(s, args.out) for s in COMMITTED]
    specs.append((EXAMPLE, args.examples))
    if not args.no_record:
        for spec, out_dir in specs:
            if args.only is None or spec.name in args.only:
                print(f"recording {out_dir / spec.name}", flush=True)
                record(spec, out_dir)
    wrapped = [wrap_file(k, args.out, args.out) for k in KINDS.values()]
    manifest: dict[str, dict[str, object]] = {}
    lines = [README_HEAD]
    for spec, out_dir in specs:
        path = out_dir / spec.name
        msgs = sip_messages(path)
        rel = path.name if out_dir == args.out else f"../../{out_dir.name}/{path.name}"
        manifest[rel] = {"messages": len(msgs), "linktype": _linktype(path)}
        lines.append(
            f"- `{rel}` — {len(msgs)} SIP messages, linktype {_linktype(path)}: {spec.describe()}."
        )
    lines.append(
        "\nEncapsulations, made by `tools/wrap.py` from the files above (inner frames "
        "byte for byte, original timestamps, non-IP frames left out):\n"
    )
    for kind, path in zip(KINDS.values(), wrapped, strict=True):
        msgs = sip_messages(path)
        manifest[path.name] = {"messages": len(msgs), "linktype": 1}
        tunnels = ", ".join(f"{t}" + (f" id {i}" if i is not None else "") for t, i in kind.tunnels)
        lines.append(
            f"- `{path.name}` — {len(msgs)} SIP messages, from `{kind.source}`: "
            f"VLANs {list(kind.vlans) or '-'}, tunnels {tunnels or '-'}."
        )
    lines.append("\n## Tool versions at the last recording\n")
    lines.append(_versions())
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (args.out / "README.md").write_text("\n".join(lines) + "\n")
    stale = stale_namespaces()
    if stale:
        print(f"warning: leaked namespaces of dead processes: {stale}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
