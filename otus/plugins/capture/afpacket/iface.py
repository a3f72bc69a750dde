"""Interface lookup with pyroute2: name to index, link type, up/down state and MTU."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass

from otus.core.errors import CaptureError, CaptureInputError

from .consts import IFF_UP

__all__ = ["Interface", "resolve"]


@dataclass(slots=True)
class Interface:
    """One network interface of the current network namespace."""

    name: str
    index: int
    hatype: int  # ARPHRD_* (1 Ethernet, 772 loopback, 65534 none for tun, 778 ip-gre, ...)
    up: bool
    mtu: int


def resolve(names: list[str]) -> list[Interface]:
    """Look up every named interface; an unknown name is a :class:`CaptureInputError`."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _resolve(names)
    # pyroute2's synchronous API drives an event loop of its own, which cannot run inside a
    # running one (a worker builds its capturer from a coroutine); a thread has none, and it
    # inherits this thread's network namespace.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="otus-iface") as pool:
        return pool.submit(_resolve, names).result()


def _resolve(names: list[str]) -> list[Interface]:
    try:
        from pyroute2 import IPRoute  # noqa: PLC0415 - a heavy import only live capture needs
    except ImportError as e:
        raise CaptureError("live capture needs pyroute2 (pip install pyroute2)") from e
    out: list[Interface] = []
    try:
        with IPRoute() as ipr:
            for name in names:
                idx = ipr.link_lookup(ifname=name)
                if not idx:
                    raise CaptureInputError(f"interface {name} not found")
                link = ipr.get_links(idx[0])[0]
                out.append(
                    Interface(
                        name=name,
                        index=int(link["index"]),
                        hatype=int(link["ifi_type"]),
                        up=bool(int(link["flags"]) & IFF_UP),
                        mtu=int(link.get("mtu") or 0),
                    )
                )
    except CaptureError:
        raise
    except Exception as e:  # pyroute2's NetlinkError is not an OSError
        raise CaptureError(f"cannot list network interfaces: {e}") from e
    return out
