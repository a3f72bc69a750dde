"""aiokafka's repeated log lines, held back: the first passes, then one per interval with a count.

aiokafka logs the outcome of every metadata refresh for every topic it tracks: a topic that does
not exist on a broker that does not create topics ("Topic otus-sip not found in cluster
metadata", an ERROR) comes back every ``retry_backoff_ms`` while the reporter waits for it, ten
lines a second by default, for as long as the task runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["REPEAT_EVERY_S", "RepeatFilter", "quiet_aiokafka"]

REPEAT_EVERY_S = 60.0  # a line that keeps coming is shown once a minute, with the count held back
_KEYS_MAX = 1024  # distinct lines remembered: topics are few, and forgetting only shows one again
_LOGGERS = ("aiokafka.cluster",)  # its lines are per topic and per metadata refresh


class RepeatFilter(logging.Filter):
    """Passes a line the first time, then at most once per ``every_s``, saying how many it held."""

    def __init__(
        self, every_s: float = REPEAT_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.every_s = every_s
        self._clock = clock
        self._seen: dict[tuple[int, str], list[float]] = {}  # line -> [shown at, held since]

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a repeat within the interval; a repeat after it carries the count held."""
        try:
            line = record.getMessage()
        except Exception:  # a malformed call: let logging report it as it would
            return True
        key, now = (record.levelno, line), self._clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= _KEYS_MAX:
                self._seen.clear()
            self._seen[key] = [now, 0]
            return True
        if now - seen[0] < self.every_s:
            seen[1] += 1
            return False
        if seen[1]:
            held = f"{int(seen[1])} more like this in the last {now - seen[0]:.0f} s"
            record.msg, record.args = f"{line} ({held})", None
        seen[0], seen[1] = now, 0
        return True


_installed: RepeatFilter | None = None


def quiet_aiokafka() -> RepeatFilter:
    """Hold back aiokafka's repeated metadata lines, once per process (idempotent)."""
    global _installed  # noqa: PLW0603 - one filter per process, on loggers that are global too
    if _installed is None:
        _installed = RepeatFilter()
        for name in _LOGGERS:
            logging.getLogger(name).addFilter(_installed)
    return _installed
