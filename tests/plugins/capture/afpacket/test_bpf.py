"""Filter compilation with libpcap: errors, the cooked (SOCK_DGRAM) rewrite, the prologues."""

from __future__ import annotations

import pytest

from otus.core.errors import CaptureError
from otus.core.packet import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW
from otus.plugins.capture.afpacket import DEFAULT_FILTER, DEFAULT_FILTER_COOKED, bpf
from otus.plugins.capture.afpacket.consts import (
    BPF_ABS,
    BPF_LD,
    BPF_RET,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    SKF_AD_PROTOCOL,
)


def _abs_loads(prog: list[bpf.Insn]) -> list[int]:
    return [k for code, _, _, k in prog if code & 0x07 == BPF_LD and code & 0xE0 == BPF_ABS]


def test_compiles_the_default_filters_for_both_views() -> None:
    for lt, expr in (
        (LINKTYPE_ETHERNET, DEFAULT_FILTER),
        (LINKTYPE_LINUX_SLL2, DEFAULT_FILTER_COOKED),
    ):
        prog = bpf.compile_filter(expr, lt, 65535)
        assert prog[-1][0] & 0x07 == BPF_RET
        assert (BPF_RET, 0, 0, 65535) in prog  # the accept returns the snap length


def test_empty_filter_accepts_everything_up_to_snaplen() -> None:
    assert bpf.compile_filter("", LINKTYPE_ETHERNET, 1500) == [(BPF_RET, 0, 0, 1500)]


def test_invalid_expression_carries_libpcaps_message() -> None:
    with pytest.raises(CaptureError, match=r"invalid BPF filter 'udp port': .*syntax error"):
        bpf.compile_filter("udp port", LINKTYPE_ETHERNET, 65535)
    with pytest.raises(CaptureError, match="invalid BPF filter 'port 99999'"):
        bpf.compile_filter("port 99999", LINKTYPE_ETHERNET, 65535)


def test_no_vlan_keyword_in_cooked_mode() -> None:
    with pytest.raises(CaptureError, match="no VLAN support"):
        bpf.compile_filter("vlan and udp", LINKTYPE_LINUX_SLL2, 65535)


def test_unsupported_link_type() -> None:
    with pytest.raises(CaptureError, match="link type"):
        bpf.compile_filter("ip", LINKTYPE_RAW, 65535)


def test_cooked_rewrite_maps_header_fields_and_shifts_offsets() -> None:
    eth = _abs_loads(bpf.compile_filter("ip and ip[9] == 17", LINKTYPE_ETHERNET, 65535))
    cooked = _abs_loads(bpf.compile_filter("ip and ip[9] == 17", LINKTYPE_LINUX_SLL2, 65535))
    assert eth == [12, 14 + 9]
    # SLL2's protocol field becomes skb->protocol; network-header bytes start at offset 0.
    assert cooked == [SKF_AD_OFF + SKF_AD_PROTOCOL, 9]
    inbound = _abs_loads(bpf.compile_filter("inbound", LINKTYPE_LINUX_SLL2, 65535))
    assert inbound == [SKF_AD_OFF + SKF_AD_PKTTYPE]


def test_cooked_rejects_link_header_bytes_the_kernel_lacks() -> None:
    with pytest.raises(CaptureError, match="link-layer header bytes"):
        bpf.compile_filter("link[12] == 0", LINKTYPE_LINUX_SLL2, 65535)


def test_ifindex_prologue_jumps_to_the_program() -> None:
    pro = bpf.ifindex_prologue([3, 7, 9])
    # ld ifindex; three tests each jumping to just past the final reject; reject.
    assert len(pro) == 5
    for i, (_code, jt, jf, _k) in enumerate(pro[1:4]):
        assert 1 + i + 1 + jt == len(pro)
        assert jf == 0
    assert pro[-1] == (BPF_RET, 0, 0, 0)
    skip = bpf.skip_outgoing(1)
    assert skip[1][2] + 2 == len(skip)  # not outgoing: straight past the reject
    assert skip[3][2] + 4 == len(skip)  # outgoing elsewhere: likewise
