"""The ``hash`` fanout program: a symmetric flow hash in classic BPF that finds IP itself.

The kernel's own PACKET_FANOUT_HASH dissects a frame from ``skb->protocol`` at the network
header. A frame *sent* with its 802.1Q tag inside the data (a NIC without VLAN transmit offload,
such as virtio-net, or a frame written by a packet socket) has protocol 0x8100 while its network
header already points past the tag, so the kernel reads the IP header as a tag: the hash then
follows the datagram's length, one flow's packets spread over workers and the fragments of one
datagram are split between them (and never reassembled). PACKET_FANOUT_FLAG_DEFRAG does not help
there either, it only looks at protocol 0x0800.

This program (PACKET_FANOUT_CBPF, run by the kernel to pick a worker: ``result % workers``)
locates the IP header relative to the network header:

- protocol IPv4/IPv6: it is there;
- protocol 802.1Q/802.1ad on a received frame: the outer tag is in metadata, the network header
  is at the inner tag (QinQ), so IP follows 4 bytes later;
- the same on a sent frame: the network header is already at IP; its version nibble says which.

It hashes source XOR destination address, XOR source port XOR destination port for UDP, TCP and
SCTP unless the packet is an IP fragment (those hash on addresses only, like the kernel's, so
every fragment of a datagram lands on one worker), then mixes (multiply, high bits). Symmetric:
both directions of a flow reach the same worker. Anything else goes to worker 0.
"""

from __future__ import annotations

from .bpf import Insn
from .consts import (
    BPF_ABS,
    BPF_B,
    BPF_H,
    BPF_IND,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_RET,
    BPF_W,
    PACKET_OUTGOING,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    SKF_AD_PROTOCOL,
    SKF_NET_OFF,
)

__all__ = ["flow_hash_program"]

# Opcodes not used by the filter code (linux/filter.h).
_IMM, _MEM = 0x00, 0x60
_ST, _STX = 0x02, 0x03
_ALU, _MISC = 0x04, 0x07
_ADD, _MUL, _AND, _LSH, _RSH, _XOR = 0x00, 0x20, 0x50, 0x60, 0x70, 0xA0
_X = 0x08
_JA, _JEQ, _JSET = 0x00, 0x10, 0x40
_TAX, _TXA = 0x00, 0x80
_RET_A = 0x10

_ETH_IP, _ETH_IP6, _ETH_8021Q, _ETH_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
_L4_PORTS = (17, 6, 132)  # UDP, TCP, SCTP: ports at the start of the header
_GOLDEN = 0x9E3779B1

# Scratch memory: the IP header's offset from the network header, the hash so far, a port.
_M_L3, _M_HASH, _M_PORT = 0, 1, 2

# An assembly line: (code, k, true label, false label) or a label name.
_Line = tuple[int, int, str | None, str | None] | str


def _ld(size: int, off: int) -> _Line:
    """A load relative to the network header (``[nh + off]``)."""
    return (BPF_LD | size | BPF_ABS, SKF_NET_OFF + off, None, None)


def _ldi(size: int, off: int) -> _Line:
    """A load at ``[nh + X + off]``."""
    return (BPF_LD | size | BPF_IND, SKF_NET_OFF + off, None, None)


def _op(code: int, k: int = 0) -> _Line:
    return (code, k, None, None)


def _jeq(k: int, yes: str | None, no: str | None = None) -> _Line:
    return (BPF_JMP | _JEQ | BPF_K, k, yes, no)


def _goto(label: str) -> _Line:
    return (BPF_JMP | _JA, 0, label, None)


def _xor_into_hash() -> list[_Line]:
    """hash ^= A (X is clobbered, then restored to the IP header offset)."""
    return [
        _op(BPF_LDX | _MEM, _M_HASH),
        _op(_ALU | _XOR | _X),
        _op(_ST, _M_HASH),
        _op(BPF_LDX | _MEM, _M_L3),
    ]


