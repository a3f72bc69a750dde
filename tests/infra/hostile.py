"""A deterministic (seeded) hostile capture: every way a frame or a SIP message can be wrong.

:func:`write_hostile` writes one Ethernet pcap mixing valid control messages with truncated
frames, lying lengths, random and fuzzed payloads, orphan/overlapping fragments (IPv4 and
IPv6), absurd and non-UTF-8 SIP, odd link layers and hostile TCP streams; it returns what it
wrote per category. :func:`write_fragment_flood` writes never-completed fragments, one datagram
id each. Same seed, same bytes.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.infra.frames import (
    BASE_TS,
    MAC_A,
    MAC_B,
    SIP_PORT,
    eth,
    frag4,
    frag6,
    ipv4,
    ipv6,
    sdp,
    sip_message,
    tcp,
    udp,
    udp6,
)
from tools.pcapio import PcapWriter

__all__ = ["HostileSummary", "write_fragment_flood", "write_hostile"]


@dataclass(slots=True)
class HostileSummary:
    """What a hostile capture holds: frames per category and the valid SIP messages in it."""

    frames: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    valid_sip: int = 0  # control messages a correct decoder + parser must report
    control_call_ids: list[str] = field(default_factory=list)  # their Call-IDs, in order


# -- the capture ---------------------------------------------------------------------------


class _Out:
    """Counts frames per category while writing them."""

    def __init__(self, w: PcapWriter, summary: HostileSummary) -> None:
        self.w, self.s, self.ts = w, summary, BASE_TS

    def put(self, category: str, frame: bytes, orig_len: int = 0) -> None:
        self.ts += 10
        self.w.write(self.ts, frame, orig_len)
        self.s.frames += 1
        self.s.by_category[category] = self.s.by_category.get(category, 0) + 1

    def valid(self, call: int) -> None:
        self.s.valid_sip += 1
        self.s.control_call_ids.append(f"hostile-{call}@10.66.0.1")


def _controls(o: _Out, n: int) -> None:
    for i in range(n):
        o.put("control", eth(ipv4(udp(sip_message(1000 + i)), ident=1000 + i)))
        o.valid(1000 + i)
    o.put("control", eth(ipv6(udp6(sip_message(2000 + n))), 0x86DD))
    o.valid(2000 + n)


def _truncated(o: _Out) -> None:
    full = eth(ipv4(udp(sip_message(1, body=sdp(4)))))
    for cut in range(len(full)):
        o.put("truncated", full[:cut], len(full))  # snaplen-style: orig_len says more
        if cut % 7 == 0:
            o.put("truncated", full[:cut])  # the frame itself claims to be whole
    for full in (eth(ipv6(udp6(sip_message(2))), 0x86DD), eth(ipv4(tcp(sip_message(3), 1), 6))):
        for cut in range(0, 90):
            o.put("truncated", full[:cut])


def _lying_lengths(o: _Out) -> None:
    seg = udp(sip_message(4))
    actual = 20 + len(seg)
    for tl in (0, 1, 19, 20, 27, actual - 1, actual + 1, actual + 100, 65535):
        o.put("lying_ip_length", eth(ipv4(seg, total_len=tl)))
    for ihl in (0, 1, 4, 6, 15):
        o.put("lying_ihl", eth(ipv4(seg, ihl=ihl)))
    body = sip_message(5)
    for ul in (0, 1, 7, 8, 9, len(body) + 7, len(body) + 9, len(body) + 1000, 65535):
        o.put("lying_udp_length", eth(ipv4(udp(body, length=ul))))
    for pl in (0, 7, 8, 39, len(body) + 7, len(body) + 9, 65535):
        o.put("lying_ipv6_length", eth(ipv6(udp6(body), plen=pl), 0x86DD))
    for doff in (0, 1, 4, 6, 15):
        o.put("lying_tcp_offset", eth(ipv4(tcp(body, 1, doff=doff), 6)))
    o.put("lying_ip_version", eth(b"\x70" + ipv4(seg)[1:]))
    o.put("lying_ip_version", eth(ipv6(udp6(body)), 0x0800))  # IPv6 behind an IPv4 ethertype


def _random_payloads(o: _Out, rng: random.Random, n: int) -> None:
    prefixes = [b"", b"SIP/2.0 ", b"INVITE ", b"SIP/2.0 200 OK\r\n", b"OPTIONS sip:x SIP/2.0\r\n"]
    for i in range(n):
        payload = rng.choice(prefixes) + rng.randbytes(rng.randrange(0, 1400))
        if i % 4 == 3:
            o.put(
                "random_payload", eth(ipv4(tcp(payload, rng.getrandbits(32), sport=40000 + i), 6))
            )
        else:
            o.put("random_payload", eth(ipv4(udp(payload, sport=rng.randrange(1, 65536)))))


_MUTATIONS = (
    "flip",
    "delete_line",
    "dup_line",
    "colon",
    "nul",
    "lf_only",
    "cut_headers",
    "long_token",
    "no_crlf",
    "swap_case",
    "space_name",
    "empty_value",
)


def _fuzz(msg: bytes, rng: random.Random, kind: str) -> bytes:
    lines = msg.split(b"\r\n")
    if kind == "flip":
        b = bytearray(msg)
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == "delete_line":
        del lines[rng.randrange(len(lines) - 2)]
    elif kind == "dup_line":
        i = rng.randrange(1, len(lines) - 2)
        lines.insert(i, lines[i])
    elif kind == "colon":
        i = rng.randrange(1, len(lines) - 2)
        lines[i] = lines[i].replace(b":", rng.choice([b"", b"::", b" : ", b"\t:"]), 1)
    elif kind == "nul":
        i = rng.randrange(len(msg))
        return msg[:i] + b"\0" + msg[i:]
    elif kind == "lf_only":
        return msg.replace(b"\r\n", b"\n")
    elif kind == "cut_headers":
        return msg[: rng.randrange(len(msg))]
    elif kind == "long_token":
        i = rng.randrange(len(lines) - 2)
        lines[i] += b"x" * rng.randrange(1000, 8000)
    elif kind == "no_crlf":
        return msg.replace(b"\r\n\r\n", b"\r\n")
    elif kind == "swap_case":
        return msg.swapcase()
    elif kind == "space_name":
        i = rng.randrange(1, len(lines) - 2)
        lines[i] = b" " + lines[i]  # a folded continuation line in the wrong place
    elif kind == "empty_value":
        i = rng.randrange(1, len(lines) - 2)
        lines[i] = lines[i].split(b":", 1)[0] + b":"
    return b"\r\n".join(lines)


def _fuzzed(o: _Out, rng: random.Random, n: int) -> None:
    base = sip_message(6, body=sdp(3), extra=b"Contact: <sip:alice@10.66.0.1:5070>\r\n")
    for i in range(n):
        kind = _MUTATIONS[i % len(_MUTATIONS)]
        o.put(f"fuzzed_{kind}", eth(ipv4(udp(_fuzz(base, rng, kind)), ident=3000 + i)))


def _fragments(o: _Out) -> None:
    dgram = udp(sip_message(7, body=sdp(200)))  # ~3.3 KB: 3 fragments
    parts = frag4(dgram, ident=0x4242)
    o.put("frag4_orphan", eth(parts[1]))  # middle only
    o.put("frag4_orphan", eth(parts[-1]))  # last only
    o.put("frag4_orphan", eth(frag4(dgram, ident=0x4243)[0]))  # first only, never completed
    # Duplicate, overlapping (same and different bytes), reversed order, and a tiny-step chain.
    a, b = frag4(dgram, ident=0x4244), frag4(dgram, ident=0x4245)
    for p in (a[0], a[0], a[1], a[1], a[2]):
        o.put("frag4_duplicate", eth(p))
    for p in reversed(b):
        o.put("frag4_reversed", eth(p))
    o.put("frag4_overlap", eth(ipv4(dgram[:1480], ident=0x4246, frag=0x2000)))
    o.put("frag4_overlap", eth(ipv4(b"Z" * 800, ident=0x4246, frag=0x2000 | (1000 // 8))))
    o.put("frag4_overlap", eth(ipv4(dgram[1480:], ident=0x4246, frag=1480 // 8)))
    for off in range(0, 64, 8):
        o.put("frag4_tiny", eth(ipv4(dgram[off : off + 8], ident=0x4247, frag=0x2000 | off // 8)))
    o.put("frag4_beyond_64k", eth(ipv4(b"A" * 1480, ident=0x4248, frag=0x2000 | 8100)))
    o.put("frag4_beyond_64k", eth(ipv4(b"A" * 1480, ident=0x4248, frag=8189)))
    o.put("frag4_zero_len", eth(ipv4(b"", ident=0x4249, frag=0x2000 | 10)))
    o.put("frag4_odd_len", eth(ipv4(b"A" * 13, ident=0x424A, frag=0x2000)))  # not a multiple of 8
    # IPv6: orphan, overlap, atomic fragment (valid: RFC 6946), fragment of a fragment header.
    d6 = udp6(sip_message(8, body=sdp(150)))
    f6 = [d6[i : i + 1448] for i in range(0, len(d6), 1448)]
    o.put("frag6_orphan", eth(ipv6(frag6(f6[1], 17, 1448 // 8, True, 0x600D), 44), 0x86DD))
    o.put("frag6_orphan", eth(ipv6(frag6(f6[0], 17, 0, True, 0x600E), 44), 0x86DD))
    o.put("frag6_overlap", eth(ipv6(frag6(f6[0], 17, 0, True, 0x600F), 44), 0x86DD))
    o.put("frag6_overlap", eth(ipv6(frag6(b"Q" * 1000, 17, 100, True, 0x600F), 44), 0x86DD))
    for i, p in enumerate(f6):
        more = i < len(f6) - 1
        o.put("frag6_overlap", eth(ipv6(frag6(p, 17, i * 1448 // 8, more, 0x600F), 44), 0x86DD))
    o.put("frag6_atomic", eth(ipv6(frag6(udp6(sip_message(9)), 17, 0, False, 0x6010), 44), 0x86DD))
    o.put(
        "frag6_nested",
        eth(ipv6(frag6(frag6(b"x" * 16, 17, 0, True, 1), 44, 0, True, 0x6011), 44), 0x86DD),
    )


def _absurd_sip(o: _Out) -> None:
    def put(cat: str, payload: bytes) -> None:
        dgram = udp(payload)
        assert len(dgram) + 20 <= 65535, cat
        if len(dgram) + 20 <= 1500:
            o.put(cat, eth(ipv4(dgram)))
        else:
            o.put(cat + "_jumbo", eth(ipv4(dgram)))  # one frame, as GRO/TSO captures show
            for p in frag4(dgram, ident=0x5000 + o.s.frames):
                o.put(cat + "_fragmented", eth(p))

    put("cl_huge", sip_message(10, body=b"v=0\r\n", content_length=b"99999999"))
    put("cl_negative", sip_message(11, content_length=b"-1"))
    put("cl_not_a_number", sip_message(12, content_length=b"abc"))
    put("cl_overflow", sip_message(13, content_length=b"18446744073709551617"))
    put("cl_short_body", sip_message(14, body=b"v=0\r\n", content_length=b"6"))
    put("cl_twice", sip_message(15, extra=b"Content-Length: 5\r\n"))
    base = sip_message(16)
    for name in (b"Call-ID", b"CSeq", b"From", b"To", b"Via"):
        lines = [ln for ln in base.split(b"\r\n") if not ln.startswith(name + b":")]
        put(f"missing_{name.decode().lower()}", b"\r\n".join(lines))
    put("cseq_garbage", base.replace(b"CSeq: 16 INVITE", b"CSeq: x INVITE"))
    put("cseq_huge", base.replace(b"CSeq: 16 INVITE", b"CSeq: 99999999999999999999 INVITE"))
    put("cseq_no_method", base.replace(b"CSeq: 16 INVITE", b"CSeq: 16"))
    put("status_zero", b"SIP/2.0 0 Zero\r\n" + base.split(b"\r\n", 1)[1])
    put("status_huge", b"SIP/2.0 99999 Huge\r\n" + base.split(b"\r\n", 1)[1])
    put("no_version", base.replace(b" SIP/2.0\r\n", b"\r\n", 1))
    put("long_method", b"X" * 8000 + b" sip:a SIP/2.0\r\n\r\n")
    put("start_line_only", b"INVITE sip:bob@10.66.0.2 SIP/2.0\r\n")
    put("empty", b"")
    put("blank_lines", b"\r\n\r\n\r\n\r\n")
    put("keepalive", b"\r\n\r\n")
    vias = b"".join(
        f"Via: SIP/2.0/UDP 10.66.{i >> 8 & 255}.{i & 255}:5060;branch=z9hG4bK{i}\r\n".encode()
        for i in range(1000)
    )
    put("via_1000", sip_message(17, extra=vias))  # ~54 KB: near what one datagram holds
    put(
        "via_comma_joined",
        sip_message(
            18,
            extra=b"Via: "
            + b", ".join(f"SIP/2.0/UDP h{i}:5060;branch=z9hG4bK{i}".encode() for i in range(1500))
            + b"\r\n",
        ),
    )
    put("header_line_60k", sip_message(19, extra=b"Subject: " + b"A" * 60_000 + b"\r\n"))
    put("folded_headers", sip_message(20, extra=b"Subject: first\r\n second\r\n\tthird\r\n"))
    put(
        "many_headers",
        sip_message(21, extra=b"".join(f"X-H{i}: v\r\n".encode() for i in range(3000))),
    )


def _non_utf8(o: _Out) -> None:
    cases = {
        "latin1_user_agent": b"User-Agent: Caf\xe9 \xc0\xaf overlong\r\n",
        "invalid_display": b'P-Asserted-Identity: "\xff\xfe\xfd" <sip:x@y>\r\n',
        "escape_sequences": b"Subject: \x1b[2J\x1b[31mred\x1b[0m\x07\r\n",
        "nul_in_header": b"Subject: a\x00b\r\n",
        "surrogates": b"Subject: \xed\xa0\x80\xed\xbf\xbf\r\n",
    }
    for i, (cat, extra) in enumerate(cases.items()):
        o.put(f"non_utf8_{cat}", eth(ipv4(udp(sip_message(30 + i, extra=extra)))))
    bad_callid = sip_message(40).replace(b"hostile-40@", b"\x80\x81\xfe-40@")
    o.put("non_utf8_call_id", eth(ipv4(udp(bad_callid))))
    o.put("non_utf8_start_line", eth(ipv4(udp(b"INV\xc9TE sip:\xff SIP/2.0\r\n\r\n"))))


def _link_layer(o: _Out) -> None:
    inner = ipv4(udp(sip_message(50)))
    o.put("unknown_ethertype", eth(inner, 0x1234))
    o.put("runt_frame", b"\x01\x02\x03")
    o.put("empty_frame", b"")
    o.put("truncated_vlan_tag", eth(b"\x00", 0x8100))
    o.put(
        "vlan_stack_100",
        MAC_B
        + MAC_A
        + b"".join(struct.pack("!HH", 0x8100, i) for i in range(1, 101))
        + b"\x08\x00"
        + inner,
    )
    vx = b"\x08\x00\x00\x00\x00\x10\x00\x00"  # VXLAN VNI 16
    o.put("vxlan_truncated_inner", eth(ipv4(udp(vx + b"\x02\x00", sport=1234, dport=4789))))
    bomb = eth(inner)
    for _ in range(40):  # VXLAN in VXLAN, 40 deep
        bomb = eth(ipv4(udp(vx + bomb, sport=1234, dport=4789)))
    o.put("vxlan_nesting_40", bomb)
    o.put("gre_unknown_proto", eth(ipv4(b"\x00\x00\x12\x34" + inner, 47)))
    o.put("gre_routing_bit", eth(ipv4(b"\x40\x00\x08\x00" + inner, 47)))
    o.put("gre_version_1", eth(ipv4(b"\x00\x01\x08\x00" + inner, 47)))
    o.put("ipip_truncated", eth(ipv4(inner[:10], 4)))
    chain = b"".join(
        bytes([60 if i < 49 else 17]) + b"\x00\x01\x04\x00\x00\x00\x00" for i in range(50)
    )
    o.put("ipv6_ext_chain_50", eth(ipv6(chain + udp6(sip_message(51)), 60), 0x86DD))
    o.put("ipv6_ext_beyond", eth(ipv6(b"\x11\xff" + b"\x00" * 6, 60), 0x86DD))
    o.put("ipv4_options_valid", eth(ipv4(udp(sip_message(52)), ihl=6, options=b"\x01\x01\x01\x00")))
    o.put("ipv4_options_bogus", eth(ipv4(udp(sip_message(53)), ihl=6, options=b"\x83\xff\x00\x00")))
    o.valid(52)  # ipv4_options_valid is a well-formed SIP message behind IP options


def _tcp_streams(o: _Out) -> None:
    seq = 1_000_000

    def stream(cat: str, data: bytes, sport: int, seg: int = 1460) -> None:
        s = seq
        o.put(cat, eth(ipv4(tcp(b"", s - 1, sport=sport, flags=0x02), 6)))  # SYN
        for off in range(0, len(data), seg):
            o.put(cat, eth(ipv4(tcp(data[off : off + seg], s + off, sport=sport), 6)))

    vias = b"".join(
        f"Via: SIP/2.0/TCP 10.66.{i >> 8 & 255}.{i & 255}:5060;branch=z9hG4bK{i}\r\n".encode()
        for i in range(10_000)
    )
    stream("tcp_via_10000", sip_message(60, extra=vias), 41000)
    endless = b"INVITE sip:bob@10.66.0.2 SIP/2.0\r\n" + b"X-Endless: " + b"B" * 200_000
    stream("tcp_endless_header", endless, 41001)
    stream(
        "tcp_cl_beyond_bound", sip_message(61, content_length=b"50000000") + b"v" * 30_000, 41002
    )


def write_hostile(
    path: str | Path,
    *,
    seed: int = 1,
    random_payloads: int = 300,
    fuzzed: int = 600,
    controls: int = 5,
) -> HostileSummary:
    """Write the hostile capture to ``path``; deterministic for a given seed and sizes."""
    rng = random.Random(seed)
    summary = HostileSummary()
    with PcapWriter(path) as w:
        o = _Out(w, summary)
        _controls(o, controls)
        _truncated(o)
        _lying_lengths(o)
        _random_payloads(o, rng, random_payloads)
        _fuzzed(o, rng, fuzzed)
        _fragments(o)
        _absurd_sip(o)
        _non_utf8(o)
        _link_layer(o)
        _tcp_streams(o)
        _controls(o, controls)  # still parsing after all that
    return summary


def _flood_frames(count: int, rng: random.Random) -> Iterator[bytes]:
    chunk = b"F" * 64
    for i in range(count):
        if i % 2:
            pkt = ipv6(frag6(chunk, 17, rng.randrange(0, 8000), True, i), 44)
            yield eth(pkt, 0x86DD)
        else:
            first = i % 4 == 0  # half the v4 ones are first fragments (they carry ports)
            frag = 0x2000 | (0 if first else rng.randrange(1, 8000))
            payload = udp(chunk, sport=5070, dport=SIP_PORT)[:72] if first else chunk
            yield eth(
                ipv4(
                    payload,
                    ident=i & 0xFFFF,
                    frag=frag,
                    src=bytes([10, 67, (i >> 24) & 255, (i >> 16) & 255]),
                )
            )


def write_fragment_flood(path: str | Path, count: int = 100_000, *, seed: int = 1) -> int:
    """Write ``count`` fragments of distinct, never-completed datagrams (IPv4 and IPv6)."""
    rng = random.Random(seed)
    ts = BASE_TS
    with PcapWriter(path) as w:
        for frame in _flood_frames(count, rng):
            ts += 1
            w.write(ts, frame)
        return w.count
