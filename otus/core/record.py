"""The record contract: one JSON object per parsed message, the same from every reporter."""

from __future__ import annotations

import time
from typing import Any

import orjson

from otus.core.packet import IPPROTO_TCP, Encap, OutputPacket

__all__ = ["TS_MAX_US", "dumps", "encap_dict", "format_ts", "record_bytes", "to_record"]

# The last microsecond RFC 3339 can write (9999-12-31T23:59:59.999999Z); the first is the epoch.
TS_MAX_US = 253_402_300_799_999_999

_TRANSPORT = {IPPROTO_TCP: "tcp", 17: "udp"}
_sec_cache: dict[int, str] = {}
# Millisecond -> "YYYY-MM-DDTHH:MM:SS.mmm": a busy link puts many messages in each millisecond,
# and the rest of a timestamp is then one table lookup and one concatenation.
_ms_cache: dict[int, str] = {}
_MS_CACHE_MAX = 1 << 16
_MS = tuple(f".{i:03d}" for i in range(1000))
_US = tuple(f"{i:03d}Z" for i in range(1000))
_dumps = orjson.dumps
_NO_ENCAP: dict[str, Any] = {}  # record_bytes only: never handed out, never changed


def _ms_prefix(ms: int) -> str:
    # Clamped here, on the cache miss only: a timestamp before 1970 or after year 9999 (a bad
    # if_tsresol) prints as the first or last millisecond instead of failing in gmtime.
    sec, frac = divmod(min(max(ms, 0), TS_MAX_US // 1000), 1000)
    prefix = _sec_cache.get(sec)
    if prefix is None:
        if len(_sec_cache) > 4096:  # bounded: a capture spans few distinct seconds per batch
            _sec_cache.clear()
        prefix = _sec_cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    if len(_ms_cache) >= _MS_CACHE_MAX:
        _ms_cache.clear()
    out = _ms_cache[ms] = prefix + _MS[frac]
    return out


def format_ts(ts_us: int) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-22T10:00:00.123456Z``; years 1970-9999."""
    ms, us = divmod(ts_us, 1000)
    prefix = _ms_cache.get(ms)
    if prefix is None:
        prefix = _ms_prefix(ms)
    return prefix + _US[us]


# Encap -> its record object, by identity: the decoder shares one Encap among the packets of
# a VLAN or tunnel, so most records find theirs here. The Encap is kept in the value so its
# id cannot be reused while cached; both are read-only by convention.
_encaps: dict[int, tuple[Encap, dict[str, Any]]] = {}
_ENCAPS_MAX = 4096


def _encap_obj(encap: Encap) -> dict[str, Any]:
    """:func:`encap_dict` of ``encap``, built once per shared Encap."""
    hit = _encaps.get(id(encap))
    if hit is not None and hit[0] is encap:
        return hit[1]
    if len(_encaps) >= _ENCAPS_MAX:
        _encaps.clear()
    d = encap_dict(encap)
    _encaps[id(encap)] = (encap, d)
    return d


def encap_dict(encap: Encap | None) -> dict[str, Any]:
    """The record's ``encap`` object: ``{}`` for a bare frame."""
    if encap is None:
        return {}
    out: dict[str, Any] = {}
    if encap.vlans:
        out["vlans"] = list(encap.vlans)
    if encap.tunnels:
        tunnels = []
        for t in encap.tunnels:
            d: dict[str, Any] = {"type": t.type, "src": t.src, "dst": t.dst}
            if t.id is not None:
                d["id"] = t.id
            if t.vlans:
                d["vlans"] = list(t.vlans)
            tunnels.append(d)
        out["tunnels"] = tunnels
    return out


def to_record(out: OutputPacket, task_id: str = "", agent_id: str = "") -> dict[str, Any]:
    """Build the record for one output packet (its ``encap`` object may be shared: read-only)."""
    ms, us = divmod(out.ts_us, 1000)
    prefix = _ms_cache.get(ms)
    if prefix is None:
        prefix = _ms_prefix(ms)
    encap = out.encap
    ptype = out.payload_type
    return {
        "ts": prefix + _US[us],
        "task_id": task_id,
        "agent_id": agent_id,
        "src_ip": out.src_ip,
        "dst_ip": out.dst_ip,
        "src_port": out.src_port,
        "dst_port": out.dst_port,
        "transport": _TRANSPORT.get(out.transport) or str(out.transport),
        "payload_type": ptype,
        "labels": out.labels,
        "encap": {} if encap is None else _encap_obj(encap),
        ptype: out.payload,
    }


def dumps(record: dict[str, Any]) -> bytes:
    """Serialize a record as compact JSON (UTF-8, no trailing newline)."""
    return _dumps(record)


def record_bytes(out: OutputPacket, task_id: str = "", agent_id: str = "") -> bytes:
    """``dumps(to_record(out, task_id, agent_id))`` in one call: the reporters' hot path.

    The same dict, built inline (a Python call costs as much as a third of building it), with
    one shared empty ``encap`` (the dict never leaves this function); the tests hold the two to
    the same bytes.
    """
    ms, us = divmod(out.ts_us, 1000)
    prefix = _ms_cache.get(ms)
    if prefix is None:
        prefix = _ms_prefix(ms)
    encap = out.encap
    ptype = out.payload_type
    return _dumps(
        {
            "ts": prefix + _US[us],
            "task_id": task_id,
            "agent_id": agent_id,
            "src_ip": out.src_ip,
            "dst_ip": out.dst_ip,
            "src_port": out.src_port,
            "dst_port": out.dst_port,
            "transport": _TRANSPORT.get(out.transport) or str(out.transport),
            "payload_type": ptype,
            "labels": out.labels,
            "encap": _NO_ENCAP if encap is None else _encap_obj(encap),
            ptype: out.payload,
        }
    )
