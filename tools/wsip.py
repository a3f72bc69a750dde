"""Carry the SIP messages of a UDP capture over one WebSocket connection (RFC 7118); scapy.

Run: ``.venv/bin/python -m tools.wsip tests/data/sip-udp4.pcap /tmp/ws.pcap``. Each datagram
of the source becomes one WebSocket message in its direction (the side that sent the first
datagram is the client), on a TCP connection opened with an HTTP Upgrade asking for the ``sip``
subprotocol: client frames masked, server frames not. Options: split client messages into
``fragments`` frames (continuations), put a ping between fragments (``pings``), cut the TCP
byte stream into segments of at most ``mss`` bytes (several frames per segment, or frames
across segments), and ``binary`` frames instead of text. Timestamps are the datagrams'.
"""

from __future__ import annotations

import argparse
import random
import struct
from dataclasses import dataclass
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP, defragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from tools.pcapio import Frame, read_pcap, write_pcap

__all__ = ["WsOptions", "frame", "sip_over_websocket"]

CLIENT = ("02:00:00:00:0a:01", "10.47.0.1", 40000)
SERVER = ("02:00:00:00:0a:02", "10.47.0.2", 80)
UPGRADE = (
    b"GET /ws HTTP/1.1\r\n"
    b"Host: 10.47.0.2\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://10.47.0.1\r\n"
    b"Sec-WebSocket-Protocol: sip\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: sip\r\n\r\n"
)


@dataclass(frozen=True, slots=True)
class WsOptions:
    """How the messages are framed and segmented."""

    fragments: int = 1  # frames per client message (continuations after the first)
    pings: bool = False  # a ping between fragments (control frames may interleave)
    mss: int = 1460  # largest TCP segment
    binary: bool = False
    seed: int = 1


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One WebSocket frame (RFC 6455 §5.2)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + masked


def _message_frames(msg: bytes, client: bool, o: WsOptions, rng: random.Random) -> bytes:
    op = 2 if o.binary else 1
    parts = 1 if not client else max(1, min(o.fragments, len(msg)))
    cuts = sorted(rng.sample(range(1, len(msg)), parts - 1)) if parts > 1 else []
    pieces = [msg[a:b] for a, b in zip([0, *cuts], [*cuts, len(msg)], strict=True)]
    out = b""
    for i, piece in enumerate(pieces):
        mask = rng.randbytes(4) if client else None
        out += frame(op if i == 0 else 0, piece, fin=i == len(pieces) - 1, mask=mask)
        if o.pings and i < len(pieces) - 1:
            out += frame(9, b"ping", mask=rng.randbytes(4) if client else None)
    return out


def sip_over_websocket(src: str | Path, o: WsOptions | None = None) -> list[Frame]:
    """Frames of one WebSocket connection carrying every UDP SIP payload of ``src``."""
    o = o or WsOptions()
    rng = random.Random(o.seed)
    _, frames = read_pcap(src)
    pkts = []
    for f in frames:
        p = Ether(f.data)
        p.time = f.ts_us  # scapy keeps it through defragment
        pkts.append(p)
    msgs: list[tuple[int, bool, bytes]] = []  # (ts, from client, payload)
    first = None
    for p in defragment(pkts):
        if UDP not in p or IP not in p:
            continue
        first = first or p[IP].src
        msgs.append((int(p.time), p[IP].src == first, bytes(p[UDP].payload)))
    if not msgs:
        raise ValueError(f"{src}: no UDP payloads")
    seq = {True: 1_000_000, False: 2_000_000}
    out: list[Frame] = []

    def send(ts: int, client: bool, flags: str, data: bytes = b"") -> None:
        (smac, sip, sport), (dmac, dip, dport) = (CLIENT, SERVER) if client else (SERVER, CLIENT)
        for off in range(0, max(len(data), 1), o.mss):
            chunk = data[off : off + o.mss]
            pkt = (
                Ether(src=smac, dst=dmac)
                / IP(src=sip, dst=dip)
                / TCP(sport=sport, dport=dport, seq=seq[client], ack=seq[not client], flags=flags)
            )
            if chunk:
                pkt = pkt / Raw(chunk)
            out.append(Frame(ts + len(out), bytes(pkt)))
            seq[client] = (seq[client] + len(chunk) + ("S" in flags) + ("F" in flags)) & 0xFFFFFFFF

    t0 = msgs[0][0] - 1000
    send(t0, True, "S")
    send(t0, False, "SA")
    send(t0, True, "A")
    send(t0, True, "PA", UPGRADE)
    send(t0, False, "PA", SWITCH)
    for ts, client, payload in msgs:
        send(max(ts, out[-1].ts_us + 1), client, "PA", _message_frames(payload, client, o, rng))
    end = out[-1].ts_us + 1000
    send(end, True, "FA")
    send(end, False, "FA")
    send(end, True, "A")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: SRC OUT and the framing options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--fragments", type=int, default=1)
    ap.add_argument("--pings", action="store_true")
    ap.add_argument("--mss", type=int, default=1460)
    ap.add_argument("--binary", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    opts = WsOptions(a.fragments, a.pings, a.mss, a.binary, a.seed)
    write_pcap(a.dst, sip_over_websocket(a.src, opts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
