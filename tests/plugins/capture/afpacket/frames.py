"""Ethernet frames for the AF_PACKET tests, built with scapy (never on the hot path)."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


def eth(vlan: int | None = None, prio: int = 0, qinq: int | None = None) -> Packet:
    """An Ethernet header from A to B, optionally 802.1Q-tagged (inside an 802.1ad tag)."""
    p: Packet = Ether(src=MAC_A, dst=MAC_B)
    if qinq is not None:
        p = p / Dot1AD(vlan=qinq)
    if vlan is not None:
        p = p / Dot1Q(vlan=vlan, prio=prio)
    return p


def sip(n: int, size: int = 0) -> bytes:
    """A SIP-looking payload, padded to about ``size`` bytes."""
    body = f"OPTIONS sip:{n}@example.com SIP/2.0\r\nCall-ID: {n}\r\n\r\n".encode()
    return body + b"x" * max(0, size - len(body))


def udp4(n: int, sport: int = 5060, dport: int = 5060, size: int = 0, **kw: int) -> bytes:
    """A UDP/IPv4 frame."""
    return bytes(
        eth(**kw) / IP(src="10.1.0.1", dst="10.1.0.2", id=n) / UDP(sport=sport, dport=dport)
        / sip(n, size)
    )  # fmt: skip


def udp6(n: int, sport: int = 5060, dport: int = 5060, **kw: int) -> bytes:
    """A UDP/IPv6 frame."""
    return bytes(eth(**kw) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=sport, dport=dport)
                 / sip(n))  # fmt: skip


def tcp4(n: int, sport: int = 40000, dport: int = 5060, **kw: int) -> bytes:
    """A TCP/IPv4 segment carrying a SIP payload."""
    return bytes(eth(**kw) / IP(src="10.1.0.1", dst="10.1.0.2") / TCP(sport=sport, dport=dport,
                 flags="PA", seq=1000 + n) / sip(n))  # fmt: skip


def frags4(n: int, dport: int = 5060, size: int = 3000, **kw: int) -> list[bytes]:
    """An IPv4 UDP datagram of ``size`` payload bytes cut into 1480-byte fragments."""
    dgram = IP(src="10.1.0.1", dst="10.1.0.2", id=0x4000 + n) / UDP(sport=5060, dport=dport)
    dgram = dgram / sip(n, size)
    return [bytes(eth(**kw) / f) for f in fragment(dgram, fragsize=1480)]


def frags6(n: int, dport: int = 5060, size: int = 3000) -> list[bytes]:
    """An IPv6 UDP datagram cut into fragments (a Fragment header after the fixed header)."""
    dgram = IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(id=0x6000 + n)
    dgram = dgram / UDP(sport=5060, dport=dport) / sip(n, size)
    return [bytes(eth() / f) for f in fragment6(dgram, 1280)]


def arp() -> bytes:
    """A broadcast ARP request (not SIP)."""
    return bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.1.0.1", pdst="10.1.0.2"))
