"""The ``afpacket`` capture config: interfaces, filter, fanout and the TPACKET_V3 ring geometry.

Defaults and what they cost:

- ``block_size`` 256 KiB x ``block_count`` 128 = **32 MiB of ring per worker** (kernel pages,
  unswappable while capturing; ``fanout_size`` workers use that many times as much). A block is
  one batch: up to ~350 SIP frames of 700 bytes, or ~2,000 minimal frames.
- ``block_timeout_ms`` 20: the kernel hands a partly filled block over after 20 ms, which bounds
  the capture latency. The trade-off: at low rates every block leaves after the timeout however
  empty, so the ring holds ``block_count x block_timeout_ms`` (here 2.56 s) of traffic, not
  32 MiB of it; a longer timeout buys more tolerance to a stalled consumer at low rates and
  costs latency; a shorter one the reverse. At high rates blocks fill before the timeout and
  the ring holds 32 MiB (about 0.3 s at 100 MB/s).
- ``snap_len`` 65535 keeps whole frames (GRO on a real NIC can hand up to 64 KiB); a frame never
  spans blocks, so ``block_size`` must exceed ``snap_len`` plus ~130 bytes of headers. A
  snap_len under an interface's MTU plus its header is logged only when set explicitly (the
  default is one byte short of ``lo``'s 65536: no warning on every loopback capture).
- ``bpf_filter`` null means :data:`DEFAULT_FILTER` (:data:`DEFAULT_FILTER_COOKED` for ``any``):
  SIP ports plus every IP fragment, tagged or not.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from otus.core.model import SpecModel

from .consts import PAGE_SIZE, TPACKET_ALIGNMENT

__all__ = [
    "DEFAULT_FILTER",
    "DEFAULT_FILTER_COOKED",
    "SIP_FILTER",
    "AfpacketConfig",
    "check_ifname",
]

# ``udp port 5060`` alone drops non-first IPv4 fragments (they carry no UDP header, libpcap's
# port test requires a zero fragment offset) and every IPv6 fragment (libpcap looks for the port
# right after the fixed header). A large INVITE over UDP fragments at MTU 1500, so keep them all
# and let the decoder's reassembly sort them out.
SIP_FILTER = (
    "((udp or tcp) and (port 5060 or port 5080))"
    " or (ip[6:2] & 0x1fff != 0)"
    " or (ip6 and ip6[6] == 44)"
)
# On Ethernet the kernel shows the filter a received frame without its 802.1Q tag, but a sent
# frame keeps it when the NIC has no VLAN transmit offload (and an inner QinQ tag always stays):
# match both views. 'vlan' must come last, libpcap shifts every later offset by the tag.
DEFAULT_FILTER = f"{SIP_FILTER} or (vlan and ({SIP_FILTER}))"
# libpcap has no 'vlan' for Linux cooked captures (``any``, devices without a link header).
DEFAULT_FILTER_COOKED = SIP_FILTER

_MiB = 1 << 20
# Frame overhead inside a block: block descriptor (48), tpacket3_hdr + sockaddr_ll and padding
# before the MAC header (82 under SOCK_RAW); a frame larger than the rest is truncated.
_BLOCK_OVERHEAD = 256


def check_ifname(name: str) -> str:
    """``name`` if Linux can have an interface so named, else ValueError saying why."""
    # IFNAMSIZ is 16 bytes with the NUL; the kernel cuts a name at its first NUL, so "lo\0x"
    # would quietly capture on lo. Also what dev_valid_name() refuses: '/', whitespace.
    if not 1 <= len(os.fsencode(name)) <= 15:
        raise ValueError(f"interface name {name!r} is not 1 to 15 bytes long")
    if "\0" in name or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"interface name {name!r} has a NUL, '/' or whitespace")
    return name


# The schema keeps the plain bounds (the CRD is generated from them); the checker does the rest.
IfName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=15, pattern=r"^[^\s/]+$"),
    AfterValidator(check_ifname),
]


class AfpacketConfig(SpecModel):
    """Capture live from network interfaces on a TPACKET_V3 ring (needs CAP_NET_RAW)."""

    type: Literal["afpacket"] = "afpacket"
    interfaces: list[IfName] = Field(
        min_length=1,
        max_length=16,
        description='Interfaces to capture on, or ["any"] for every interface (Linux cooked v2).',
    )
    bpf_filter: str | None = Field(
        default=None,
        max_length=4096,
        description=(
            "tcpdump filter run in the kernel. null: SIP on ports 5060/5080 and every IP "
            "fragment; empty: everything. A port filter alone drops non-first IP fragments. "
            "Received frames reach it without their 802.1Q tag, sent ones may keep it: write "
            "'F or (vlan and (F))' to match both (not in 'any' mode)."
        ),
    )
    fanout_size: int = Field(
        default=1, ge=1, le=64, description="Worker processes, each with its own socket."
    )
    fanout_mode: Literal["hash", "cpu", "lb", "qm"] = Field(
        default="hash",
        description=(
            "How the kernel spreads frames over workers: hash (per flow, both directions), cpu, "
            "lb (round robin) or qm (NIC receive queue). IPv4 fragments are always reassembled "
            "by the kernel first so a datagram reaches one worker whole."
        ),
    )
    fanout_group: int | None = Field(
        default=None,
        ge=0,
        le=0xFFFF,
        description=(
            "PACKET_FANOUT group id shared by the workers; by default derived from the task, "
            "the agent and the parent process."
        ),
    )
    snap_len: int = Field(default=65535, ge=64, le=262144, description="Bytes kept per frame.")
    promiscuous: bool = Field(
        default=False, description="Put the interfaces in promiscuous mode while capturing."
    )
    block_size: int = Field(
        default=256 * 1024,
        ge=PAGE_SIZE,
        le=64 * _MiB,
        description="Ring block size in bytes: a power of two, at least a page; one batch.",
    )
    block_count: int = Field(
        default=128, ge=2, le=16384, description="Ring blocks; the ring is block_size x this."
    )
    frame_size: int = Field(
        default=2048,
        ge=80,
        le=65536,
        description="Nominal frame slot (multiple of 16); TPACKET_V3 packs frames of any size.",
    )
    block_timeout_ms: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Hand a partly filled block to the worker after this long (latency bound).",
    )

    @model_validator(mode="before")
    @classmethod
    def _single_interface(cls, data: Any) -> Any:
        """Accept ``interface: eth0`` for ``interfaces: [eth0]``."""
        if isinstance(data, dict) and "interface" in data:
            data = dict(data)
            one = data.pop("interface")
            if "interfaces" in data:
                raise ValueError("give either 'interface' or 'interfaces', not both")
            data["interfaces"] = [one]
        return data

    @model_validator(mode="after")
    def _check(self) -> AfpacketConfig:
        """Cross-field rules the kernel would otherwise reject with a bare EINVAL."""
        if "any" in self.interfaces and len(self.interfaces) > 1:
            raise ValueError("'any' captures every interface; list it alone")
        if len(set(self.interfaces)) != len(self.interfaces):
            raise ValueError("interfaces are listed twice")
        if self.promiscuous and self.interfaces == ["any"]:
            raise ValueError("promiscuous mode needs named interfaces, not 'any'")
        bs = self.block_size
        if bs & (bs - 1):
            raise ValueError(f"block_size {bs} is not a power of two")
        if self.frame_size % TPACKET_ALIGNMENT or self.frame_size > bs:
            raise ValueError(
                f"frame_size {self.frame_size} must be a multiple of {TPACKET_ALIGNMENT} "
                f"and at most block_size ({bs})"
            )
        if bs < self.snap_len + _BLOCK_OVERHEAD:
            raise ValueError(
                f"block_size {bs} cannot hold a frame of snap_len {self.snap_len} "
                f"(needs at least snap_len + {_BLOCK_OVERHEAD})"
            )
        if bs * self.block_count > 1024 * _MiB:
            raise ValueError("ring larger than 1 GiB per worker (block_size x block_count)")
        return self

    def filter_for(self, cooked: bool) -> str:
        """The filter expression to compile for an Ethernet or a cooked (SLL2) socket."""
        if self.bpf_filter is not None:
            return self.bpf_filter
        return DEFAULT_FILTER_COOKED if cooked else DEFAULT_FILTER

    @property
    def ring_bytes(self) -> int:
        """Kernel memory of one worker's ring."""
        return self.block_size * self.block_count
