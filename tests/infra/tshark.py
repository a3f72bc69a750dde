"""tshark as the independent reference: SIP messages of a capture, and Otus records, normalized.

A normalized message is a plain dict that both sides produce the same way, so a test can say
``assert [normalize_otus(r) for r in records] == sip_messages(pcap)``.

Encapsulation names follow ``otus.core.packet.Tunnel.type``; tshark's protocol layers map onto
them as in :data:`TUNNEL_NAMES` (GRE carrying ERSPAN is one ``erspan2``/``erspan3`` layer, GRE
carrying Ethernet is ``gretap``, IP directly in IP is ``ipip``/``ip6ip``/``ip6ip6``/``ipip6``
named inner-then-outer as in Linux ``ip6tnl`` modes: ``ip6ip`` is IPv6 inside IPv4).
``vlans`` is every 802.1Q/802.1ad id of the frame, outermost first, across tunnel layers.
"""

from __future__ import annotations

import calendar
import json
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FIELDS",
    "TUNNEL_NAMES",
    "diff_messages",
    "normalize_otus",
    "sip_messages",
    "tshark_available",
    "tshark_json",
]

FIELDS = (
    "ts_us",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "transport",
    "method",
    "status_code",
    "call_id",
    "cseq_seq",
    "cseq_method",
    "from_tag",
    "to_tag",
    "user_agent",
    "content_length",
    "vlans",
    "tunnels",
)

# tshark layer name -> Otus tunnel type (GRE, ERSPAN and IP-in-IP need context, see _tunnels).
TUNNEL_NAMES = {"vxlan": "vxlan", "geneve": "geneve", "gre": "gre"}
_IP_IN_IP = {
    ("ip", "ip"): "ipip",
    ("ip", "ipv6"): "ip6ip",
    ("ipv6", "ipv6"): "ip6ip6",
    ("ipv6", "ip"): "ipip6",
}
_VLAN_LAYERS = {"vlan": "vlan.id", "ieee8021ad": "ieee8021ad.id"}

Pairs = list[tuple[str, Any]]


def tshark_available() -> bool:
    """Whether tshark is on PATH."""
    return shutil.which("tshark") is not None


def _prefs(tcp_reassembly: bool) -> list[str]:
    flag = "TRUE" if tcp_reassembly else "FALSE"
    prefs = {
        "tcp.desegment_tcp_streams": flag,
        "sip.desegment_headers": flag,
        "sip.desegment_body": flag,
        "ip.defragment": "TRUE",
        "ipv6.defragment": "TRUE",
    }
    out: list[str] = []
    for k, v in prefs.items():
        out += ["-o", f"{k}:{v}"]
    return out


def tshark_json(
    pcap: str | Path,
    *,
    tcp_reassembly: bool = True,
    decode_as: Sequence[str] = (),
    display_filter: str = "sip",
    timeout: float = 120.0,
    prefs: Sequence[str] = (),
) -> list[Pairs]:
    """The layers of each displayed frame as ordered (key, value) pairs, duplicates kept.

    ``prefs`` adds ``-o name:value`` preferences (after the defaults, so they win).
    """
    args = ["tshark", "-n", "-r", str(pcap), "-T", "json", *_prefs(tcp_reassembly)]
    for pref in prefs:
        args += ["-o", pref]
    for d in decode_as:
        args += ["-d", d]
    if display_filter:
        args += ["-Y", display_filter]
    proc = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"tshark failed on {pcap} ({proc.returncode}): {err}")
    if not proc.stdout.strip():
        return []
    # tshark copies non-UTF-8 header bytes into its JSON as they are.
    frames = json.loads(proc.stdout.decode("utf-8", "replace"), object_pairs_hook=list)
    out = []
    for frame in frames:
        source = _get(frame, "_source")
        out.append(_get(source, "layers") if source else [])
    return out


def _get(pairs: Pairs, key: str) -> Any:
    """The first value of ``key`` among direct children, or None."""
    for k, v in pairs:
        if k == key:
            return v
    return None


def _find(node: Any, key: str) -> Any:
    """Depth-first search for the first value of ``key`` anywhere below ``node``."""
    if isinstance(node, list):
        for item in node:
            if isinstance(item, tuple):
                k, v = item
                if k == key:
                    return v
                found = _find(v, key)
                if found is not None:
                    return found
            else:
                found = _find(item, key)
                if found is not None:
                    return found
    return None


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value), 0) if str(value).startswith("0x") else int(str(value))
    except ValueError:
        return None


def _ts_us(epoch: str) -> int:
    """``frame.time_epoch`` ("1795315518.215832000") to integer microseconds, no float."""
    sec, _, frac = epoch.partition(".")
    return int(sec) * 1_000_000 + int((frac + "000000")[:6])


def _tunnels(names: list[str], layers: Pairs) -> list[str]:
    """Otus tunnel types for the encapsulation layers named in ``names`` (outer first)."""
    out: list[str] = []
    erspan_seen = 0
    erspans = [v for k, v in layers if k == "erspan"]
    for i, name in enumerate(names):
        nxt = names[i + 1] if i + 1 < len(names) else ""
        if name == "gre":
            if nxt == "erspan":
                ver = _int(_find(erspans[erspan_seen], "erspan.version")) if erspans else None
                erspan_seen += 1
                out.append("erspan3" if ver == 2 else "erspan2")
            elif nxt == "eth":
                out.append("gretap")
            else:
                out.append("gre")
        elif name in ("vxlan", "geneve"):
            out.append(TUNNEL_NAMES[name])
        elif (name, nxt) in _IP_IN_IP:
            out.append(_IP_IN_IP[(name, nxt)])
    return out


