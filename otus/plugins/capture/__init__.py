"""Capturers: where raw frames come from. ``CAPTURERS`` maps a capture ``type`` to its class."""

from __future__ import annotations

from typing import Any

from otus.plugins.capture.afpacket import AfpacketCapturer, AfpacketConfig
from otus.plugins.capture.pcapfile import PcapConfig, PcapFileCapturer

__all__ = ["CAPTURERS", "AfpacketCapturer", "AfpacketConfig", "PcapConfig", "PcapFileCapturer"]

CAPTURERS: dict[str, Any] = {
    "pcap": PcapFileCapturer,
    "afpacket": AfpacketCapturer,
}
