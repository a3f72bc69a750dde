"""Decoder options: which tunnels to open, on which ports, and the reassembly limits."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ALL_TUNNELS", "DecoderOptions"]

ALL_TUNNELS = frozenset({"vxlan", "geneve", "gre", "erspan", "ipip"})


@dataclass(slots=True)
class DecoderOptions:
    """Plain options for :class:`otus.decoder.Decoder` (the task spec maps onto these)."""

    tunnels: frozenset[str] = ALL_TUNNELS  # "ipip" covers IPv4/IPv6 in IPv4/IPv6
    vxlan_ports: frozenset[int] = field(default_factory=lambda: frozenset({4789}))
    geneve_ports: frozenset[int] = field(default_factory=lambda: frozenset({6081}))
    ip_reassembly: bool = True
    max_datagrams: int = 1024  # datagrams being reassembled at once, per worker
    max_fragments: int = 64  # fragments held for one datagram
    max_datagram_size: int = 65535  # bytes of a reassembled IP payload + header
    reassembly_timeout_us: int = 30_000_000  # like Linux's ipfrag_time (30 s)
