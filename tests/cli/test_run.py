"""`otus run`: how the command line and a task file combine, usage errors, a forced stop."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from otus.cli.main import build_parser, main
from otus.cli.run import EXIT_INTERRUPTED, build_spec
from tests.infra.frames import BASE_TS, eth, ipv4, sip_message, udp
from tools.pcapio import PcapWriter

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sipp-uac-uas.pcap"


def _spec(*argv: str) -> object:
    return build_spec(build_parser().parse_args(["run", *argv]))


def test_filter_and_workers_override_a_task_s_afpacket_capture(tmp_path: Path) -> None:
    task = tmp_path / "live.yaml"
    task.write_text(
        "id: live\ncapture: {type: afpacket, interfaces: [eth9], bpf_filter: 'udp', "
        "fanout_size: 4}\n"
    )
    cap = _spec("--task", str(task), "-f", "udp port 5080", "--workers", "2").capture  # type: ignore[attr-defined]
    assert (cap.interfaces, cap.bpf_filter, cap.fanout_size) == (["eth9"], "udp port 5080", 2)
    cap = _spec("--task", str(task)).capture  # type: ignore[attr-defined]
    assert (cap.bpf_filter, cap.fanout_size) == ("udp", 4)


@pytest.mark.parametrize("opt", [["-f", "udp"], ["--workers", "2"]])
def test_live_options_with_a_capture_file_are_a_usage_error(
    opt: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = tmp_path / "file.yaml"
    task.write_text(f"id: file\ncapture: {{type: pcap, path: {EXAMPLE}}}\n")
    for source in (["--task", str(task)], ["-r", str(EXAMPLE)]):
        assert main(["run", *source, *opt]) == 2
        err = capsys.readouterr().err
        assert err == "otus: -f and --workers apply to live capture (-i, or a task's afpacket)\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-i", "nope0"], "otus: task run: interface nope0 not found\n"),
        (
            ["-i", "lo", "-f", "udp port"],
            "otus: task run: invalid BPF filter 'udp port': "
            "can't parse filter expression: syntax error\n",
        ),
    ],
    ids=["unknown-interface", "invalid-filter"],
)
def test_bad_interface_or_filter_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *argv, "--duration", "0.1"]) == 2
    assert capsys.readouterr().err == message


@pytest.mark.parametrize("name", ["lo\0x", "é" * 8, ""])
def test_interface_names_linux_cannot_have_are_a_usage_error(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argv cannot carry a NUL past exec(), but main() and task files can: the kernel would cut
    # "lo\0x" at the NUL and capture on lo.
    with pytest.raises(SystemExit) as e:
        main(["run", "-i", name, "--duration", "0.1"])
    assert e.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"otus: error: argument -i/--interface: interface name {name!r} ")


def test_second_signal_stops_at_once_even_when_stdout_is_stuck() -> None:
    """Nobody reads stdout: the first SIGINT cannot finish the flush, the second still exits."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # smaller than the example's records
    proc = subprocess.Popen(
        [sys.executable, "-m", "otus", "run", "-r", str(EXAMPLE), "--format", "json"],
        stdout=w,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(w)
    try:
        deadline = time.monotonic() + 30
        while _pipe_fill(r) < 4096:  # otus is now blocked writing to a full pipe
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert proc.poll() is None  # graceful stop waits for the reporter's write
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 2.0
    finally:
        proc.kill()
        proc.wait()
        os.close(r)
    assert proc.returncode == EXIT_INTERRUPTED == 130
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "otus: SIGINT again: stopped without flushing the reporters"


def test_second_signal_on_a_quiet_pipe_counts_what_was_reported() -> None:
    """`-r -` waiting on a writer that went quiet: the summary still counts the records out."""
    head = EXAMPLE.read_bytes()[:2000]  # the pcap header and a few whole records
    proc = subprocess.Popen(
        [sys.executable, "-m", "otus", "run", "-r", "-", "--format", "json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(head)
        proc.stdin.flush()
        first = proc.stdout.readline()  # records are out: otus now waits for more bytes
        assert first.startswith(b"{")
        time.sleep(1.5)  # past the once-a-second publish: so neither may hide a stale count
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        out = proc.stdout.read()  # with what readline() buffered
        assert proc.stderr is not None
        text = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    records = 1 + len(out.splitlines())
    assert proc.returncode == EXIT_INTERRUPTED
    assert text.splitlines()[-1] == "otus: SIGTERM again: stopped without flushing the reporters"
    assert f" reported={records} " in text, text


def _pipe_fill(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(buf, sys.byteorder)


def test_records_an_unreachable_broker_never_took_make_the_run_fail(tmp_path: Path) -> None:
    task = tmp_path / "kafka.yaml"
    task.write_text(
        f"id: unreachable\ncapture: {{type: pcap, path: {EXAMPLE}}}\n"
        "reporters: [{type: kafka, config: {brokers: ['127.0.0.1:1'], topic: t, "
        "flush_timeout_ms: 200}}]\n"
    )
    for _ in range(3):  # the close used to hang in some runs (a cancel lost while connecting)
        t0 = time.monotonic()
        p = subprocess.run(
            [sys.executable, "-m", "otus", "run", "--task", str(task)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        )  # fmt: skip
        assert time.monotonic() - t0 < 30
        assert p.returncode == 1, p.stderr
        assert "Traceback" not in p.stderr
        last = p.stderr.splitlines()[-1]
        assert last == "otus: 12 records were not delivered (report.kafka_closed=12)"


def test_a_task_s_kafka_password_reaches_the_run(tmp_path: Path) -> None:
    """The task went through model_dump(mode="json"): the password became '**********'."""
    task = tmp_path / "kafka.yaml"
    task.write_text(
        "id: k\ncapture: {type: pcap, path: x}\nreporters:\n  - type: kafka\n    config:\n"
        "      {brokers: ['k:9092'], topic: sip, security_protocol: SASL_PLAINTEXT,\n"
        "       sasl_mechanism: PLAIN, username: otus, password: hunter2}\n"
    )
    [reporter] = _spec("--task", str(task), "-r", str(EXAMPLE)).reporters  # type: ignore[attr-defined]
    assert reporter.config.password.get_secret_value() == "hunter2"


def test_format_applies_to_a_task_s_default_console(tmp_path: Path) -> None:
    """A task without ``reporters:`` printed JSON whatever --format said."""
    task = tmp_path / "t.yaml"
    task.write_text("id: t\ncapture: {type: pcap, path: x}\n")
    [reporter] = _spec("--task", str(task), "--format", "text").reporters  # type: ignore[attr-defined]
    assert (reporter.type, reporter.config.format) == ("console", "text")
    task.write_text("id: t\ncapture: {type: pcap, path: x}\nreporters: [{type: console}]\n")
    [reporter] = _spec("--task", str(task), "--format", "text").reporters  # type: ignore[attr-defined]
    assert reporter.config.format == "text"


def test_a_reader_that_goes_away_ends_the_run(tmp_path: Path) -> None:
    """`otus run ... | head -1`: the run stops reading instead of capturing on for nobody."""
    pcap = tmp_path / "many.pcap"
    with PcapWriter(pcap) as w:
        for i in range(5000):  # 1.6 MB of JSON: far more than a pipe holds
            w.write(BASE_TS + i, eth(ipv4(udp(sip_message(i)))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "otus", "run", "-r", str(pcap), "--format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b'{"ts":')
        proc.stdout.close()  # head -1 exits
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    text = err.decode()
    assert proc.returncode == 0 and "Traceback" not in text and "BrokenPipe" not in text
    summary = dict(kv.split("=") for kv in text.splitlines()[-1].split()[1:])
    assert int(summary["packets"]) < 5000  # stopped early
    assert int(summary["report.console_failed"]) > 0


def _run_with_closed(fd: int) -> subprocess.CompletedProcess[bytes]:
    """`otus run -r EXAMPLE --format json` started with ``fd`` closed (``>&-``, ``2>&-``)."""
    return subprocess.run(
        [sys.executable, "-m", "otus", "run", "-r", str(EXAMPLE), "--format", "json"],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        preexec_fn=lambda: os.close(fd),  # the child closes it before exec
        timeout=60,
        check=False,
    )


def test_a_closed_stdout_is_one_clear_line() -> None:
    """uvloop took fd 1 for itself, records went into it, and closing it aborted (SIGABRT)."""
    r = _run_with_closed(1)
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode().splitlines() == [
        "otus: task run: stdout is closed: records have nowhere to go"
    ]


def test_a_closed_stderr_leaves_stdout_to_the_records() -> None:
    """The summary printed to a closed stderr went to stdout, amid the JSON records."""
    r = _run_with_closed(2)
    assert r.returncode == 0
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 12 and all(line.startswith('{"ts":') for line in lines)
