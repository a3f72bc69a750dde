"""`otus status`, `otus reload`, `otus stop`: the daemon itself, over its socket."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from otus.cli.client import (
    EXIT_FAILED,
    EXIT_OK,
    ago,
    client_parent,
    connect,
    print_json,
    reads_reply,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add `status`, `reload` and `stop`."""
    parent = client_parent()
    s = sub.add_parser("status", parents=[parent], help="the daemon's state")
    s.set_defaults(func=reads_reply(status))
    r = sub.add_parser("reload", parents=[parent], help="reload the daemon's config (like SIGHUP)")
    r.set_defaults(func=reads_reply(reload))
    st = sub.add_parser(
        "stop",
        parents=[parent],
        help="shut the daemon down (tasks stop and flush; they are restored on the next start)",
    )
    st.add_argument("--no-wait", action="store_true", help="do not wait for the daemon to exit")
    st.set_defaults(func=reads_reply(stop))


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie waiting for its parent has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(args: argparse.Namespace) -> int:
    """`otus status`."""
    st = connect(args).call("daemon.status")
    if args.output == "json":
        print_json(st)
        return EXIT_OK
    state = "stopping" if st.get("stopping") else "ready" if st.get("ready") else "starting"
    print(
        f"otus daemon {st['version']}  pid {st['pid']}  agent {st['agent_id']}  "
        f"up {ago(st['started_at'])}  {state}"
    )
    lg = st.get("log") or {}
    loki = lg.get("loki") or {}
    lost = (
        lg.get("queue_dropped", 0)
        + loki.get("dropped_queue_full", 0)
        + loki.get("dropped_send_failed", 0)
    )
    tasks = st.get("tasks") or {}
    by_state = ", ".join(f"{k} {v}" for k, v in sorted((tasks.get("by_state") or {}).items()))
    lim = st.get("limits") or {}
    tags = ",".join(f"{k}={v}" for k, v in sorted((st.get("tags") or {}).items())) or "-"
    rows = [
        ("socket", st.get("socket")),
        ("metrics", st.get("metrics_url") or "disabled"),
        ("config", st.get("config_path") or "(defaults)"),
        ("tags", tags),
        (
            "log",
            f"{lg.get('level')} {lg.get('format')} {','.join(lg.get('outputs') or [])}"
            f" (lost {lost})",
        ),
        (
            "limits",
            f"max_tasks {lim.get('max_tasks')}, "
            f"memory_per_task {lim.get('memory_per_task_mb')} MiB",
        ),
        ("planes", ", ".join(f"{k} {v}" for k, v in (st.get("planes") or {}).items())),
        ("tasks", f"{tasks.get('total', 0)}" + (f" ({by_state})" if by_state else "")),
    ]
    for k, v in rows:
        print(f"{k + ':':<8} {v}")
    return EXIT_OK


def reload(args: argparse.Namespace) -> int:
    """`otus reload`."""
    res = connect(args).call("daemon.reload")
    if args.output == "json":
        print_json(res)
        return EXIT_OK
    msg = f"config reloaded: applied {', '.join(res['applied'])} (log level {res['log_level']})"
    if res.get("restart_required"):
        msg += f"; changes to {', '.join(res['restart_required'])} need a restart"
    print(msg)
    return EXIT_OK


def stop(args: argparse.Namespace) -> int:
    """`otus stop`: ask for the shutdown, then wait until the daemon has exited."""
    t0 = time.monotonic()
    res = connect(args).call("daemon.stop")
    pid = int(res["pid"])
    if args.no_wait:
        if args.output == "json":
            print_json(res)
        else:
            print(f"otus daemon (pid {pid}) stopping")
        return EXIT_OK
    deadline = t0 + float(res.get("timeout_s", 15)) + 5.0
    while _alive(pid):
        if time.monotonic() > deadline:
            print(f"otus: daemon (pid {pid}) still running after {deadline - t0:.0f} s")
            return EXIT_FAILED
        time.sleep(0.05)
    took = time.monotonic() - t0
    if args.output == "json":
        print_json({**res, "stopped": True, "seconds": round(took, 3)})
    else:
        print(f"otus daemon (pid {pid}) stopped in {took:.2f} s")
    return EXIT_OK
