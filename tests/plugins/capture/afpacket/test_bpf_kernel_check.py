"""Filters libpcap compiles but the kernel refuses are invalid before any capture starts."""

from __future__ import annotations

import pytest

from otus.core.errors import CaptureInputError
from otus.core.packet import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2
from otus.plugins.capture.afpacket import AfpacketConfig, bpf, check

REFUSED = "ip6 protochain 6"  # libpcap compiles a loop (a backward jump) for protochain


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2])
def test_a_program_the_kernel_refuses_is_an_invalid_filter(linktype: int) -> None:
    with pytest.raises(CaptureInputError) as e:
        bpf.compile_filter(REFUSED, linktype, 65535)
    assert str(e.value) == (
        f"invalid BPF filter {REFUSED!r}: the kernel refuses the compiled program "
        "(Invalid argument)"
    )


@pytest.mark.parametrize("interfaces", [["lo"], ["any"]])
def test_check_finds_it_without_privilege(interfaces: list[str]) -> None:
    """``otus run`` calls check() first: a refused filter is a usage error, like a typo."""
    with pytest.raises(CaptureInputError, match="the kernel refuses"):
        check(AfpacketConfig(interfaces=interfaces, bpf_filter=REFUSED))


def test_accepted_programs_pass_the_kernel_check() -> None:
    for expr in ("udp port 5060", "ip6 and ip6[6] == 44", "tcp[tcpflags] & tcp-syn != 0"):
        assert bpf.compile_filter(expr, LINKTYPE_ETHERNET, 65535)
        assert bpf.compile_filter(expr, LINKTYPE_LINUX_SLL2, 65535)
