"""cancel_requested(): a cancel that wait_for() swallowed is still visible to a retry loop."""

from __future__ import annotations

import asyncio
import contextlib
import sys

from otus.core.aio import cancel_requested


async def test_a_cancel_swallowed_by_wait_for_is_seen() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    seen: list[bool] = []

    async def connect_once() -> None:
        try:
            await asyncio.wait_for(fut, 10)
        except OSError:  # what a retry loop catches before trying again
            seen.append(cancel_requested())

    task = asyncio.create_task(connect_once())
    await asyncio.sleep(0)  # the task now waits inside wait_for
    fut.set_exception(ConnectionRefusedError("refused"))  # the connect fails ...
    task.cancel()  # ... as the shutdown cancels the task
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if sys.version_info < (3, 12):
        assert seen == [True]  # 3.11 raised the failure instead of CancelledError
    else:
        assert seen in ([], [True])


async def test_no_cancel_no_flag() -> None:
    assert not cancel_requested()
