"""The ``sip`` parser plugin: decoded UDP/TCP payloads in, one OutputPacket per SIP message out.

UDP: one message per datagram. TCP: segments are reassembled into streams per flow and cut
into messages by Content-Length (:mod:`otus.plugins.parser.sip.stream`, its module docstring
has the byte accounting), or by WebSocket frames after an RFC 7118 handshake.

Counters (``stats()``; every packet handed to :meth:`SipParser.handle` lands in at least one):

- ``parse.messages`` — SIP messages reported (the sum of the ``sip.*`` counters below);
- ``parse.drop.malformed`` — not a SIP start line, or a header Otus reads is unreadable;
- ``parse.drop.missing_header`` — no Call-ID, CSeq, From, To or Via;
- ``parse.drop.truncated`` — Content-Length promises more than the datagram holds;
- ``parse.drop.too_large`` — longer than ``max_message_size``;
- ``parse.drop.keepalive`` — CRLF keep-alives (RFC 5626), not messages;
- ``parse.drop.duplicate`` — seen twice within the ``dedup`` window (when enabled);
- ``parse.drop.tcp_*``, ``parse.drop.ws_protocol`` and ``tcp.*``, ``flows.*`` — TCP streams,
  see :mod:`otus.plugins.parser.sip.stream`;
- ``parse.drop.error`` — an unexpected exception inside the parser (a bug; never raised);
- ``sip.request.<METHOD>`` for the methods in :data:`METHODS`, ``sip.request.other``,
  ``sip.response.1xx`` … ``sip.response.6xx`` — for ``otus_sip_messages_total``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from otus.core.labels import (
    LABEL_SIP_CALL_ID,
    LABEL_SIP_CSEQ_METHOD,
    LABEL_SIP_FROM_URI,
    LABEL_SIP_METHOD,
    LABEL_SIP_STATUS_CODE,
    LABEL_SIP_TO_URI,
)
from otus.core.model import SpecModel
from otus.core.packet import IPPROTO_TCP, DecodedPacket, OutputPacket
from otus.plugins.base import PluginContext
from otus.plugins.parser.sip.dedup import Dedup
from otus.plugins.parser.sip.message import (
    METHODS,
    SipParseError,
    looks_like_sip,
    parse_message,
)
from otus.plugins.parser.sip.stream import StreamLimits, TcpStreams
from otus.plugins.parser.sip.websocket import is_upgrade_request

__all__ = ["DROP_REASONS", "DedupConfig", "SipConfig", "SipParser", "TcpConfig"]

DROP_REASONS = (
    "malformed",
    "missing_header",
    "truncated",
    "too_large",
    "keepalive",
    "duplicate",
    "error",
)
_REQUEST_KEYS = {m: "sip.request." + m for m in sorted(METHODS)}
_REQUEST_OTHER = "sip.request.other"
_RESPONSE_KEYS = {c: f"sip.response.{c}xx" for c in range(1, 7)}
_CODE_TEXT = {c: str(c) for c in range(100, 700)}
_KEEPALIVE_BYTES = b"\r\n\x00 "
_new = object.__new__


class TcpConfig(SpecModel):
    """Bounds of TCP stream reassembly, per worker."""

    max_flows: int = Field(
        65536,
        ge=16,
        le=1_000_000,
        description="TCP connections tracked at once; the least recently used go first.",
    )
    flow_idle_timeout_s: int = Field(
        300, ge=1, le=86400, description="A connection idle this long (packet time) is forgotten."
    )
    max_stream_buffer: int = Field(
        131072,
        ge=4096,
        le=16 << 20,
        description="Bytes held per direction: the message in progress and out-of-order data.",
    )
    max_total_buffer: int = Field(
        64 << 20,
        ge=1 << 20,
        le=4 << 30,
        description="Bytes held by all streams together; the stream crossing it drops its own.",
    )
    max_out_of_order: int = Field(
        64, ge=0, le=1024, description="Out-of-order segments held per direction."
    )
    gap_timeout_ms: int = Field(
        1000,
        ge=10,
        le=60_000,
        description="How long a hole waits for its retransmission before it is skipped.",
    )

    def limits(self) -> StreamLimits:
        """The stream layer's plain bounds."""
        return StreamLimits(
            self.max_flows,
            self.flow_idle_timeout_s * 1_000_000,
            self.max_stream_buffer,
            self.max_total_buffer,
            self.max_out_of_order,
            self.gap_timeout_ms * 1000,
        )


class DedupConfig(SpecModel):
    """Duplicate suppression: one report for a message captured twice (mirrors, VLAN copies)."""

    enabled: bool = Field(False, description="Report a message seen twice in the window once.")
    window_ms: int = Field(
        200,
        ge=1,
        le=10_000,
        description="Copies this close (packet time) are duplicates; keep it under SIP's T1 "
        "(500 ms) so retransmissions are still reported.",
    )
    max_entries: int = Field(
        65536, ge=16, le=1_000_000, description="Messages remembered at most (oldest go first)."
    )


class SipConfig(SpecModel):
    """Options of the ``sip`` parser."""

    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [5060, 5080],
        max_length=32,
        description="UDP/TCP ports whose payloads are SIP (either direction).",
    )
    detect_by_content: bool = Field(
        True,
        description="Also take other ports' payloads that start with a SIP start line (or, on "
        "TCP, a WebSocket handshake for SIP).",
    )
    max_message_size: int = Field(
        65535, ge=512, le=1 << 20, description="Longer messages are dropped (too_large)."
    )
    sdp: bool = Field(True, description="Summarise SDP bodies (connection, media, codecs).")
    keep_raw: bool = Field(False, description="Add the whole message text as sip.raw.")
    tcp: TcpConfig = Field(default_factory=TcpConfig, description="TCP stream reassembly.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Duplicate suppression.")


