"""Live capture on a veth pair in namespaces: bytes, stamps, VLAN tags, filters, any, errors."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from otus.core.errors import CaptureError, CaptureInputError
from otus.core.packet import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2
from otus.plugins.base import PluginContext
from otus.plugins.capture.afpacket import AfpacketCapturer, AfpacketConfig, check
from otus.plugins.capture.afpacket.consts import BLOCK_STATUS
from otus.plugins.capture.afpacket.ring import Ring
from tests.infra.netns import kernel_vlan_supported, sip_topology, veth
from tests.infra.skips import requires_root

from .frames import arp, frags4, frags6, tcp4, udp4, udp6
from .helpers import Collector, in_netns, link

pytestmark = [requires_root]


def _ifindex(ns: str, name: str) -> int:
    with in_netns(ns):
        return socket.if_nametoindex(name)


async def test_every_frame_arrives_with_its_bytes_and_timestamp() -> None:
    sent = []
    for n in range(300):
        sent.append([udp4, udp6, tcp4][n % 3](n))
    sent.append(udp4(1000, size=1400))  # a full-size frame
    with link("afpframes") as lk:
        cap = lk.capturer()
        async with Collector(cap) as col:
            t0 = time.time_ns() // 1000
            lk.send(sent)
            t1 = time.time_ns() // 1000
            await col.wait_for(len(sent))
        assert col.frames == sent
        assert all(t0 <= ts <= t1 for ts in col.stamps)
        assert col.stamps == sorted(col.stamps)
        assert col.linktypes == {LINKTYPE_ETHERNET}
        assert col.ifindexes == {_ifindex(lk.b.name, lk.b_if)}
        st = cap.stats()
        assert st["capture.packets"] == st["capture.kernel_packets"] == len(sent)
        assert st["capture.bytes"] == sum(map(len, sent))
        assert st["capture.drop.kernel"] == 0
        assert st["capture.snap_cut"] == 0


async def test_snap_len_cuts_frames_and_the_tag_is_put_back_on_top() -> None:
    sent = [udp4(1, size=1400), udp4(2, size=1400, vlan=9), udp4(3)]
    with link("afpsnap") as lk:
        cap = lk.capturer(snap_len=128, block_size=4096)
        async with Collector(cap) as col:
            lk.send(sent)
            await col.wait_for(3)
            # Cut frames are named in their own counter: they may end as "truncated" drops.
            assert cap.stats()["capture.snap_cut"] == 2
    # The kernel cuts the frame as it holds it (untagged); the tag then adds its 4 bytes.
    assert col.frames == [sent[0][:128], sent[1][:132], sent[2]]


async def test_vlan_tags_are_put_back() -> None:
    # The receiving veth moves the (outer) tag into metadata before any tap sees the frame.
    sent = [
        udp4(1, vlan=100),
        udp4(2, vlan=4094, prio=5),
        udp6(3, vlan=1, prio=7),
        tcp4(4, vlan=200),
        udp4(5, vlan=300, qinq=30),  # 802.1ad outer tag: its TPID 0x88a8 is kept
        udp4(6),
    ]
    with link("afpvlan") as lk:
        # Only the outer tag leaves the frame: 'vlan' then matches the inner 802.1Q tag.
        async with Collector(lk.capturer(bpf_filter="udp or tcp or (vlan and udp)")) as col:
            lk.send(sent)
            await col.wait_for(len(sent))
    assert col.frames == sent


@pytest.mark.skipif(not kernel_vlan_supported(), reason="kernel without CONFIG_VLAN_8021Q")
async def test_vlan_subinterface_traffic_keeps_its_id() -> None:
    with link("afpvsub") as lk:
        for ns, parent, addr in ((lk.a, lk.a_if, "10.9.0.1/24"), (lk.b, lk.b_if, "10.9.0.2/24")):
            name = ns.add_vlan(parent, 100, parent + "v")
            ns.add_addr(name, addr)
        on_parent = lk.capturer(bpf_filter="udp port 5060")
        on_sub = lk.capturer(interfaces=[lk.b_if + "v"], bpf_filter="udp port 5060")
        with in_netns(lk.a.name):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        async with Collector(on_parent) as par, Collector(on_sub) as sub:
            for n in range(5):
                tx.sendto(b"OPTIONS %d" % n, ("10.9.0.2", 5060))
            await par.wait_for(5)
            await sub.wait_for(5)
        tx.close()
    assert len(par.frames) == len(sub.frames) == 5
    for f, g in zip(par.frames, sub.frames, strict=True):
        assert f[12:14] == b"\x81\x00" and struct.unpack("!H", f[14:16])[0] & 0xFFF == 100
        assert g[12:14] == b"\x08\x00"
        assert f[:12] + f[16:] == g


async def test_vlan_link_from_the_shared_topology_keeps_its_id() -> None:
    # Kernel 802.1Q sub-interfaces where the kernel has them, the userspace tagger otherwise.
    with sip_topology("afpvtopo", vlan=123, ipv6=False) as topo:
        cap = _capturer_in(topo.capture_ns.name, topo.capture_if)
        with in_netns(topo.uac.name):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        async with Collector(cap) as col:
            for n in range(5):
                tx.sendto(b"OPTIONS %d" % n, (topo.uas_ip4, 5060))
                await asyncio.sleep(0.02)
            await col.wait_for(5)
        tx.close()
    assert len(col.frames) == 5
    for n, f in enumerate(col.frames):
        assert f[12:14] == b"\x81\x00" and struct.unpack("!H", f[14:16])[0] & 0xFFF == 123
        assert f.endswith(b"OPTIONS %d" % n)


def _capturer_in(ns: str, iface: str) -> AfpacketCapturer:
    with in_netns(ns):
        return AfpacketCapturer(AfpacketConfig(interfaces=[iface]), PluginContext())


def _filter_cases() -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(frames to send, kept by the default filter, kept by 'udp port 5060')."""
    f4, f6, other4 = frags4(1), frags6(2), frags4(3, dport=9999)
    sip = [udp4(10), udp4(11, dport=5080), tcp4(12), udp6(13), udp4(14, vlan=42)]
    noise = [udp4(20, sport=53, dport=53), tcp4(21, dport=80, sport=8080), arp()]
    noise += [udp4(22, sport=1, dport=2, vlan=42)]
    sent = sip + noise + f4 + f6 + other4
    default = sip + f4 + f6 + other4  # every fragment is kept, SIP or not
    # Only the first IPv4 fragment has ports (sport 5060 for every datagram here).
    port = [udp4(10), udp4(11, dport=5080), udp6(13), udp4(14, vlan=42), f4[0], other4[0]]
    return sent, default, port


