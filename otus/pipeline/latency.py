"""Per-stage latency histograms, cheap enough to update once per batch."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

__all__ = ["BUCKETS", "Histogram"]

# Seconds; a batch of 64-1024 frames takes tens of microseconds to tens of milliseconds.
BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


@dataclass(slots=True)
class Histogram:
    """Bucket counts (non-cumulative, last bucket is +Inf), sum and count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Add one observation."""
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def merge(self, other: Histogram) -> None:
        """Add another histogram's observations into this one."""
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.sum += other.sum
        self.count += other.count

    def to_wire(self) -> tuple[list[int], float, int]:
        """A picklable, JSON-able form."""
        return (list(self.counts), self.sum, self.count)

    @classmethod
    def from_wire(cls, w: tuple[list[int], float, int] | list[object]) -> Histogram:
        """Rebuild from :meth:`to_wire`."""
        counts, total, n = w
        return cls(list(counts), float(total), int(n))  # type: ignore[call-overload, arg-type]
