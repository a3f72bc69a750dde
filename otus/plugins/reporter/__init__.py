"""Reporters: deliver records. ``REPORTERS`` maps a reporter ``type`` to its class."""

from __future__ import annotations

from typing import Any

from otus.plugins.reporter.console import ConsoleConfig, ConsoleReporter
from otus.plugins.reporter.kafka import KafkaConfig, KafkaReporter

__all__ = ["REPORTERS", "ConsoleConfig", "ConsoleReporter", "KafkaConfig", "KafkaReporter"]

REPORTERS: dict[str, Any] = {
    "console": ConsoleReporter,
    "kafka": KafkaReporter,
}
