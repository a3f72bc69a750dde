"""tcpdump filter expressions compiled by libpcap (ctypes) and attached with SO_ATTACH_FILTER.

The kernel runs the filter on the frame as the socket sees it: under ``SOCK_RAW`` (Ethernet) the
802.1Q tag has already been moved out of the frame into metadata, so ``vlan`` never matches and
``udp port 5060`` matches tagged and untagged frames alike. Under ``SOCK_DGRAM`` (``any``, cooked
SLL2) the link header does not exist in the kernel's view; like libpcap we rewrite loads of its
fields into ancillary loads and shift the rest by its length.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import threading
from collections.abc import Sequence

from otus.core.errors import CaptureError, CaptureInputError
from otus.core.packet import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2

from .consts import (
    BPF_ABS,
    BPF_IND,
    BPF_INSN,
    BPF_JEQ,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_MAXINSNS,
    BPF_MSH,
    BPF_RET,
    BPF_W,
    PACKET_OUTGOING,
    SKF_AD_HATYPE,
    SKF_AD_IFINDEX,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    SKF_AD_PROTOCOL,
    SLL2_HDR_LEN,
    SO_ATTACH_FILTER,
    SOL_SOCKET,
)

__all__ = [
    "Insn",
    "attach",
    "compile_filter",
    "ifindex_prologue",
    "reject_all",
    "set_program",
    "skip_outgoing",
]

Insn = tuple[int, int, int, int]  # code, jt, jf, k

_PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
_PCAP_ERRBUF_SIZE = 256
# pcap_compile keeps global parser state in older libpcaps; one compile at a time.
_compile_lock = threading.Lock()
# SLL2 header fields the kernel exposes as ancillary data (the rest has no kernel equivalent).
_SLL2_FIELDS = {
    0: SKF_AD_PROTOCOL,
    4: SKF_AD_IFINDEX,
    8: SKF_AD_HATYPE,
    10: SKF_AD_PKTTYPE,
}


class _BpfInsn(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    )


class _BpfProgram(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn)))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_libpcap: ctypes.CDLL | None = None


def _pcap() -> ctypes.CDLL:
    """Load libpcap once and declare the five functions used."""
    global _libpcap  # noqa: PLW0603 - a lazily loaded shared library is process state
    if _libpcap is not None:
        return _libpcap
    name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise CaptureError(
            f"BPF filters need libpcap ({name} not loadable: {e}); install libpcap0.8"
        ) from e
    lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_compile.argtypes = (
        ctypes.c_void_p,
        ctypes.POINTER(_BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    )
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
    lib.pcap_freecode.restype = None
    lib.pcap_close.argtypes = (ctypes.c_void_p,)
    lib.pcap_close.restype = None
    _libpcap = lib
    return lib


def compile_filter(expr: str, linktype: int, snaplen: int) -> list[Insn]:
    """Compile a tcpdump expression for the socket's view of ``linktype`` frames."""
    if linktype not in (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2):
        raise CaptureError(f"cannot compile a filter for link type {linktype}")
    lib = _pcap()
    with _compile_lock:
        handle = lib.pcap_open_dead(linktype, snaplen)
        if not handle:
            raise CaptureError("libpcap: pcap_open_dead failed")
        try:
            prog = _BpfProgram()
            rc = lib.pcap_compile(
                handle, ctypes.byref(prog), expr.encode(), 1, _PCAP_NETMASK_UNKNOWN
            )
            if rc != 0:
                msg = (lib.pcap_geterr(handle) or b"unknown error").decode(errors="replace")
                raise CaptureInputError(f"invalid BPF filter {expr!r}: {msg}")
            try:
                insns = [
                    (i.code, i.jt, i.jf, i.k)
                    for i in (prog.bf_insns[n] for n in range(prog.bf_len))
                ]
            finally:
                lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(handle)
    if linktype == LINKTYPE_LINUX_SLL2:
        insns = _uncook(insns, expr)
    _kernel_check(insns, expr)
    return insns


