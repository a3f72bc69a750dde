"""``python -m otus_operator``: run the operator (one replica; liveness on ``--liveness``)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

import kopf

from otus.core.errors import OtusError
from otus.core.kube import KubeConfig
from otus_operator.handlers import OperatorConfig, State, registry
from otus_operator.selector import parse_selector

__all__ = ["main"]


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (options and their environment variables)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    ap = argparse.ArgumentParser(prog="python -m otus_operator", description=__doc__)
    ap.add_argument(
        "--kubeconfig",
        default=env("OTUS_KUBECONFIG"),
        help="kubeconfig file (default: in-cluster, then $KUBECONFIG)",
    )
    ap.add_argument(
        "--agent-namespace",
        default=env("POD_NAMESPACE"),
        help="namespace of the agent pods (default: the operator's)",
    )
    ap.add_argument(
        "--agent-selector",
        default=env("OTUS_AGENT_SELECTOR", "app.kubernetes.io/name=otus-agent"),
        help="label selector of agent pods (=, ==, !=, in, notin, key, !key)",
    )
    ap.add_argument(
        "--heartbeat-timeout",
        type=_seconds,
        default=env(
            "OTUS_HEARTBEAT_TIMEOUT", "30"
        ),  # argparse converts a str default: a bad one is one line
        help="seconds without an agent report before its node is Unknown",
    )
    ap.add_argument(
        "--resync",
        type=_seconds,
        default=env("OTUS_RESYNC", "5"),  # argparse converts a str default: a bad one is one line
        help="seconds between re-aggregations of a task's status",
    )
    ap.add_argument(
        "--delete-timeout",
        type=_seconds,
        default=env(
            "OTUS_DELETE_TIMEOUT", "60"
        ),  # argparse converts a str default: a bad one is one line
        help="longest wait for agents to stop before a deleted task is released",
    )
    ap.add_argument(
        "--liveness",
        default=env("OTUS_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="kopf liveness endpoint ('' to disable)",
    )
    ap.add_argument("--verbose", action="store_true")
    return ap.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse options and run kopf until SIGTERM."""
    args = _args(argv)
    try:
        parse_selector(args.agent_selector)
    except ValueError as e:
        print(f"otus-operator: --agent-selector {args.agent_selector!r}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    state = State(
        config=OperatorConfig(
            kubeconfig=args.kubeconfig,
            agent_namespace=args.agent_namespace,
            agent_selector=args.agent_selector,
            heartbeat_timeout_s=args.heartbeat_timeout,
            resync_s=args.resync,
            delete_timeout_s=args.delete_timeout,
        )
    )
    try:
        state.kube = KubeConfig.load(args.kubeconfig)  # fail here, in one line, not in kopf
        kopf.run(
            registry=registry,
            clusterwide=True,
            standalone=True,
            liveness_endpoint=args.liveness or None,
            memo=kopf.Memo(state=state),
        )
    except OtusError as e:
        print(f"otus-operator: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
