"""Counter naming and arithmetic shared by every stage.

Each stage keeps plain ``int`` counters and reports them as a flat ``dict[str, int]``:

- ``<stage>.<name>`` counts what went through (``capture.packets``, ``decode.packets``);
- ``<stage>.drop.<reason>`` counts what ended there, one name per reason
  (``decode.drop.truncated``, ``reassembly.drop.timeout``, ``report.drop.backpressure``);
- names in :data:`GAUGES` are levels, not totals (they are summed across workers too).

Nothing leaves a pipeline without landing in exactly one counter, so the totals add up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = [
    "ALWAYS_SHOWN",
    "DROP",
    "GAUGES",
    "Stats",
    "add",
    "drops",
    "format_summary",
    "is_gauge",
    "merge",
]

Stats = dict[str, int]

DROP = ".drop."

GAUGES = frozenset(
    {
        "reassembly.pending_datagrams",
        "reassembly.pending_fragments",
        "reassembly.pending_bytes",
        "flows.active",
        "tcp.buffered_bytes",
        "report.buffered",
        "report.buffered_bytes",
    }
)


def is_gauge(name: str) -> bool:
    """Tell whether a counter name is a level rather than a running total."""
    return name in GAUGES


def add(into: Stats, other: Mapping[str, int]) -> None:
    """Add ``other`` into ``into`` key by key."""
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


def merge(parts: Iterable[Mapping[str, int]]) -> Stats:
    """Sum several stats dicts (for example one per fanout worker)."""
    out: Stats = {}
    for p in parts:
        add(out, p)
    return out


def drops(stats: Mapping[str, int]) -> Stats:
    """The drop counters only, keyed ``<stage>.<reason>``."""
    return {k.replace(DROP, ".", 1): v for k, v in stats.items() if DROP in k and v}


# Drop counters the summary shows even at zero when a stage reports them: a live capture's
# first question is whether the kernel lost anything.
ALWAYS_SHOWN = frozenset({"capture.drop.kernel"})
# Summary names of drop reasons whose ``<stage>.<reason>`` reads like a throughput counter
# (``capture.kernel`` next to ``capture.kernel_packets``).
_SUMMARY_NAMES = {"capture.kernel": "capture.kernel_drops"}

_HEADLINE = (
    ("capture.packets", "packets"),
    ("decode.packets", "decoded"),
    ("reassembly.datagrams", "reassembled"),
    ("parse.messages", "sip"),
    ("report.records", "reported"),
)


def format_summary(stats: Mapping[str, int]) -> str:
    """One line: the headline counts, every non-zero drop reason (and ALWAYS_SHOWN), the rest.

    A drop reason shows as ``<stage>.<reason>`` (``capture.shutdown``, ``parse.duplicate``),
    except kernel drops: ``capture.kernel_drops`` (``capture.drop.kernel``).
    """
    parts = [f"{label}={stats.get(key, 0)}" for key, label in _HEADLINE]
    d = drops(stats)
    for key in ALWAYS_SHOWN & stats.keys():
        d.setdefault(key.replace(DROP, ".", 1), 0)
    parts.append("dropped=" + str(sum(d.values())))
    parts.extend(f"{_SUMMARY_NAMES.get(k, k)}={v}" for k, v in sorted(d.items()))
    shown = {k for k, _ in _HEADLINE}
    parts.extend(
        f"{k}={v}" for k, v in sorted(stats.items()) if k not in shown and DROP not in k and v
    )
    return " ".join(parts)
