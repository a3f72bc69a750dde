"""Pieces every decoder layer shares: ethertypes, bounds, drop reasons, address strings.

A layer that cannot go on returns its drop reason (a ``str``) instead of its usual tuple.
"""

from __future__ import annotations

from socket import AF_INET6, inet_ntoa, inet_ntop

__all__ = [
    "DECODE_DROPS",
    "ETH_IPV4",
    "ETH_IPV6",
    "ETH_TEB",
    "MAX_TUNNELS",
    "MAX_VLANS",
    "REASSEMBLY_DROPS",
    "ntoa",
]

# Ethertypes the decoder dispatches on; ETH_TEB ("transparent Ethernet bridging") doubles as the
# internal marker for "an Ethernet frame starts here", whichever tunnel carried it.
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_TEB = 0x6558

# Nesting bounds: hostile input can stack headers until the frame ends, real traffic never does.
MAX_TUNNELS = 8
MAX_VLANS = 8

# Every way a frame can end in the decoder (``decode.drop.<reason>``), listed so stats() reports
# them all, zero or not.
DECODE_DROPS = (
    "truncated",  # a header does not fit in the captured bytes
    "malformed",  # a field holds an impossible value (IP version, header length, VXLAN flags)
    "bad_length",  # an IP/UDP length field disagrees with the bytes present
    "not_ip",  # ARP, LLDP, STP, MPLS...
    "not_udp_tcp",  # ICMP, ESP, SCTP...
    "unsupported_link",  # a pcap link type the decoder does not know
    "tunnel_disabled",  # GRE/ERSPAN/IPIP seen but not named in DecoderOptions.tunnels
    "tunnel_unsupported",  # GRE version 1 (PPTP), GRE source routing
    "tunnel_too_deep",  # more than MAX_TUNNELS tunnel layers
    "vlan_too_deep",  # more than MAX_VLANS VLAN tags in one Ethernet header
    "fragment",  # an IP fragment while reassembly is off
    "internal_error",  # a decoder bug met by some input: counted, never raised
)

# Every way held fragments can end in reassembly (``reassembly.drop.<reason>``), counted per
# frame held. A completed datagram that fails to decode further is counted here under the
# decode reason (bad_length, not_ip...), once per frame it was built from.
REASSEMBLY_DROPS = (
    "timeout",
    "evicted",
    "too_many_fragments",
    "too_big",
    "overlap",
    "duplicate",
    "inconsistent",  # two different last fragments, or data past the last fragment's end
    "malformed",  # an empty fragment, or a non-last one whose length is not a multiple of 8
)

_ADDR_CACHE_LIMIT = 16384


def ntoa(cache: dict[bytes, str], raw: bytes) -> str:
    """The text form of a 4- or 16-byte address (as tshark prints it), through a bounded cache."""
    s = cache.get(raw)
    if s is None:
        if len(cache) >= _ADDR_CACHE_LIMIT:
            cache.clear()  # cheaper than LRU bookkeeping; endpoints repeat, so it refills fast
        s = inet_ntoa(raw) if len(raw) == 4 else inet_ntop(AF_INET6, raw)
        cache[raw] = s
    return s
