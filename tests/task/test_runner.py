"""TaskRunner: what its worker processes get of the spec."""

from __future__ import annotations

import logging

import pytest

from otus.pipeline.spec import parse_task
from otus.task.runner import TaskRunner
from tests.infra.skips import requires_root


@requires_root
@pytest.mark.parametrize(("snap_len", "warnings"), [(None, 0), (65535, 2)])
async def test_workers_tell_defaults_from_values_set(
    snap_len: int | None, warnings: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Two worker processes on lo (MTU 65536) warn about snap_len only when the task sets it."""
    capture = {"type": "afpacket", "interfaces": ["lo"], "fanout_size": 2}
    if snap_len is not None:
        capture["snap_len"] = snap_len
    spec = parse_task({"id": "snap", "capture": capture, "limits": {"duration_s": 0.2}})
    runner = TaskRunner(spec)
    assert not runner.inline
    with caplog.at_level(logging.WARNING):
        await runner.start()
        await runner.wait()
    assert runner.error is None
    got = [r for r in caplog.records if r.getMessage().startswith("snap_len")]
    assert len(got) == warnings, caplog.text
