"""The run summary line: headline counts, drop reasons, the rest."""

from __future__ import annotations

from otus.core.stats import format_summary


def _pairs(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in (kv.split("=", 1) for kv in line.split())}


def test_kernel_drops_are_named_apart_from_kernel_packets() -> None:
    s = _pairs(
        format_summary(
            {
                "capture.packets": 7,
                "capture.kernel_packets": 10,
                "capture.drop.kernel": 2,
                "capture.drop.shutdown": 1,
            }
        )
    )
    assert s["capture.kernel_drops"] == 2
    assert s["capture.kernel_packets"] == 10
    assert s["capture.shutdown"] == 1
    assert s["dropped"] == 3
    assert "capture.kernel" not in s


def test_kernel_drops_show_even_at_zero() -> None:
    s = _pairs(format_summary({"capture.packets": 1, "capture.drop.kernel": 0}))
    assert s["capture.kernel_drops"] == 0
    assert s["dropped"] == 0
