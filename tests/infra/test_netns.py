"""Self-tests of the namespace helpers: creation, addressing, VLANs, and cleanup on failure."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.infra.netns import Netns, kernel_vlan_supported, netns, stale_namespaces, veth
from tests.infra.skips import requires_root

_RECV = (
    "import socket,sys; fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET;"
    "s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((sys.argv[1], 9999)); s.settimeout(10);"
    "print(s.recvfrom(100)[0].decode(), flush=True)"
)
_SEND = (
    "import socket,sys; fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET;"
    "socket.socket(fam, socket.SOCK_DGRAM).sendto(b'hello', (sys.argv[1], 9999))"
)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_names_are_checked() -> None:
    """Interface names longer than 15 characters and odd purposes are refused early."""
    ns = Netns("unused")
    with pytest.raises(ValueError, match="15"):
        ns.add_vlan("a-very-long-parent", 100)
    with pytest.raises(ValueError, match="purpose"), netns("Bad-Purpose"):
        pass


@requires_root
def test_namespace_is_deleted_and_processes_stopped_on_failure() -> None:
    """An exception inside the block still deletes the namespace and kills what ran in it."""
    with pytest.raises(RuntimeError, match="boom"), netns("selftest") as ns:
        name = ns.name
        assert name.startswith(f"otus-selftest-{os.getpid()}-")
        assert name in _namespaces()
        proc = ns.popen(["sleep", "60"])
        raise RuntimeError("boom")
    assert proc.returncode is not None
    assert name not in _namespaces()
    assert name not in stale_namespaces()


@requires_root
@pytest.mark.parametrize("addr", ["10.48.0.2", "fd00:48::2"])
def test_veth_pair_carries_ipv4_and_ipv6_at_once(
    netns_factory: Callable[..., Any], addr: str
) -> None:
    """A veth pair with both families: traffic flows right away (IPv6 without DAD wait)."""
    a, b = netns_factory("selfa"), netns_factory("selfb")
    veth(a, "sa0", b, "sb0", mtu=1400)
    a.add_addr("sa0", "10.48.0.1/24")
    b.add_addr("sb0", "10.48.0.2/24")
    a.add_addr("sa0", "fd00:48::1/64")
    b.add_addr("sb0", "fd00:48::2/64")
    assert "mtu 1400" in a.ip("link", "show", "sa0")
    recv = b.popen([sys.executable, "-c", _RECV, addr], stdout=subprocess.PIPE)
    b.wait_listening(9999, "udp")
    a.run(sys.executable, "-c", _SEND, addr)
    assert recv.stdout is not None
    assert recv.stdout.read().strip() == b"hello"
    assert recv.wait(10) == 0


@requires_root
def test_vlan_subinterface(netns_factory: Callable[..., Any]) -> None:
    """`ip link add link X name X.100 type vlan id 100` when the kernel has 802.1Q."""
    if not kernel_vlan_supported():
        pytest.skip("this kernel has no CONFIG_VLAN_8021Q (sip_topology falls back to vlantag)")
    a, b = netns_factory("vlana"), netns_factory("vlanb")
    veth(a, "va0", b, "vb0")
    assert a.add_vlan("va0", 100) == "va0.100"
    assert "vlan" in a.ip("-d", "link", "show", "va0.100")