@pytest.mark.parametrize("which", ["default", "port"])
async def test_filters_keep_sip_and_the_fragments_they_should(which: str) -> None:
    sent, default, port = _filter_cases()
    with link("afpfilt") as lk:
        cfg = {} if which == "default" else {"bpf_filter": "udp port 5060"}
        want = default if which == "default" else port
        async with Collector(lk.capturer(**cfg)) as col:
            lk.send(sent)
            await col.wait_for(len(want))
    assert sorted(col.frames) == sorted(want)


async def test_vlan_keyword_never_matches_live_frames() -> None:
    # Documented: the filter sees the frame without its tag, so users must not write 'vlan'.
    with link("afpvkw") as lk:
        async with Collector(lk.capturer(bpf_filter="vlan or (vlan and udp)")) as col:
            lk.send([udp4(1, vlan=7), udp4(2)])
            await asyncio.sleep(0.2)
    assert col.frames == []


async def test_any_is_linux_cooked_v2_with_tags_and_loopback_once() -> None:
    sent = [udp4(1), udp6(2), udp4(3, vlan=77, prio=1)]
    with link("afpany") as lk:
        ifx = _ifindex(lk.b.name, lk.b_if)
        cap = lk.capturer(interfaces=["any"], bpf_filter="udp port 5060")
        with in_netns(lk.b.name):
            lo_tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        async with Collector(cap) as col:
            lk.send(sent)
            lo_tx.sendto(b"OPTIONS lo", ("127.0.0.1", 5060))
            await col.wait_for(4)
        lo_tx.close()
    assert col.linktypes == {LINKTYPE_LINUX_SLL2}
    assert len(col.frames) == 4  # loopback frames once, not sent and received
    for f, orig in zip(col.frames[:3], sent, strict=True):
        proto, ifindex, hatype, pkttype, halen = struct.unpack("!H2xIHBB", f[:12])
        assert (ifindex, hatype, pkttype, halen) == (ifx, 1, 3, 6)  # Ethernet, other host
        assert f[12:18] == orig[6:12]  # the source MAC
        assert proto == int.from_bytes(orig[12:14], "big")
        assert f[20:] == orig[14:]  # tag (TCI, inner type) and everything after
    lo = col.frames[3]
    assert struct.unpack("!H2xIHB", lo[:11]) == (0x0800, 1, 772, 0)
    assert lo.endswith(b"OPTIONS lo")


