"""The e2e network: a hub bridge in our namespace, and nodes that are network namespaces.

Addresses (IPv4 only: no router solicitations or MLD reports on any link)::

    root namespace   bridge otusbr<pid> 10.231.0.1/24 -- kube-apiserver, Kafka's NODES listener
       |  veth ot<pid>h<n> (in the bridge) <-> up0
    node-a netns     up0 10.231.0.11/24, default via 10.231.0.1; forwards between its pods
       |-- pod-uac 10.244.1.1/30 <-> eth0 10.244.1.2  UAC pod netns (sipp client)
       '-- pod-uas 10.244.1.5/30 <-> eth0 10.244.1.6  UAS pod netns (sipp server)
    node-b netns     up0 10.231.0.12, pods 10.244.2.2 and 10.244.2.6 the same way

A node namespace stands for a host: its agent process runs there and captures the host ends of
its pods' links (``pod-uac``, ``pod-uas``), as an agent on a real node captures the CNI's veths.
Every SIP message crosses both of them once (UAC -> node -> UAS and back). Only our own
namespaces and the bridge ever carry traffic; the bridge is deleted at teardown, the veths die
with their namespaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.infra.kafka import KafkaBroker, free_port
from tests.infra.netns import Netns, SipTopology, netns, set_offloads, stale_namespaces, veth

__all__ = ["HUB_IP", "POD_IFACES", "Hub", "HubKafka", "NodeHost", "node_host"]

HUB_IP = "10.231.0.1"
_HUB_CIDR = f"{HUB_IP}/24"
POD_IFACES = ("pod-uac", "pod-uas")  # the host ends an agent captures


def _ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _remove_stale() -> None:
    """Namespaces, bridges and veths of e2e runs whose process is gone (killed before teardown)."""
    for name in stale_namespaces():
        if re.match(r"otus-(node|uac|uas)[a-z]-", name):
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).splitlines():
        m = re.match(r"\d+: (otusbr|ot)(\d+)(h\d+)?[@:]", line)
        if m and (m.group(1) == "otusbr" or m.group(3)) and not Path(f"/proc/{m[2]}").exists():
            _ip("link", "del", f"{m[1]}{m[2]}{m[3] or ''}", check=False)


class Hub:
    """A bridge in our namespace with :data:`HUB_IP`; node namespaces attach with a veth."""

    def __init__(self) -> None:
        self.bridge = f"otusbr{os.getpid()}"
        self._veths: list[str] = []

    def start(self) -> None:
        """Create the bridge (after removing what a killed run left behind)."""
        _remove_stale()
        _ip("link", "add", self.bridge, "type", "bridge")
        try:
            _ip("addr", "add", _HUB_CIDR, "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.stop()
            raise

    def attach(self, ns: Netns, ifname: str, cidr: str) -> None:
        """A veth from the bridge to ``ifname`` in ``ns`` with ``cidr``, default route via us."""
        root = f"ot{os.getpid()}h{len(self._veths)}"
        _ip("link", "add", root, "type", "veth", "peer", "name", ifname, "netns", ns.name)
        self._veths.append(root)
        _ip("link", "set", root, "master", self.bridge, "up")
        ns.add_addr(ifname, cidr)
        ns.link_up(ifname)
        ns.ip("route", "add", "default", "via", HUB_IP)

    def stop(self) -> None:
        """Delete the veths still there (deleting a namespace took its pair) and the bridge."""
        for name in self._veths:
            _ip("link", "del", name, check=False)
        self._veths.clear()
        _ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HubKafka(KafkaBroker):
    """The suite's broker plus a ``NODES`` listener on the hub: SASL_PLAINTEXT, SCRAM-SHA-512.

    The agents in the node namespaces use ``node_bootstrap`` with the credentials of a Secret;
    the test reads through the usual PLAINTEXT listener on 127.0.0.1 (``bootstrap``).
    """

    def __init__(self, workdir: Path, host: str = HUB_IP) -> None:
        super().__init__(workdir)
        self.node_host = host
        self.node_port = free_port()

    @property
    def node_bootstrap(self) -> str:
        """``host:port`` of the listener the node namespaces reach."""
        return f"{self.node_host}:{self.node_port}"

    def _java(self, *args: str, heap: str, jvm: tuple[str, ...] = ()) -> list[str]:
        # The JVM gets SIGTERM if the test process dies without its teardown.
        argv = super()._java(*args, heap=heap, jvm=jvm)
        setpriv = shutil.which("setpriv")  # util-linux
        return [setpriv, "--pdeathsig", "TERM", *argv] if setpriv else argv

    def _write_config(self) -> Path:
        path = super()._write_config()
        props: dict[str, str] = {}
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        listener = f"NODES://{self.node_bootstrap}"
        props["listeners"] += f",{listener}"
        props["advertised.listeners"] += f",{listener}"
        props["listener.security.protocol.map"] += ",NODES:SASL_PLAINTEXT"
        props["listener.name.nodes.sasl.enabled.mechanisms"] = "SCRAM-SHA-512"
        props["listener.name.nodes.scram-sha-512.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        )
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path


@dataclass(slots=True)
class NodeHost:
    """One "node": its namespace (where its agent runs), two pod namespaces, their addresses."""

    name: str  # the Node object's name, e.g. node-a
    ns: Netns
    topo: SipTopology  # UAC pod -> UAS pod, for tests.infra.sipp.run_calls
    address: str  # on up0, towards the hub

    @property
    def pod_ips(self) -> dict[str, str]:
        """Pod name -> IP, for the Pod objects the enrichment resolves."""
        suffix = self.name.rsplit("-", 1)[-1]
        return {f"uac-{suffix}": self.topo.uac_ip4, f"uas-{suffix}": self.topo.uas_ip4}


@contextlib.contextmanager
def node_host(hub: Hub, name: str, index: int) -> Iterator[NodeHost]:
    """Build node ``index`` (1, 2, ...) as drawn in the module docstring; always torn down."""
    tag = name.rsplit("-", 1)[-1]
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(netns(f"node{tag}", ipv6=False))
        uac = stack.enter_context(netns(f"uac{tag}", ipv6=False))
        uas = stack.enter_context(netns(f"uas{tag}", ipv6=False))
        net = f"10.244.{index}"
        for pod, host_if, host_ip, pod_ip in (
            (uac, "pod-uac", f"{net}.1", f"{net}.2"),
            (uas, "pod-uas", f"{net}.5", f"{net}.6"),
        ):
            veth(pod, "eth0", node, host_if)
            node.add_addr(host_if, f"{host_ip}/30")
            pod.add_addr("eth0", f"{pod_ip}/30")
            pod.ip("route", "add", "default", "via", host_ip)
            # Frames on the wire as sent: no GSO/GRO super-frames, full checksums.
            set_offloads(pod, "eth0", tso=False, gso=False, gro=False)
            set_offloads(node, host_if, tso=False, gso=False, gro=False)
        node.sysctl("net.ipv4.ip_forward", 1)
        address = f"10.231.0.{10 + index}"
        hub.attach(node, "up0", f"{address}/24")
        topo = SipTopology(
            uac, uas, node, POD_IFACES[0], "eth0", "eth0", 1500, None, "",
            uac_ip4=f"{net}.2", uas_ip4=f"{net}.6",
        )  # fmt: skip
        yield NodeHost(name, node, topo, address)
