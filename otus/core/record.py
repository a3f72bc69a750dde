"""The record contract: one JSON object per parsed message, the same from every reporter."""

from __future__ import annotations

import time
from typing import Any

import orjson

from otus.core.packet import IPPROTO_TCP, Encap, OutputPacket

__all__ = ["dumps", "encap_dict", "format_ts", "to_record"]

_TRANSPORT = {IPPROTO_TCP: "tcp", 17: "udp"}
_sec_cache: dict[int, str] = {}


def format_ts(ts_us: int) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-22T10:00:00.123456Z``."""
    sec, us = divmod(ts_us, 1_000_000)
    prefix = _sec_cache.get(sec)
    if prefix is None:
        if len(_sec_cache) > 4096:  # bounded: a capture spans few distinct seconds per batch
            _sec_cache.clear()
        prefix = _sec_cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{prefix}.{us:06d}Z"


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
    """Build the record for one output packet."""
    return {
        "ts": format_ts(out.ts_us),
        "task_id": task_id,
        "agent_id": agent_id,
        "src_ip": out.src_ip,
        "dst_ip": out.dst_ip,
        "src_port": out.src_port,
        "dst_port": out.dst_port,
        "transport": _TRANSPORT.get(out.transport, str(out.transport)),
        "payload_type": out.payload_type,
        "labels": out.labels,
        "encap": encap_dict(out.encap),
        out.payload_type: out.payload,
    }


def dumps(record: dict[str, Any]) -> bytes:
    """Serialize a record as compact JSON (UTF-8, no trailing newline)."""
    return orjson.dumps(record)