async def test_several_interfaces_share_one_socket() -> None:
    with link("afpmulti") as lk:
        for i in (1, 2):
            veth(lk.a, f"xa{i}", lk.b, f"xb{i}")
        cap = lk.capturer(interfaces=["xb0", "xb1"])
        async with Collector(cap) as col:
            for i in (0, 1, 2):
                lk.send([udp4(i)], iface=f"xa{i}")
            await col.wait_for(2)
    assert sorted(col.frames) == sorted([udp4(0), udp4(1)])
    assert col.linktypes == {LINKTYPE_ETHERNET}
    assert col.ifindexes == {0}


def _tun(ns: str, name: str) -> int:
    """Create and open a TUN device in ``ns`` (no packet-info header); returns its fd."""
    with in_netns(ns):
        fd = os.open("/dev/net/tun", os.O_RDWR)
        ifr = struct.pack("16sH14x", name.encode(), 0x0001 | 0x1000)  # IFF_TUN | IFF_NO_PI
        fcntl.ioctl(fd, 0x400454CA, ifr)  # TUNSETIFF
    return fd


@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun")
async def test_device_without_link_header_is_cooked() -> None:
    with link("afptun") as lk:
        fd = _tun(lk.b.name, "xt0")
        try:
            lk.b.link_up("xt0")
            cap = lk.capturer(interfaces=["xt0"])
            ip_packet = udp4(5)[14:]
            async with Collector(cap) as col:
                os.write(fd, ip_packet)  # the kernel receives it on xt0
                await col.wait_for(1)
        finally:
            os.close(fd)
    assert col.linktypes == {LINKTYPE_LINUX_SLL2}
    assert len(col.frames) == 1
    f = col.frames[0]
    assert struct.unpack("!H2x4xHBB", f[:12]) == (0x0800, 65534, 0, 0)  # ARPHRD_NONE, host
    assert f[20:] == ip_packet


async def test_interface_down_waits_quietly_and_captures_once_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with link("afpdown") as lk:
        lk.b.ip("link", "set", lk.b_if, "down")
        with caplog.at_level(logging.WARNING):
            cap = lk.capturer()
        assert "xb0 is down" in caplog.text
        async with Collector(cap) as col:
            cpu0 = time.process_time()
            await asyncio.sleep(0.6)
            assert time.process_time() - cpu0 < 0.3  # no busy loop on the pending ENETDOWN
            lk.b.link_up(lk.b_if)
            await asyncio.sleep(0.1)
            lk.send([udp4(1)])
            await col.wait_for(1)
    assert col.frames == [udp4(1)]


