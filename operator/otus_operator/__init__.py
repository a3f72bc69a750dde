"""The Otus operator (kopf): CaptureTasks -> node assignment, status and conditions.

Run it with ``python -m otus_operator``; the handlers are in :mod:`otus_operator.handlers`, the
rules they apply in :mod:`otus_operator.logic`.
"""

from __future__ import annotations

__all__: list[str] = []
