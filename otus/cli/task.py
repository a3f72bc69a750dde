"""`otus task create|delete|list|status|update`: manage the daemon's tasks over its socket."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import yaml

from otus.cli.client import EXIT_OK, ago, client_parent, connect, print_json, reads_reply, table
from otus.core.errors import SpecError
from otus.core.stats import drops
from otus.pipeline.spec import document_error, load_document, load_task, parse_task, task_data

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the `task` command group."""
    parent = client_parent()
    p = sub.add_parser("task", help="manage the daemon's tasks", description="Manage tasks.")
    tsub = p.add_subparsers(dest="task_command", metavar="COMMAND", required=True)
    c = tsub.add_parser("create", parents=[parent], help="create a task from a YAML/JSON file")
    c.add_argument(
        "-f", "--file", required=True, metavar="TASK.yaml", help="task file ('-': stdin)"
    )
    c.set_defaults(func=reads_reply(create))
    u = tsub.add_parser("update", parents=[parent], help="replace a task's spec (restarts it)")
    u.add_argument(
        "-f", "--file", required=True, metavar="TASK.yaml", help="task file ('-': stdin)"
    )
    u.set_defaults(func=reads_reply(update))
    d = tsub.add_parser("delete", parents=[parent], help="stop a task (reporters flush), forget it")
    d.add_argument("id", metavar="ID")
    d.set_defaults(func=reads_reply(delete))
    ls = tsub.add_parser("list", parents=[parent], help="list tasks")
    ls.add_argument("-q", "--quiet", action="store_true", help="task ids only")
    ls.set_defaults(func=reads_reply(list_tasks))
    st = tsub.add_parser("status", parents=[parent], help="one task's state and counters")
    st.add_argument("id", metavar="ID")
    st.set_defaults(func=reads_reply(status))


def _read_spec(path: str) -> dict[str, Any]:
    if path != "-":
        return task_data(load_task(path))
    text = sys.stdin.read()
    try:
        data = load_document(text)  # JSON is YAML too
    except (ValueError, RecursionError, yaml.YAMLError) as e:
        raise SpecError(f"stdin: not valid YAML or JSON: {document_error(e)}") from None
    if isinstance(data, dict) and "task" in data and "id" not in data:
        data = data["task"]
    return task_data(parse_task(data, "stdin"))


def _counts(t: dict[str, Any]) -> tuple[int, int, int]:
    s = t.get("stats") or {}
    return s.get("capture.packets", 0), s.get("parse.messages", 0), sum(drops(s).values())


def _one_line(reason: str | None, width: int = 60) -> str:
    if not reason:
        return "-"
    line = " ".join(reason.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _rfc3339(ts: float | None) -> str:
    if not ts:
        return "-"
    when = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{when} ({ago(ts)} ago)"


def print_task(t: dict[str, Any]) -> None:
    """The human view of one task."""
    procs = t.get("processes") or []
    alive = [p for p in procs if p.get("alive")]
    pids = ",".join(str(p["pid"]) for p in alive) or "-"
    rss = (t.get("rss_bytes") or 0) / (1 << 20)
    rows = [
        ("id", t["id"]),
        ("state", t["state"]),
        ("reason", _one_line(t.get("reason"), 200)),
        ("created", _rfc3339(t.get("created_at"))),
        ("started", _rfc3339(t.get("started_at"))),
        ("stopped", _rfc3339(t.get("stopped_at"))),
        ("workers", f"{len(alive)}/{len(procs)} alive (pids {pids}), rss {rss:.1f} MiB"),
        ("capture", (t.get("spec") or {}).get("capture", {}).get("type", "-")),
    ]
    for k, v in rows:
        print(f"{k + ':':<9} {v}")
    print(f"{'summary:':<9} {t.get('summary', '')}")


def create(args: argparse.Namespace) -> int:
    """`otus task create -f FILE`."""
    spec = _read_spec(args.file)
    t = connect(args).call("task.create", spec)
    if args.output == "json":
        print_json(t)
    else:
        print(f"task {t['id']} {t['state']}")
    return EXIT_OK


def update(args: argparse.Namespace) -> int:
    """`otus task update -f FILE`."""
    spec = _read_spec(args.file)
    t = connect(args).call("task.update", spec)
    if args.output == "json":
        print_json(t)
    else:
        print(f"task {t['id']} {t['state']}")
    return EXIT_OK


def delete(args: argparse.Namespace) -> int:
    """`otus task delete ID`."""
    t = connect(args).call("task.delete", {"id": args.id})
    if args.output == "json":
        print_json(t)
    else:
        print(f"task {t['id']} deleted ({t['state']}): {t.get('summary', '')}")
    return EXIT_OK


def list_tasks(args: argparse.Namespace) -> int:
    """`otus task list`."""
    tasks = connect(args).call("task.list")["tasks"]
    if args.quiet:
        for t in tasks:
            print(t["id"])
    elif args.output == "json":
        print_json(tasks)
    else:
        rows = []
        for t in tasks:
            packets, sip, dropped = _counts(t)
            workers = sum(1 for p in t.get("processes") or [] if p.get("alive"))
            rows.append(
                [
                    t["id"],
                    t["state"],
                    ago(t.get("created_at")),
                    workers,
                    packets,
                    sip,
                    dropped,
                    _one_line(t.get("reason")),
                ]
            )
        print(table(["ID", "STATE", "AGE", "WORKERS", "PACKETS", "SIP", "DROPS", "REASON"], rows))
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    """`otus task status ID`."""
    t = connect(args).call("task.status", {"id": args.id})
    if args.output == "json":
        print_json(t)
        return EXIT_OK
    print_task(t)
    nonzero = {k: v for k, v in sorted((t.get("stats") or {}).items()) if v}
    if nonzero:
        print("counters:")
        width = max(map(len, nonzero))
        for k, v in nonzero.items():
            print(f"  {k:<{width}}  {v}")
    return EXIT_OK
