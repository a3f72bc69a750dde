"""`otus daemon`: run the agent in the foreground (what systemd and containers want)."""

from __future__ import annotations

import argparse
import signal
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the `daemon` subcommand."""
    p = sub.add_parser(
        "daemon",
        help="run the agent: control socket, tasks, metrics (foreground)",
        description="Run the Otus agent in the foreground until SIGTERM/SIGINT or `otus stop`; "
        "SIGHUP reloads the config.",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="global config (YAML; default $OTUS_CONFIG, else /etc/otus/otus.yaml if present)",
    )
    p.add_argument(
        "--kubernetes",
        action="store_true",
        help="also run the CaptureTasks assigned to this node ($NODE_NAME)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `otus daemon`."""
    # A SIGHUP's default action ends the process, and the daemon's reload handler only comes
    # once imports, config and socket are done (~1 s): systemd may send a reload right after
    # the start. Ignored until then; the daemon installs its handler when it can reload.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from otus.daemon.config import config_path, load_config  # noqa: PLC0415 - keep the CLI fast
    from otus.daemon.daemon import Daemon  # noqa: PLC0415

    path = config_path(args.config)
    config = load_config(path)
    return Daemon(config, config_path=path, kubernetes=args.kubernetes).run()
