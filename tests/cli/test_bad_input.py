"""Bad input on the command line: one clear line on stderr, exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.infra.cli import run_otus

NOWHERE = "/nonexistent/otus.sock"


def otus(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_otus(*args, env={"OTUS_CONFIG": os.devnull}, stdin=stdin)


def last_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert "Unclosed" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e400"])
def test_bad_timeouts_are_usage_errors(value: str) -> None:
    for argv in (
        ["status", "--socket", NOWHERE],
        ["fleet", "agents", "--brokers", "127.0.0.1:1"],
        ["fleet", "task", "list", "--brokers", "127.0.0.1:1"],
    ):
        r = otus(*argv, "--timeout", value)
        assert r.returncode == 2, (argv, r.stderr)
        assert last_line(r) == (
            "otus: error: argument --timeout: must be a finite number of seconds, > 0 and at "
            f"most 86400, not {value!r}"
        )


def test_bad_fleet_waits_are_usage_errors() -> None:
    r = otus("fleet", "task", "list", "--brokers", "127.0.0.1:1", "--wait", "nan")
    assert r.returncode == 2 and "argument --wait: must be a finite number" in last_line(r)
    r = otus("fleet", "task", "list", "--brokers", "127.0.0.1:1", "--expire", "-1")
    assert r.returncode == 2 and "argument --expire: must be a finite number" in last_line(r)


@pytest.mark.parametrize(
    ("brokers", "why"),
    [
        ("127.0.0.1:abc", "the port must be a number from 1 to 65535"),
        ("h:0", "the port must be a number from 1 to 65535"),
        ("h:99999", "the port must be a number from 1 to 65535"),
        (":", "the host is missing (write host:port)"),
        ("ok:9092,[::1", "']' missing after the IPv6 address"),
    ],
)
def test_bad_brokers_are_usage_errors(brokers: str, why: str) -> None:
    r = otus("fleet", "agents", "--brokers", brokers, "--timeout", "5")
    assert r.returncode == 2, r.stderr
    bad = brokers.rsplit(",", maxsplit=1)[-1]
    assert last_line(r) == f"otus: --brokers: broker {bad!r}: {why}"


def test_unreadable_files_are_usage_errors(tmp_path: Path) -> None:
    deep_json, deep_yaml, huge = tmp_path / "t.json", tmp_path / "t.yaml", tmp_path / "h.yaml"
    deep_json.write_text("[" * 100_000)
    deep_yaml.write_text("a: " + "[" * 100_000)
    huge.write_text("a: " + "9" * 5000)
    nested, digits = "nested too deeply", "an integer has more than 4300 digits"
    for argv, line in (
        (["run", "--task", str(deep_json)], f"otus: {deep_json}: not valid JSON: {nested}"),
        (["run", "--task", str(huge)], f"otus: {huge}: not valid YAML: {digits}"),
        (
            ["task", "create", "-f", str(deep_json), "--socket", NOWHERE],
            f"otus: {deep_json}: not valid JSON: {nested}",
        ),
        (
            ["fleet", "task", "create", "-f", str(deep_yaml), "--brokers", "127.0.0.1:1"],
            f"otus: {deep_yaml}: not valid YAML: {nested}",
        ),
        (["status", "--config", str(deep_yaml)], f"otus: {deep_yaml}: not valid YAML: {nested}"),
        (["status", "--config", str(huge)], f"otus: {huge}: not valid YAML: {digits}"),
    ):
        r = otus(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert last_line(r) == line
    r = otus("task", "create", "-f", "-", "--socket", NOWHERE, stdin="[" * 100_000)
    assert r.returncode == 2 and last_line(r) == f"otus: stdin: not valid YAML or JSON: {nested}"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["--duration", "nan"],
            "otus: error: argument --duration: must be a finite number of seconds, > 0 and at "
            "most 2592000, not 'nan'",
        ),
        (
            ["-i", "a" * 16],
            f"otus: error: argument -i/--interface: interface name {'a' * 16!r} is not 1 to 15 "
            "bytes long",
        ),
        (
            ["-i", "lo x"],
            "otus: error: argument -i/--interface: interface name 'lo x' has a NUL, '/' or "
            "whitespace",
        ),
    ],
)
def test_bad_run_options_are_usage_errors(argv: list[str], line: str) -> None:
    r = otus("run", *argv)
    assert r.returncode == 2 and last_line(r) == line


def test_bad_filter_expressions_are_usage_errors(tmp_path: Path) -> None:
    """One line naming the field, at load: 1000 nested ``not`` was a RecursionError traceback."""
    field = "  - processors.0.filter.config.drop_if: Value error, "
    for expr, why in (
        ("not " * 1000 + "a", "nested more than 32 levels deep"),
        ("sip.call_id =~ '(a+)+$'", "regular expression '(a+)+$' repeats a variable-length"),
    ):
        task = tmp_path / "t.yaml"
        task.write_text(
            "id: t\ncapture: {type: pcap, path: x}\n"
            f'processors: [{{type: filter, config: {{drop_if: "{expr}"}}}}]\n'
        )
        r = otus("run", "--task", str(task))
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert "Traceback" not in r.stderr and lines[0] == f"otus: {task}: invalid task"
        assert len(lines) == 2 and lines[1].startswith(field + why), lines


def test_a_key_given_twice_on_stdin_is_a_usage_error() -> None:
    r = otus(
        "task",
        "create",
        "-f",
        "-",
        "--socket",
        NOWHERE,
        stdin="id: t\ncapture: {type: pcap, path: x}\nid: u\n",
    )
    assert r.returncode == 2
    assert (
        last_line(r) == "otus: stdin: not valid YAML or JSON: duplicate key 'id' (line 3, column 1)"
    )