def _message(layers: Pairs, upto: int, sip: Pairs) -> dict[str, Any] | None:
    """Normalize one SIP layer, with addresses from the innermost layers before it."""
    before = layers[:upto]
    names = [k for k, _ in before]
    ip_layer = next(((k, v) for k, v in reversed(before) if k in ("ip", "ipv6")), None)
    l4 = next(((k, v) for k, v in reversed(before) if k in ("udp", "tcp")), None)
    request = _get(sip, "sip.Request-Line_tree")
    status = _get(sip, "sip.Status-Line_tree")
    if ip_layer is None or l4 is None or (request is None and status is None):
        return None  # a continuation or non-SIP payload, not a message
    hdrs = _get(sip, "sip.msg_hdr_tree") or []
    frame = _get(layers, "frame") or []
    fam, ipv = ip_layer
    proto, l4v = l4
    ua = _get(hdrs, "sip.User-Agent")
    vlans: list[int] = []
    for k, v in before:
        if k in _VLAN_LAYERS:
            vid = _int(_get(v, _VLAN_LAYERS[k]))
            if vid is not None:
                vlans.append(vid)
    return {
        "ts_us": _ts_us(str(_get(frame, "frame.time_epoch"))),
        "src_ip": _get(ipv, f"{fam}.src"),
        "dst_ip": _get(ipv, f"{fam}.dst"),
        "src_port": _int(_get(l4v, f"{proto}.srcport")),
        "dst_port": _int(_get(l4v, f"{proto}.dstport")),
        "transport": proto,
        "method": _get(request, "sip.Method") if request is not None else None,
        "status_code": _int(_get(status, "sip.Status-Code")) if status is not None else None,
        "call_id": _get(hdrs, "sip.Call-ID"),
        "cseq_seq": _int(_find(hdrs, "sip.CSeq.seq")),
        "cseq_method": _find(hdrs, "sip.CSeq.method"),
        "from_tag": _find(_get(hdrs, "sip.From_tree"), "sip.from.tag"),
        "to_tag": _find(_get(hdrs, "sip.To_tree"), "sip.to.tag"),
        "user_agent": ua if ua is not None else _get(hdrs, "sip.Server"),
        "content_length": _int(_get(hdrs, "sip.Content-Length")),
        "vlans": vlans,
        "tunnels": _tunnels(names, before),
    }


def sip_messages(
    pcap: str | Path,
    *,
    tcp_reassembly: bool = True,
    decode_as: Sequence[str] = (),
    prefs: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Every SIP message tshark dissects, in frame order (several per frame over TCP)."""
    out: list[dict[str, Any]] = []
    for layers in tshark_json(
        pcap, tcp_reassembly=tcp_reassembly, decode_as=decode_as, prefs=prefs
    ):
        for i, (key, value) in enumerate(layers):
            if key == "sip" and isinstance(value, list):
                msg = _message(layers, i, value)
                if msg is not None:
                    out.append(msg)
    return out


def _parse_ts(ts: str) -> int:
    """RFC 3339 UTC with microseconds (the record's ``ts``) to integer microseconds."""
    base, _, frac = ts.rstrip("Z").partition(".")
    sec = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return sec * 1_000_000 + int((frac + "000000")[:6])


def normalize_otus(record: dict[str, Any]) -> dict[str, Any]:
    """Map an Otus record (the record contract) to the normalized message shape."""
    sip = record.get("sip") or {}
    cseq = sip.get("cseq") or {}
    encap = record.get("encap") or {}
    tunnels = encap.get("tunnels") or []
    vlans = list(encap.get("vlans") or [])
    for t in tunnels:
        vlans += list(t.get("vlans") or [])
    return {
        "ts_us": _parse_ts(record["ts"]),
        "src_ip": record.get("src_ip"),
        "dst_ip": record.get("dst_ip"),
        "src_port": record.get("src_port"),
        "dst_port": record.get("dst_port"),
        "transport": record.get("transport"),
        "method": sip.get("method"),
        "status_code": sip.get("status_code"),
        "call_id": sip.get("call_id"),
        "cseq_seq": cseq.get("seq"),
        "cseq_method": cseq.get("method"),
        "from_tag": (sip.get("from") or {}).get("tag"),
        "to_tag": (sip.get("to") or {}).get("tag"),
        "user_agent": sip.get("user_agent"),
        "content_length": sip.get("content_length"),
        "vlans": vlans,
        "tunnels": [t.get("type") for t in tunnels],
    }


def diff_messages(
    got: Iterable[dict[str, Any]], want: Iterable[dict[str, Any]], limit: int = 10
) -> str:
    """A readable account of where two normalized message lists differ (for assert messages)."""
    g, w = list(got), list(want)
    lines = [f"otus: {len(g)} messages, tshark: {len(w)} messages"]
    for i, (a, b) in enumerate(zip(g, w, strict=False)):
        if a != b:
            fields = {k: (a.get(k), b.get(k)) for k in FIELDS if a.get(k) != b.get(k)}
            lines.append(f"#{i}: {fields}")
            if len(lines) > limit:
                break
    return "\n".join(lines)
