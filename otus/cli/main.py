"""The `otus` command: argument parsing and dispatch; every failure is one clear line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from otus import __version__
from otus.cli import completion as completion_cmd
from otus.cli import ctl as ctl_cmd
from otus.cli import daemon as daemon_cmd
from otus.cli import fleet as fleet_cmd
from otus.cli import run as run_cmd
from otus.cli import task as task_cmd
from otus.cli.client import EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_USAGE
from otus.control.jsonrpc import INVALID_PARAMS, INVALID_SPEC
from otus.core.errors import ConfigError, DaemonNotRunningError, OtusError, RpcError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's default is usage + message on stderr and exit 2; keep that, minus noise.
        self.print_usage(sys.stderr)
        self.exit(2, f"otus: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used for shell completion)."""
    p = _Parser(
        prog="otus",
        description="Capture SIP signalling and stream it, parsed.",
        epilog="Control commands find the daemon's socket from --socket, $OTUS_SOCKET, the "
        "config's daemon.socket_path (--config, $OTUS_CONFIG, /etc/otus/otus.yaml), else "
        "/run/otus/otus.sock. Exit codes: 0 ok, 1 failed, 2 usage or invalid input (an "
        "unknown interface or an invalid BPF filter too), 3 daemon not running (`otus fleet`: "
        "no Kafka broker reachable), 130 `otus run` stopped by a second SIGINT/SIGTERM.",
    )
    p.add_argument("--version", action="version", version=f"otus {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run_cmd.register(sub)
    daemon_cmd.register(sub)
    task_cmd.register(sub)
    ctl_cmd.register(sub)
    fleet_cmd.register(sub)
    completion_cmd.register(sub)
    return p


def _fill_std_fds() -> None:
    """Put /dev/null on fd 0, 1 or 2 if closed (``otus run >&-``); sys.stdout stays None."""
    # Otherwise the next socket, epoll or eventfd takes the number: records meant for stdout
    # would be written into it, and uvloop aborts (SIGABRT) when it closes an fd below 3.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
    if sys.stderr is None:  # print(file=None) writes to stdout: the summary amid the records
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as the process


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    _fill_std_fds()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"otus: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DaemonNotRunningError as e:
        print(f"otus: {e}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except RpcError as e:
        print(f"otus: {e.message}", file=sys.stderr)
        if isinstance(e.data, list):
            for line in e.data:
                print(f"  - {line}", file=sys.stderr)
        return EXIT_USAGE if e.code in (INVALID_SPEC, INVALID_PARAMS) else EXIT_FAILED
    except OtusError as e:
        print(f"otus: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
