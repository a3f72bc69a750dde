"""Filter processor: drop by SIP method, or keep/drop by a label expression."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from otus.core.labels import LABEL_SIP_CSEQ_METHOD, LABEL_SIP_METHOD
from otus.core.model import SpecModel
from otus.core.packet import OutputPacket
from otus.plugins.base import PluginContext
from otus.plugins.processor.expr import ExprError, Predicate, compile_expr

__all__ = ["FilterConfig", "FilterProcessor", "LabelsConfig", "LabelsProcessor"]

# RFC 3261 §25.1 token: every method the SIP parser reports (X-CUSTOM.1 too) can be dropped.
_METHOD = re.compile(r"[A-Za-z0-9.!%*_+`'~-]{1,32}")


def _check_expr(v: str | None) -> str | None:
    if v is not None:
        try:
            compile_expr(v)
        except ExprError as e:
            raise ValueError(str(e)) from None
    return v


class FilterConfig(SpecModel):
    """Which messages to drop; all conditions given must pass for a message to be kept."""

    drop_methods: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Drop requests with these methods and the responses to them (by CSeq).",
    )
    drop_if: str | None = Field(
        default=None, max_length=4096, description="Drop messages whose labels match."
    )
    keep_if: str | None = Field(
        default=None, max_length=4096, description="Keep only messages whose labels match."
    )

    _v_drop = field_validator("drop_if", "keep_if")(_check_expr)

    @field_validator("drop_methods")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        for m in v:
            if not _METHOD.fullmatch(m):
                raise ValueError(f"not a SIP method: {m!r}")
        return [m.upper() for m in v]


class FilterProcessor:
    """Drops the messages a task does not want; counts them as ``process.drop.filter``."""

    Config = FilterConfig

    def __init__(self, config: FilterConfig, ctx: PluginContext) -> None:
        self._methods = frozenset(config.drop_methods)
        self._drop: Predicate | None = compile_expr(config.drop_if) if config.drop_if else None
        self._keep: Predicate | None = compile_expr(config.keep_if) if config.keep_if else None
        self._dropped = 0

    def process(self, batch: list[OutputPacket]) -> list[OutputPacket]:
        """Return the messages that pass every condition."""
        methods, drop, keep = self._methods, self._drop, self._keep
        out = []
        for pkt in batch:
            labels = pkt.labels
            if methods and (
                labels.get(LABEL_SIP_METHOD) in methods
                or labels.get(LABEL_SIP_CSEQ_METHOD) in methods
            ):
                continue
            if drop is not None and drop(labels):
                continue
            if keep is not None and not keep(labels):
                continue
            out.append(pkt)
        self._dropped += len(batch) - len(out)
        return out

    def stats(self) -> dict[str, int]:
        """``process.drop.filter``."""
        return {"process.drop.filter": self._dropped}


class LabelsConfig(SpecModel):
    """Static labels added to every message (node, cluster, site...)."""

    labels: dict[str, str] = Field(default_factory=dict, max_length=64)

    @field_validator("labels")
    @classmethod
    def _bounded(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k, val in v.items():
            if not k or len(k) > 128 or len(str(val)) > 1024:
                raise ValueError(f"label {k!r}: names are 1..128 characters, values at most 1024")
        return v


class LabelsProcessor:
    """Adds static labels; never drops."""

    Config = LabelsConfig

    def __init__(self, config: LabelsConfig, ctx: PluginContext) -> None:
        self._labels = dict(config.labels)

    def process(self, batch: list[OutputPacket]) -> list[OutputPacket]:
        """Add the labels in place (existing labels of the same name win)."""
        extra = self._labels
        if extra:
            for pkt in batch:
                pkt.labels = {**extra, **pkt.labels}
        return batch

    def stats(self) -> dict[str, int]:
        """No counters."""
        return {}