async def test_a_removed_interface_fails_the_capture_with_its_name() -> None:
    # The kernel unhooks the socket from a removed device for good: capturing on would capture
    # nothing, even from a new device of the same name.
    with link("afpgone") as lk:
        cap = lk.capturer()
        col = await Collector(cap).__aenter__()
        try:
            lk.send([udp4(1)])
            await col.wait_for(1)
            lk.b.ip("link", "del", lk.b_if)
            assert col.task is not None
            with pytest.raises(CaptureError, match="interface xb0 was removed"):
                await asyncio.wait_for(col.task, 3.0)
        finally:
            await cap.close()
    assert col.frames == [udp4(1)]


async def test_one_removed_interface_of_several_is_reported_and_the_rest_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with link("afpgone2") as lk:
        veth(lk.a, "xa1", lk.b, "xb1")
        cap = lk.capturer(interfaces=["xb0", "xb1"])
        async with Collector(cap) as col:
            lk.b.ip("link", "del", "xb1")
            with caplog.at_level(logging.ERROR):
                await asyncio.sleep(1.2)  # two idle ticks: the removal is noticed once
            lk.send([udp4(2)])
            await col.wait_for(1)
    assert col.frames == [udp4(2)]
    assert caplog.text.count("interface xb1 was removed") == 1


async def test_promiscuous_mode_lasts_as_long_as_the_capture() -> None:
    with link("afppromisc") as lk:

        def promiscuity() -> int:
            out = lk.b.ip("-d", "link", "show", lk.b_if)
            return int(out.split("promiscuity ")[1].split()[0])

        cap = lk.capturer(promiscuous=True)
        assert promiscuity() == 1
        await cap.close()
        assert promiscuity() == 0


@pytest.mark.parametrize("reading", [True, False])
async def test_close_accounts_for_every_accepted_frame(reading: bool) -> None:
    sent = [udp4(n) for n in range(50)]
    with link("afpshut") as lk:
        cap = lk.capturer()
        it = aiter(cap.batches())
        pending = asyncio.create_task(anext(it))
        await asyncio.sleep(0.05)
        if not reading:
            pending.cancel()  # bound, and nobody will read again
        lk.send(sent)
        await asyncio.gather(cap.close(), cap.close())  # the second waits for the first
        st = cap.stats()
    got = len(pending.result()) if reading else 0
    assert st["capture.packets"] == got
    assert st["capture.packets"] + st["capture.drop.shutdown"] == len(sent)
    assert st["capture.kernel_packets"] == len(sent)
    # The kernel's counts and the walk over the ring's blocks agree on what was left unread.
    assert cap.ring_unread == st["capture.drop.shutdown"]
    # Reading: the first block reached the reader (the kernel may have retired the rest into a
    # later block nobody read, counted above); not reading: every frame is a shutdown drop.
    assert got > 0 if reading else st["capture.drop.shutdown"] == len(sent)


