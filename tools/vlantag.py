"""Userspace 802.1Q relay: forward frames between access ports and trunk ports, tagging them.

Used by tests/infra/netns.py when the kernel has no CONFIG_VLAN_8021Q: run inside a namespace
holding both ends of a veth "trunk" (tt0 <-> tt1) and one access port per SIP host. For each
``ACCESS:TRUNK`` pair, frames from ACCESS leave TRUNK with a tag; frames arriving on TRUNK
(the kernel has already moved their tag into packet metadata) leave ACCESS untagged.
Prints ``ready`` once every socket is bound; exits on SIGTERM or after --max-seconds.
"""

from __future__ import annotations

import argparse
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
TPID = 0x8100


def _open(iface: str) -> socket.socket:
    """A raw packet socket bound to one interface."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.setblocking(False)
    return s


def main(argv: list[str] | None = None) -> int:
    """Relay until terminated."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vid", type=int, required=True)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("pairs", nargs="+", help="ACCESS:TRUNK interface pairs")
    args = ap.parse_args(argv)
    tag = struct.pack("!HH", TPID, args.vid & 0x0FFF)
    route: dict[int, tuple[socket.socket, bool]] = {}  # fd -> (out socket, add tag)
    socks: list[socket.socket] = []
    for pair in args.pairs:
        access_if, trunk_if = pair.split(":")
        access, trunk = _open(access_if), _open(trunk_if)
        socks += [access, trunk]
        route[access.fileno()] = (trunk, True)
        route[trunk.fileno()] = (access, False)
    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print("ready", flush=True)
    deadline = time.monotonic() + args.max_seconds
    by_fd = {s.fileno(): s for s in socks}
    errors, last_error = 0, ""
    while not stop and time.monotonic() < deadline:
        try:
            ready, _, _ = select.select(socks, [], [], 0.2)
        except InterruptedError:
            continue
        for s in ready:
            out, add_tag = route[s.fileno()]
            for _ in range(64):
                try:
                    data, addr = by_fd[s.fileno()].recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                if add_tag:
                    data = data[:12] + tag + data[12:]
                elif data[12:14] == b"\x81\x00":  # tag left inline: strip it
                    data = data[:12] + data[16:]
                try:
                    out.send(data)
                except OSError as exc:
                    errors += 1
                    last_error = str(exc)
    for s in socks:
        s.close()
    if errors:
        print(f"vlantag: {errors} send errors, last: {last_error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
