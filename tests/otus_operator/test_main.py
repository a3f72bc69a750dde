"""``python -m otus_operator``: bad credentials end in one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_missing_kubeconfig_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "otus_operator", "--kubeconfig", str(tmp_path / "absent"),
         "--liveness", ""],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"otus-operator: cannot read kubeconfig {tmp_path / 'absent'}: "
        f"[Errno 2] No such file or directory: '{tmp_path / 'absent'}'"
    ]