def _source() -> list[_Line]:
    ports = [_jeq(p, "ports4") for p in _L4_PORTS]
    ports6 = [_jeq(p, "ports6") for p in _L4_PORTS]
    words6 = []
    for off in range(12, 40, 4):  # the other seven words of both IPv6 addresses
        words6 += [_ldi(BPF_W, off), *_xor_into_hash()]
    return [
        _op(BPF_LD | BPF_H | BPF_ABS, SKF_AD_OFF + SKF_AD_PROTOCOL),
        _jeq(_ETH_8021Q, "tagged"),
        _jeq(_ETH_8021AD, "tagged"),
        _op(BPF_LDX | _IMM, 0),
        _goto("l3"),
        "tagged",
        _op(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
        _jeq(PACKET_OUTGOING, None, "inner"),
        # Sent: the network header is at IP already; read its version.
        _op(BPF_LDX | _IMM, 0),
        _ld(BPF_B, 0),
        _op(_ALU | _RSH, 4),
        _jeq(4, "v4"),
        _jeq(6, "v6", "other"),
        "inner",
        # Received: outer tag in metadata, the network header at the inner tag.
        _op(BPF_LDX | _IMM, 4),
        _ld(BPF_H, 2),
        "l3",
        _jeq(_ETH_IP, "v4"),
        _jeq(_ETH_IP6, "v6", "other"),
        "v4",
        _op(_STX, _M_L3),
        _ldi(BPF_W, 12),
        _op(_ST, _M_HASH),
        _ldi(BPF_W, 16),
        *_xor_into_hash(),
        _ldi(BPF_H, 6),
        (BPF_JMP | _JSET | BPF_K, 0x3FFF, "done", None),  # MF or an offset: a fragment
        _ldi(BPF_B, 9),
        *ports,
        _goto("done"),
        "ports4",
        _ldi(BPF_B, 0),
        _op(_ALU | _AND, 0x0F),
        _op(_ALU | _LSH, 2),
        _op(_ALU | _ADD | _X),
        _op(_MISC | _TAX),
        _goto("ports"),
        "v6",
        _op(_STX, _M_L3),
        _ldi(BPF_W, 8),
        _op(_ST, _M_HASH),
        *words6,
        _ldi(BPF_B, 6),
        *ports6,
        _goto("done"),  # 44 (a fragment header) or another extension header: addresses only
        "ports6",
        _op(_MISC | _TXA),
        _op(_ALU | _ADD, 40),
        _op(_MISC | _TAX),
        "ports",
        _ldi(BPF_H, 0),
        _op(_ST, _M_PORT),
        _ldi(BPF_H, 2),
        _op(BPF_LDX | _MEM, _M_PORT),
        _op(_ALU | _XOR | _X),
        _op(BPF_LDX | _MEM, _M_HASH),
        _op(_ALU | _XOR | _X),
        _op(_ST, _M_HASH),
        "done",
        _op(BPF_LD | _MEM, _M_HASH),
        _op(_ALU | _MUL, _GOLDEN),
        _op(_ALU | _RSH, 16),
        _op(BPF_RET | _RET_A),
        "other",
        _op(BPF_RET | BPF_K, 0),
    ]


def _assemble(lines: list[_Line]) -> list[Insn]:
    """Resolve labels into forward jump offsets (classic BPF only jumps forward)."""
    where: dict[str, int] = {}
    n = 0
    for line in lines:
        if isinstance(line, str):
            where[line] = n
        else:
            n += 1
    out: list[Insn] = []
    for line in lines:
        if isinstance(line, str):
            continue
        code, k, yes, no = line
        pc = len(out)

        def rel(label: str | None, pc: int = pc) -> int:
            if label is None:
                return 0
            off = where[label] - pc - 1
            if not 0 <= off < 256:
                raise AssertionError(f"fanout program: jump to {label} out of range")
            return off

        if code == BPF_JMP | _JA:
            out.append((code, 0, 0, rel(yes)))
        elif code & 0x07 == BPF_JMP:
            out.append((code, rel(yes), rel(no), k))
        else:
            out.append((code, 0, 0, k))
    return out


def flow_hash_program() -> list[Insn]:
    """The classic BPF program for PACKET_FANOUT_CBPF (see the module docstring)."""
    return _assemble(_source())
