"""Core types shared by every layer: packets, labels, counters, the record, the error tree."""

from otus.core.errors import OtusError
from otus.core.labels import Labels
from otus.core.packet import (
    DecodedPacket,
    Encap,
    OutputPacket,
    RawBatch,
    RawPacket,
    Tunnel,
)
from otus.core.stats import Stats

__all__ = [
    "DecodedPacket",
    "Encap",
    "Labels",
    "OtusError",
    "OutputPacket",
    "RawBatch",
    "RawPacket",
    "Stats",
    "Tunnel",
]
