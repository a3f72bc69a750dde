"""Live capture from an AF_PACKET TPACKET_V3 ring, with fanout across worker processes.

How it behaves (ring sizes and their memory cost are in :mod:`.config`):

- **One socket per worker.** ``fanout_size`` worker processes each build an
  :class:`AfpacketCapturer`; with more than one they join one PACKET_FANOUT group (always with
  PACKET_FANOUT_FLAG_DEFRAG: the kernel reassembles received IPv4 datagrams before choosing a
  worker, so those workers see whole datagrams). Mode ``hash`` (the default) is our own
  symmetric flow hash in classic BPF (:mod:`.fanout`), not the kernel's, which misreads sent
  frames whose 802.1Q tag is in the data and scatters their flows and fragments; fragments hash
  on addresses only and stay together. The socket is created with protocol 0 and a reject-all
  filter, bound, joined to the group, and only then given the real filter: nothing unfiltered
  is ever queued, nothing needs draining, and a late worker never duplicates another's share.
- **VLAN.** Receiving drivers (and veth) move the 802.1Q/802.1ad tag into metadata; the capturer
  puts it back into the frame (``TP_STATUS_VLAN_VALID``, TPID kept), so VLAN ids survive.
- **BPF.** tcpdump syntax compiled by libpcap, checked before the socket exists (a bad
  expression is a :class:`~otus.core.errors.CaptureError` carrying libpcap's message). The kernel
  runs it on the frame *without* a metadata tag, so ``udp port 5060`` matches tagged and untagged
  received frames; sent frames on NICs without VLAN offload and inner QinQ tags keep theirs in
  the frame, which only ``vlan and ...`` matches: write ``F or (vlan and (F))`` (``vlan`` last).
  A port filter drops non-first IP fragments; the default filter keeps every fragment.
- **any** (and devices without an Ethernet header: tun, GRE) use SOCK_DGRAM and emit Linux
  cooked v2 (SLL2) frames: protocol, ifindex, ARPHRD type, packet type and source address from
  the kernel. A metadata VLAN tag turns the protocol field into its TPID and puts the TCI and
  the real protocol after the 20-byte header (the Ethernet layout); a tag still inside a frame
  (sent without VLAN offload, inner QinQ) is not seen in this mode. libpcap has no ``vlan`` for
  SLL2 filters. A frame on a VLAN sub-interface is seen twice (parent, with the tag;
  sub-interface, without), as with ``tcpdump -i any``; loopback frames are seen once.
- **Counters.** ``capture.packets``/``capture.bytes`` yielded; ``capture.kernel_packets`` the
  socket accepted (PACKET_STATISTICS, drops included, accumulated since the kernel resets them
  on read); ``capture.drop.kernel`` lost to a full ring; ``capture.drop.shutdown`` accepted but
  unread at close; ``capture.drop.ring_desync`` in a block the kernel passed without handing it
  over (skipped, so capture goes on); ``capture.kernel_freezes``; ``capture.snap_cut`` read but
  cut to the snap length. kernel_packets = packets + the three drops.
- **Interfaces** resolve through pyroute2: unknown is an error, down is a warning (capture starts
  when it comes up). Promiscuous mode lasts as long as the socket. Needs CAP_NET_RAW.
  :func:`check` runs the interface lookup and the filter compilation alone, without privilege
  (``otus run`` calls it first so that those input errors are usage errors).
- **snap_len** shorter than an interface's MTU plus its link header is a warning only when set
  explicitly: the default 65535 keeps whole frames except on ``lo`` (MTU 65536), where a
  frame over 65535 bytes (an IP packet near the 65535-byte maximum) loses its last bytes.
"""

from __future__ import annotations

from .capturer import AfpacketCapturer, check
from .config import DEFAULT_FILTER, DEFAULT_FILTER_COOKED, SIP_FILTER, AfpacketConfig

__all__ = [
    "DEFAULT_FILTER",
    "DEFAULT_FILTER_COOKED",
    "SIP_FILTER",
    "AfpacketCapturer",
    "AfpacketConfig",
    "check",
]
