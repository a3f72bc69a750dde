"""Peak RSS of a command, measured from a small process: ``python -m tests.infra.peak_rss OUT CMD``.

A child's ``ru_maxrss`` starts at the RSS of the process it was forked (or vforked) from: the
kernel carries the old address space's high-water mark across exec. Measured straight from a
pytest process holding hundreds of MiB, every child would look that large. Started from this
small process instead, the figure is the command's own (plus this interpreter's ~10 MiB at most).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, Any


def run_measured(
    args: Sequence[str],
    *,
    stdout: IO[Any],
    stderr: IO[Any],
    env: Mapping[str, str],
    cwd: str | os.PathLike[str],
    timeout: float,
) -> tuple[int, int]:
    """(exit code, peak RSS in MiB) of ``args``; TimeoutError (command killed) past ``timeout``."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        wrapper = [sys.executable, "-m", "tests.infra.peak_rss", rss.name, *args]
        proc = subprocess.Popen(
            wrapper, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=cwd
        )
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
            raise TimeoutError(f"{' '.join(args)} took more than {timeout} s") from None
        kib = rss.read().strip()
    if not kib:
        raise RuntimeError(f"no peak RSS from the wrapper (exit code {rc})")
    return rc, int(kib) // 1024


def main(argv: list[str]) -> int:
    """Run ``argv[1:]``; write its peak RSS to ``argv[0]``; exit with its exit code."""
    out, cmd = argv[0], argv[1:]
    proc = subprocess.Popen(cmd)
    # The test kills this wrapper on a timeout: take the command down with it.
    signal.signal(signal.SIGTERM, lambda *_: proc.kill())
    _, status, usage = os.wait4(proc.pid, 0)
    with open(out, "w") as f:
        f.write(str(usage.ru_maxrss))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