class SipParser:
    """Parses SIP over UDP (one message per datagram) and over TCP streams (reassembled)."""

    Config = SipConfig

    def __init__(self, config: SipConfig, ctx: PluginContext) -> None:
        self.config = config
        self.ctx = ctx
        self._ports = frozenset(config.ports)
        self._detect = config.detect_by_content
        self._max = config.max_message_size
        self._sdp = config.sdp
        self._raw = config.keep_raw
        self._c: dict[str, int] = dict.fromkeys(
            [
                *("parse.drop." + r for r in DROP_REASONS),
                *_REQUEST_KEYS.values(),
                _REQUEST_OTHER,
                *_RESPONSE_KEYS.values(),
            ],
            0,
        )
        d = config.dedup
        self._dedup = Dedup(d.window_ms * 1000, d.max_entries) if d.enabled else None
        self._seen = self._dedup.seen if self._dedup is not None else None
        # Bound once: handle() calls the variant the config asks for, no test per message.
        self._emit = self._handle_message if self._dedup is None else self._handle_unique
        self._tcp = TcpStreams(config.tcp.limits(), self._max, self._c, self._emit)

    def can_handle(self, pkt: DecodedPacket) -> bool:
        """SIP port on either side, or (``detect_by_content``) a payload shaped like SIP."""
        p = pkt.payload
        if not p:  # pure TCP ACKs and empty datagrams carry no message; SYN/FIN/RST matter
            return (
                pkt.transport == IPPROTO_TCP
                and pkt.tcp_flags & 0x07 != 0
                and (
                    pkt.dst_port in self._ports
                    or pkt.src_port in self._ports
                    or (self._detect and self._tcp.known(pkt))
                )
            )
        ports = self._ports
        if pkt.dst_port in ports or pkt.src_port in ports:
            return True
        if not self._detect:
            return False
        if pkt.transport == IPPROTO_TCP:
            return self._tcp.known(pkt) or looks_like_sip(p) or is_upgrade_request(p)
        return looks_like_sip(p)

    def handle(self, pkt: DecodedPacket, out: list[OutputPacket]) -> None:
        """Parse the payload; append what it holds to ``out``, count every failure."""
        if pkt.transport == IPPROTO_TCP:
            self._tcp.segment(pkt, out)
            return
        p = pkt.payload
        if len(p) > self._max:
            self._c["parse.drop.too_large"] += 1
            return
        self._emit(pkt, p, out)

    def expire(self, now_us: int) -> None:
        """Housekeeping (packet time): idle TCP flows, holes past the gap timeout."""
        self._tcp.expire(now_us)

    def drain(self, out: list[OutputPacket]) -> None:
        """End of capture: what TCP streams still hold is delivered or counted."""
        self._tcp.drain(out)

    def _handle_unique(self, pkt: DecodedPacket, p: bytes, out: list[OutputPacket]) -> None:
        """:meth:`_handle_message`, unless the same message was just seen (``dedup``)."""
        key = (hash(p), pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        if self._seen is not None and self._seen(key, pkt.ts_us):
            self._c["parse.drop.duplicate"] += 1
            return
        self._handle_message(pkt, p, out)

    def _handle_message(self, pkt: DecodedPacket, p: bytes, out: list[OutputPacket]) -> None:
        """Parse one whole message and append it, or count why not."""
        c = self._c
        try:
            sip = parse_message(p, self._sdp)
        except SipParseError as e:
            reason = e.reason
            if reason == "malformed" and not p.strip(_KEEPALIVE_BYTES):
                reason = "keepalive"
            c["parse.drop." + reason] += 1
            return
        except Exception:  # the data path never raises: a parser bug is counted, not fatal
            c["parse.drop.error"] += 1
            return
        method = sip["method"]
        if method is not None:
            c[_REQUEST_KEYS.get(method, _REQUEST_OTHER)] += 1
            labels = {
                LABEL_SIP_METHOD: method,
                LABEL_SIP_CALL_ID: sip["call_id"],
                LABEL_SIP_FROM_URI: sip["from"]["uri"],
                LABEL_SIP_TO_URI: sip["to"]["uri"],
                LABEL_SIP_CSEQ_METHOD: sip["cseq"]["method"],
            }
        else:
            code = sip["status_code"]
            c[_RESPONSE_KEYS[code // 100]] += 1
            labels = {
                LABEL_SIP_STATUS_CODE: _CODE_TEXT[code],
                LABEL_SIP_CALL_ID: sip["call_id"],
                LABEL_SIP_FROM_URI: sip["from"]["uri"],
                LABEL_SIP_TO_URI: sip["to"]["uri"],
                LABEL_SIP_CSEQ_METHOD: sip["cseq"]["method"],
            }
        if self._raw:
            sip["raw"] = p.decode("utf-8", "replace")
        # Slots filled directly: a third cheaper than the dataclass __init__ (a Python frame).
        o = _new(OutputPacket)
        o.ts_us = pkt.ts_us
        o.src_ip = pkt.src_ip
        o.dst_ip = pkt.dst_ip
        o.src_port = pkt.src_port
        o.dst_port = pkt.dst_port
        o.transport = pkt.transport
        o.payload_type = "sip"
        o.payload = sip
        o.labels = labels
        o.encap = pkt.encap
        out.append(o)

    def stats(self) -> dict[str, int]:
        """``parse.*``, ``sip.*``, ``tcp.*`` and ``flows.*`` counters."""
        out = dict(self._c)
        out["parse.messages"] = sum(v for k, v in out.items() if k[:4] == "sip.")
        out.update(self._tcp.stats())
        return out
