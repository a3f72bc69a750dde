"""`otus run`: one task in the foreground, records on stdout, a summary on stderr."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from types import FrameType
from typing import Any

from otus.cli.client import seconds
from otus.core.errors import CaptureInputError, ConfigError
from otus.core.stats import format_summary
from otus.pipeline.spec import load_task, parse_task, task_data
from otus.plugins.capture.afpacket.config import check_ifname
from otus.task.runner import TaskRunner

__all__ = ["EXIT_INTERRUPTED", "build_spec", "check_capture", "register"]

EXIT_INTERRUPTED = 130  # a second SIGINT/SIGTERM: stopped at once, reporters not flushed
_MAX_DURATION_S = 30 * 86400.0  # LimitsSpec.duration_s's bound


# Drops that mean a reporter failed to deliver (not a policy such as a size limit or
# backpressure under overload, nor a reader that closed stdout): `otus run` then exits 1.
_UNDELIVERED = (
    "report.drop.kafka_failed",
    "report.drop.kafka_closed",
    "report.drop.reporter_error",
)


def _ifname(text: str) -> str:
    try:
        return check_ifname(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: Any) -> None:
    """Add the `run` subcommand."""
    p = sub.add_parser(
        "run",
        help="run one capture task in the foreground",
        description="Run one task in the foreground: from a capture file (-r) to its end, or "
        "live from an interface (-i) until SIGINT/SIGTERM or a limit. A second SIGINT/SIGTERM "
        "stops at once, without flushing the reporters (exit 130).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "-r", "--read", metavar="FILE", help="read a pcap/pcapng file (gzipped or not; - is stdin)"
    )
    src.add_argument(
        "-i",
        "--interface",
        type=_ifname,
        metavar="IFACE",
        help="capture live (needs CAP_NET_RAW)",
    )
    p.add_argument(
        "-f", "--filter", metavar="BPF", help="BPF filter in tcpdump syntax (live: -i or --task)"
    )
    p.add_argument(
        "--workers", type=int, metavar="N", help="fanout worker processes (live: -i or --task)"
    )
    p.add_argument("--task", metavar="TASK.yaml", help="task spec (YAML or JSON)")
    p.add_argument(
        "--format",
        choices=("json", "text"),
        help="record format (default: json when stdout is not a terminal, else text)",
    )
    p.add_argument(
        "--duration", type=seconds(_MAX_DURATION_S), metavar="SECONDS", help="stop after this long"
    )
    p.add_argument("--max-packets", type=int, metavar="N", help="stop after N captured frames")
    p.set_defaults(func=run)


def build_spec(args: argparse.Namespace) -> Any:
    """Merge the task file (if any) with the command-line options into a validated spec."""
    data: dict[str, Any]
    if args.task:
        data = task_data(load_task(args.task))
    else:
        data = {"id": "run"}
    fmt = args.format or ("text" if sys.stdout.isatty() else "json")
    if args.read:
        data["capture"] = {"type": "pcap", "path": args.read}
    elif args.interface:
        cap = (
            dict(data.get("capture") or {})
            if data.get("capture", {}).get("type") == "afpacket"
            else {}
        )
        cap.update(type="afpacket", interfaces=[args.interface])
        data["capture"] = cap
    elif "capture" not in data:
        raise ConfigError("nothing to capture: give -r FILE, -i IFACE or --task with a capture")
    if args.filter is not None or args.workers is not None:
        # -i, or the task's own afpacket capture: either way these override the task's values.
        if data["capture"].get("type") != "afpacket":
            raise ConfigError("-f and --workers apply to live capture (-i, or a task's afpacket)")
        cap = dict(data["capture"])
        if args.filter is not None:
            cap["bpf_filter"] = args.filter
        if args.workers is not None:
            cap["fanout_size"] = args.workers
        data["capture"] = cap
    if "reporters" not in data:
        # No task, or a task that leaves its reporters to the default console: --format (and
        # the terminal test) apply to it as to a plain `otus run -r`.
        data["reporters"] = [{"type": "console", "config": {"format": fmt}}]
    elif args.format:
        for r in data.get("reporters", []):
            if r.get("type") == "console":
                r.setdefault("config", {})["format"] = args.format
    limits = dict(data.get("limits") or {})
    if args.duration is not None:
        limits["duration_s"] = args.duration
    if args.max_packets is not None:
        limits["max_packets"] = args.max_packets
    if limits:
        data["limits"] = limits
    return parse_task(data, args.task or "command line")


def check_capture(spec: Any) -> None:
    """An unknown interface or an invalid filter is a usage error, found before anything starts."""
    if spec.capture.type != "afpacket":
        return
    from otus.plugins.capture.afpacket import check  # noqa: PLC0415 - only live capture needs it

    try:
        check(spec.capture)
    except CaptureInputError as e:
        raise ConfigError(f"task {spec.id}: {e}") from None


async def _run(args: argparse.Namespace) -> int:
    spec = build_spec(args)
    check_capture(spec)
    runner = TaskRunner(spec)

    def on_change(r: TaskRunner) -> None:
        # A worker that died or hung loses its share of the traffic: stop the others too, as
        # the daemon does, instead of running on with a hole nobody sees.
        if r.error and not r.stop_requested:
            print(f"otus: {r.error}; stopping", file=sys.stderr)
            r.request_stop()

    loop = asyncio.get_running_loop()
    interrupted = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # A plain signal handler, not loop.add_signal_handler: it runs even while the loop is
        # stuck (a blocking write to a full stdout pipe), so the second signal always works.
        nonlocal interrupted
        interrupted += 1
        if interrupted == 1:
            loop.call_soon_threadsafe(runner.request_stop)  # reporters flush, summary follows
            return
        # Second signal: kill the workers and leave now, whatever is blocked (os.write: the
        # handler may have interrupted a write to sys.stderr).
        runner.kill()
        why = f"{signal.Signals(signum).name} again: stopped without flushing the reporters"
        os.write(2, f"otus: {format_summary(runner.stats())}\notus: {why}\n".encode())
        os._exit(EXIT_INTERRUPTED)

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        await runner.start()
        if not runner.inline:  # once started (a failed start is its own error)
            runner.on_change = on_change
            on_change(runner)  # a worker may have failed as the last one started
        stats = await runner.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print(f"otus: {format_summary(stats)}", file=sys.stderr)
    if runner.error:
        print(f"otus: task failed: {runner.error}", file=sys.stderr)
        return 1
    lost = {k: v for k in _UNDELIVERED if (v := stats.get(k, 0))}
    if lost:
        # A batch job whose records never reached Kafka must not look like a success.
        what = " ".join(f"{k.replace('.drop.', '.')}={v}" for k, v in lost.items())
        print(f"otus: {sum(lost.values())} records were not delivered ({what})", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of `otus run`."""
    import uvloop  # noqa: PLC0415 - keep `otus --help` fast

    return uvloop.run(_run(args))
