"""Processors: filter and label messages. ``PROCESSORS`` maps a processor ``type`` to its class."""

from __future__ import annotations

from typing import Any

from otus.plugins.processor.filter import (
    FilterConfig,
    FilterProcessor,
    LabelsConfig,
    LabelsProcessor,
)
from otus.plugins.processor.k8s import K8sConfig, K8sEnricher

__all__ = [
    "PROCESSORS",
    "FilterConfig",
    "FilterProcessor",
    "K8sConfig",
    "K8sEnricher",
    "LabelsConfig",
    "LabelsProcessor",
]

PROCESSORS: dict[str, Any] = {
    "filter": FilterProcessor,
    "labels": LabelsProcessor,
    "k8s": K8sEnricher,
}
