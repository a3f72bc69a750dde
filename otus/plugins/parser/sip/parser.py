"""The ``sip`` parser plugin: decoded UDP/TCP payloads in, one OutputPacket per SIP message out.

Counters (``stats()``; every packet handed to :meth:`SipParser.handle` lands in at least one):

- ``parse.messages`` — SIP messages reported (the sum of the ``sip.*`` counters below);
- ``parse.drop.malformed`` — not a SIP start line, or a header Otus reads is unreadable;
- ``parse.drop.missing_header`` — no Call-ID, CSeq, From, To or Via;
- ``parse.drop.truncated`` — Content-Length promises more than the datagram holds;
- ``parse.drop.too_large`` — longer than ``max_message_size``;
- ``parse.drop.keepalive`` — CRLF keep-alives (RFC 5626), not messages;
- ``parse.drop.tcp_partial`` — a TCP segment without a whole message (stream reassembly is a
  later stage), or the incomplete rest after the whole ones;
- ``parse.drop.tcp_framing`` — a message on TCP without Content-Length (RFC 3261 §18.3);
- ``parse.drop.error`` — an unexpected exception inside the parser (a bug; never raised);
- ``sip.request.<METHOD>`` for the methods in :data:`METHODS`, ``sip.request.other``,
  ``sip.response.1xx`` … ``sip.response.6xx`` — for ``otus_sip_messages_total``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from otus.core.labels import (
    LABEL_SIP_CALL_ID,
    LABEL_SIP_CSEQ_METHOD,
    LABEL_SIP_FROM_URI,
    LABEL_SIP_METHOD,
    LABEL_SIP_STATUS_CODE,
    LABEL_SIP_TO_URI,
)
from otus.core.packet import IPPROTO_TCP, DecodedPacket, OutputPacket
from otus.plugins.base import PluginContext
from otus.plugins.parser.sip.message import (
    METHODS,
    SipParseError,
    frame_end,
    looks_like_sip,
    parse_message,
)

__all__ = ["DROP_REASONS", "SipConfig", "SipParser"]

DROP_REASONS = (
    "malformed",
    "missing_header",
    "truncated",
    "too_large",
    "keepalive",
    "tcp_partial",
    "tcp_framing",
    "error",
)
_REQUEST_KEYS = {m: "sip.request." + m for m in sorted(METHODS)}
_REQUEST_OTHER = "sip.request.other"
_RESPONSE_KEYS = {c: f"sip.response.{c}xx" for c in range(1, 7)}
_CODE_TEXT = {c: str(c) for c in range(100, 700)}
_KEEPALIVE_BYTES = b"\r\n\x00 "


class SipConfig(BaseModel):
    """Options of the ``sip`` parser."""

    model_config = ConfigDict(extra="forbid")

    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [5060, 5080],
        max_length=32,
        description="UDP/TCP ports whose payloads are SIP (either direction).",
    )
    detect_by_content: bool = Field(
        True, description="Also take other ports' payloads that start with a SIP start line."
    )
    max_message_size: int = Field(
        65535, ge=512, le=1 << 20, description="Longer messages are dropped (too_large)."
    )
    sdp: bool = Field(True, description="Summarise SDP bodies (connection, media, codecs).")
    keep_raw: bool = Field(False, description="Add the whole message text as sip.raw.")


class SipParser:
    """Parses SIP over UDP (one message per datagram) and whole messages in TCP segments."""

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

    def can_handle(self, pkt: DecodedPacket) -> bool:
        """SIP port on either side, or (``detect_by_content``) a payload shaped like SIP."""
        p = pkt.payload
        if not p:  # pure TCP ACKs and empty datagrams carry no message
            return False
        ports = self._ports
        if pkt.dst_port in ports or pkt.src_port in ports:
            return True
        return self._detect and looks_like_sip(p)

    def handle(self, pkt: DecodedPacket, out: list[OutputPacket]) -> None:
        """Parse the payload; append what it holds to ``out``, count every failure."""
        if pkt.transport == IPPROTO_TCP:
            self._handle_segment(pkt, out)
            return
        p = pkt.payload
        if len(p) > self._max:
            self._c["parse.drop.too_large"] += 1
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
        out.append(
            OutputPacket(
                pkt.ts_us,
                pkt.src_ip,
                pkt.dst_ip,
                pkt.src_port,
                pkt.dst_port,
                pkt.transport,
                "sip",
                sip,
                labels,
                pkt.encap,
            )
        )

    def _handle_segment(self, pkt: DecodedPacket, out: list[OutputPacket]) -> None:
        """A TCP segment: every whole message it holds, framed by Content-Length."""
        # Stream reassembly (a message across segments) is a later stage that will feed
        # frame_end() and parse_message() from its buffer; until then what is not whole in
        # this segment is counted as tcp_partial.
        p = pkt.payload
        c = self._c
        n = len(p)
        pos = 0
        handled = False
        while True:
            while pos < n and p[pos] in (13, 10):  # CRLF keep-alives between messages
                pos += 1
            if pos >= n:
                if not handled:
                    c["parse.drop.keepalive"] += 1
                return
            handled = True
            if not looks_like_sip(p, pos):
                c["parse.drop.tcp_partial"] += 1
                return
            try:
                end = frame_end(p, pos)
            except SipParseError as e:
                c["parse.drop." + e.reason] += 1
                return
            if end < 0:
                c["parse.drop.tcp_partial"] += 1
                return
            if end - pos > self._max:
                c["parse.drop.too_large"] += 1
            else:
                self._handle_message(pkt, p[pos:end], out)
            pos = end

    def stats(self) -> dict[str, int]:
        """``parse.*`` counters and the per-method/status-class ``sip.*`` counters."""
        out = dict(self._c)
        out["parse.messages"] = sum(v for k, v in out.items() if k[:4] == "sip.")
        return out