def _kernel_check(insns: list[Insn], expr: str) -> None:
    """Have the kernel's checker judge the program now, on a throwaway unprivileged socket.

    libpcap emits programs the kernel refuses (``protochain``'s backward jump); without this
    the refusal would come at attach time, after the task was reported as running.
    """
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return  # no socket to probe with: the real attach still reports a refusal
    with probe:
        try:
            attach(probe, insns)
        except CaptureError as e:
            reason = str(e).removeprefix("cannot attach the BPF filter: ")
            raise CaptureInputError(
                f"invalid BPF filter {expr!r}: the kernel refuses the compiled program ({reason})"
            ) from None


def _uncook(insns: list[Insn], expr: str) -> list[Insn]:
    """Rewrite an SLL2 program for a SOCK_DGRAM socket, whose frames start at the network header."""
    out: list[Insn] = []
    for code, jt, jf, k0 in insns:
        k = k0
        cls = code & 0x07
        mode = code & 0xE0
        if cls in (BPF_LD, BPF_LDX) and mode in (BPF_ABS, BPF_IND, BPF_MSH) and k < SKF_AD_OFF:
            if k >= SLL2_HDR_LEN:
                k -= SLL2_HDR_LEN
            elif mode == BPF_ABS and cls == BPF_LD and k in _SLL2_FIELDS:
                k = SKF_AD_OFF + _SLL2_FIELDS[k]
            else:
                raise CaptureInputError(
                    f"BPF filter {expr!r} reads link-layer header bytes that a cooked (any) "
                    "capture does not have in the kernel; filter on the protocol, ifindex, "
                    "direction or anything from the network header on"
                )
        out.append((code, jt, jf, k))
    return out


def reject_all() -> list[Insn]:
    """A program that accepts nothing: the socket is silent until the real filter replaces it."""
    return [(BPF_RET | BPF_K, 0, 0, 0)]


def skip_outgoing(ifindex: int) -> list[Insn]:
    """Prologue that rejects what ``ifindex`` sends (loopback: each frame is also seen received)."""
    return [
        (BPF_LD | BPF_W | BPF_ABS, 0, 0, SKF_AD_OFF + SKF_AD_PKTTYPE),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 3, PACKET_OUTGOING),
        (BPF_LD | BPF_W | BPF_ABS, 0, 0, SKF_AD_OFF + SKF_AD_IFINDEX),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 1, ifindex),
        (BPF_RET | BPF_K, 0, 0, 0),
    ]


def ifindex_prologue(ifindexes: Sequence[int]) -> list[Insn]:
    """Prologue that rejects frames of any other interface (several interfaces, one socket)."""
    n = len(ifindexes)
    out: list[Insn] = [(BPF_LD | BPF_W | BPF_ABS, 0, 0, SKF_AD_OFF + SKF_AD_IFINDEX)]
    # Each test jumps past the remaining tests and the reject when it matches; jumps are relative,
    # so the program that follows needs no adjustment.
    for i, ifx in enumerate(ifindexes):
        out.append((BPF_JMP | BPF_JEQ | BPF_K, n - i, 0, ifx))
    out.append((BPF_RET | BPF_K, 0, 0, 0))
    return out


def attach(sock: socket.socket, insns: Sequence[Insn]) -> None:
    """Install ``insns`` on ``sock`` (replacing any filter it has) with SO_ATTACH_FILTER."""
    set_program(sock, SOL_SOCKET, SO_ATTACH_FILTER, insns, "attach the BPF filter")


def set_program(
    sock: socket.socket, level: int, option: int, insns: Sequence[Insn], what: str
) -> None:
    """Pass ``insns`` as a struct sock_fprog to setsockopt (a filter, a fanout program)."""
    if not insns or len(insns) > BPF_MAXINSNS:
        raise CaptureError(f"BPF program of {len(insns)} instructions (limit {BPF_MAXINSNS})")
    buf = ctypes.create_string_buffer(b"".join(BPF_INSN.pack(*i) for i in insns))
    fprog = _SockFprog(len(insns), ctypes.addressof(buf))
    try:
        sock.setsockopt(level, option, bytes(fprog))
    except OSError as e:
        raise CaptureError(f"cannot {what}: {e.strerror or e}") from e
