"""Linux AF_PACKET, TPACKET_V3 and classic-BPF constants and the struct layouts of the ring."""

from __future__ import annotations

import struct

# Socket-level options and address family (linux/if_packet.h, asm-generic/socket.h).
AF_PACKET = 17
ETH_P_ALL = 0x0003
SOL_SOCKET = 1
SOL_PACKET = 263
SO_ATTACH_FILTER = 26

PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
TPACKET_V3 = 2
PACKET_MR_PROMISC = 1

PACKET_FANOUT_HASH = 0
PACKET_FANOUT_LB = 1
PACKET_FANOUT_CPU = 2
PACKET_FANOUT_QM = 5
PACKET_FANOUT_CBPF = 6
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
# "hash" is our own flow hash in classic BPF (see fanout.py), not PACKET_FANOUT_HASH.
FANOUT_MODES = {
    "hash": PACKET_FANOUT_CBPF,
    "lb": PACKET_FANOUT_LB,
    "cpu": PACKET_FANOUT_CPU,
    "qm": PACKET_FANOUT_QM,
}

PACKET_OUTGOING = 4  # sll_pkttype of a frame this host sent

# Block and frame status bits.
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6

# ARPHRD_* device types whose frames start with an Ethernet header under SOCK_RAW.
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ETHERNET_HATYPES = frozenset({ARPHRD_ETHER, ARPHRD_LOOPBACK})
ETH_P_8021Q = 0x8100

IFF_UP = 0x1
PAGE_SIZE = 4096
TPACKET_ALIGNMENT = 16

# struct tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov,
# sizeof_priv, feature_req_word.
TPACKET_REQ3 = struct.Struct("=7I")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1 from byte 8.
BLOCK_STATUS_OFFSET = 8
BLOCK_STATUS = struct.Struct("=I")
# block_status, num_pkts, offset_to_first_pkt (from byte 8).
BLOCK_HDR = struct.Struct("=III")
# tpacket_hdr_v1.seq_num (after block_status, num_pkts, offset_to_first_pkt, blk_len).
BLOCK_SEQ_OFFSET = 24
BLOCK_SEQ = struct.Struct("=Q")
# struct tpacket3_hdr up to tp_mac: next_offset, sec, nsec, snaplen, len, status, mac.
FRAME_HDR = struct.Struct("=IIIIIIH")
# hv1.tp_vlan_tci (u32) and hv1.tp_vlan_tpid (u16) at byte 32 of tpacket3_hdr.
FRAME_VLAN_OFFSET = 32
FRAME_VLAN = struct.Struct("=IH")
# sockaddr_ll follows tpacket3_hdr at TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) == 48; its
# fields from sll_protocol on: protocol (network order), ifindex, hatype, pkttype, halen, addr.
FRAME_SLL_OFFSET = 48 + 2
FRAME_SLL_LEN = 18
FRAME_SLL = struct.Struct("=2siHBB8s")
# struct tpacket_stats_v3: packets (drops included), drops, freeze_q_cnt.
TPACKET_STATS_V3 = struct.Struct("=III")
# struct sockaddr_ll for bind(2): family, protocol (network order), ifindex, hatype, pkttype,
# halen, addr.
SOCKADDR_LL = struct.Struct("=H2siHBB8s")
# struct packet_mreq: ifindex, type, alen, address.
PACKET_MREQ = struct.Struct("=iHH8s")
# An 802.1Q tag as it sits in a frame: TPID then TCI, network order.
VLAN_TAG = struct.Struct(">HH")
# The Linux cooked v2 header (LINKTYPE_LINUX_SLL2): protocol, reserved, ifindex, hatype,
# pkttype, halen, addr, all network order.
SLL2_HDR = struct.Struct(">2s2xIHBB8s")
SLL2_HDR_LEN = 20

# Classic BPF (linux/filter.h): struct sock_filter is code, jt, jf, k.
BPF_INSN = struct.Struct("=HBBI")
BPF_MAXINSNS = 4096
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_JMP = 0x05
BPF_RET = 0x06
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MSH = 0xA0
BPF_JEQ = 0x10
BPF_K = 0x00
SKF_AD_OFF = 0x100000000 - 0x1000  # -0x1000 as the u32 the kernel compares against
SKF_NET_OFF = 0x100000000 - 0x100000  # loads at SKF_NET_OFF + k read the network header + k
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8
SKF_AD_HATYPE = 28
