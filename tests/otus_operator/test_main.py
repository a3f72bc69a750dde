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


def test_an_agent_selector_it_cannot_read_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "otus_operator", "--kubeconfig", str(tmp_path / "absent"),
         "--liveness", "", "--agent-selector", "app in (otus-agent"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "otus-operator: --agent-selector 'app in (otus-agent': "
        "found the end, expected a value, ',' or ')'"
    ]


def test_a_bad_number_in_the_environment_is_a_usage_error(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "OTUS_HEARTBEAT_TIMEOUT": "abc"}
    proc = subprocess.run(
        [sys.executable, "-m", "otus_operator", "--kubeconfig", str(tmp_path / "absent"),
         "--liveness", ""],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("argument --heartbeat-timeout: 'abc' is not a positive number of seconds")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "otus_operator", "--kubeconfig", str(tmp_path / "absent"),
         "--liveness", "", "--resync", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "'0' is not a positive number of seconds" in proc.stderr