async def test_shutdown_drops_follow_the_kernel_when_the_ring_walk_disagrees(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Frames the kernel accepted and nobody read are counted even where the walk misses them."""
    monkeypatch.setattr(Ring, "unread", lambda self: 0)  # a walk that sees nothing
    with link("afpwalk") as lk:
        cap = lk.capturer()
        pending = asyncio.create_task(anext(aiter(cap.batches())))
        await asyncio.sleep(0.05)
        pending.cancel()  # bound, and nobody will read
        lk.send([udp4(n) for n in range(20)])
        await cap.close()
        st = cap.stats()
    assert st["capture.kernel_packets"] == 20
    assert st["capture.drop.shutdown"] == 20
    assert cap.ring_unread == 0
    assert "20 frames the kernel accepted were never read (the ring walk found 0)" in caplog.text
    assert "next=0 blocks(status/frames/seq)=0:0x" in caplog.text  # the ring's state, for a report


@pytest.mark.parametrize("overcount", [0, 2])
async def test_a_block_passed_without_hand_over_is_skipped_and_counted(
    overcount: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel moved past a block never marked ours: capture goes on, its frames counted.

    ``overcount``: the skipped block claims more frames than the kernel says went missing; the
    kernel's counts win, so the counters still add up to what it accepted.
    """
    resync = Ring.resync
    monkeypatch.setattr(Ring, "resync", lambda self: (n := resync(self)) and n + overcount)
    with link("afpdesync") as lk:
        cap = lk.capturer(snap_len=256, block_size=4096, block_count=4)
        pending = asyncio.create_task(anext(aiter(cap.batches())))
        await asyncio.sleep(0.05)
        pending.cancel()  # bound; frames now stay in the ring until a new reader comes
        for burst in range(3):  # three blocks handed over (retired by the 20 ms timer)
            lk.send([udp4(5 * burst + n) for n in range(5)])  # one 4 KiB block each
            await asyncio.sleep(0.1)
        ring = cap._ring
        status = [BLOCK_STATUS.unpack_from(ring.mm, i * 4096 + 8)[0] & 1 for i in range(4)]
        assert status == [1, 1, 1, 0]
        BLOCK_STATUS.pack_into(ring.mm, 8, 0)  # block 0 as the kernel left it in the bad case
        got: list[bytes] = []
        it = aiter(cap.batches())
        while len(got) < 10:
            got += (await asyncio.wait_for(anext(it), 2)).frames
        await cap.close()
        st = cap.stats()
    assert got == [udp4(n) for n in range(5, 15)]  # the blocks after it, in order
    assert st["capture.drop.ring_desync"] == 5
    assert st["capture.kernel_packets"] == 15
    assert st["capture.packets"] + st["capture.drop.shutdown"] == 10  # nothing else went missing
    assert f"{5 + overcount} frames skipped (capture.drop.ring_desync)" in caplog.text


async def test_close_before_and_twice() -> None:
    with link("afpclose") as lk:
        cap = lk.capturer()
        await cap.close()
        await cap.close()
        assert [b async for b in cap.batches()] == []
        assert cap.stats()["capture.packets"] == 0


def test_unknown_interface_is_a_clear_error() -> None:
    for build in (check, lambda c: AfpacketCapturer(c, PluginContext())):
        with pytest.raises(CaptureInputError, match="interface nope0 not found"):
            build(AfpacketConfig(interfaces=["nope0"]))


def test_invalid_filter_fails_before_any_socket() -> None:
    for build in (check, lambda c: AfpacketCapturer(c, PluginContext())):
        with pytest.raises(CaptureInputError, match=r"invalid BPF filter 'udp port': .*syntax"):
            build(AfpacketConfig(interfaces=["lo"], bpf_filter="udp port"))


async def test_snap_len_under_the_mtu_warns_only_when_set(caplog: pytest.LogCaptureFixture) -> None:
    """lo's MTU is 65536: the default snap_len (65535) is no reason to warn on every run."""
    for config, warned in (
        (AfpacketConfig(interfaces=["lo"]), False),
        (AfpacketConfig(interfaces=["lo"], snap_len=65535), True),
        (AfpacketConfig(interfaces=["lo"], snap_len=1500), True),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            await AfpacketCapturer(config, PluginContext()).close()
        assert ("snap_len" in caplog.text) is warned, caplog.text


_NO_RAW = """
from otus.core.errors import CaptureError
from otus.plugins.base import PluginContext
from otus.plugins.capture.afpacket import AfpacketCapturer, AfpacketConfig
try:
    AfpacketCapturer(AfpacketConfig(interfaces=["lo"]), PluginContext())
except CaptureError as e:
    print(e)
"""


def test_without_cap_net_raw_the_error_says_so() -> None:
    drop = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw"]
    out = subprocess.run(
        [*drop, sys.executable, "-c", _NO_RAW],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "needs CAP_NET_RAW" in out.stdout, out.stdout + out.stderr
    # setcap on the otus console script does nothing: say what does
    assert "AmbientCapabilities=CAP_NET_RAW" in out.stdout
    assert "Python interpreter binary" in out.stdout
