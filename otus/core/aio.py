"""asyncio helpers shared by the control planes and the reporters."""

from __future__ import annotations

import asyncio

__all__ = ["cancel_requested"]


def cancel_requested() -> bool:
    """Whether the running task has a cancel pending that nobody delivered as CancelledError.

    On Python 3.11, ``asyncio.wait_for`` can swallow a cancel that arrives as its inner awaitable
    fails, raising that failure instead; a retry loop that catches ``Exception`` must ask this
    before retrying, or it outlives the shutdown that cancelled it.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
