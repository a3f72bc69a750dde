"""`otus fleet`: agents and their tasks over Kafka, for fleets without Kubernetes.

Brokers: --brokers, else $OTUS_KAFKA_BROKERS, else kafka.brokers of the config (--config,
$OTUS_CONFIG, /etc/otus/otus.yaml; OTUS_KAFKA__* overrides apply), which also gives the topics and
the security settings (SASL, TLS) unless overridden here.

Targets: --agent ID (repeatable) and --tag K=V (repeatable; every tag must match); both together
must both match; neither targets every agent. The agents expected to reply are the named ones, or
for tags and "all" the live agents whose heartbeats match.

Exit codes: 0 every expected agent replied and none said no; 1 an agent replied with an error, or
an expected agent (or, with none expected, any agent) did not reply within --wait; 2 bad usage,
task file or config; 3 no broker reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from otus.cli.client import (
    EXIT_FAILED,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
    ago,
    seconds,
    table,
)
from otus.cli.task import _read_spec as _read_task  # the same task files as `otus task create`
from otus.control.base import KafkaSettings
from otus.control.fleet import (
    MAX_NAME,
    MAX_TAG,
    MAX_TARGET_AGENTS,
    MAX_TARGET_TAGS,
    BrokerUnreachableError,
    EnvelopeError,
    Target,
    brief,
    id_problem,
)
from otus.control.fleet_client import FleetClient, stale
from otus.core.errors import ConfigError, ReporterError
from otus.core.stats import drops
from otus.pipeline.spec import format_validation_error
from otus.plugins.reporter.kafka_config import check_broker

__all__ = ["register"]

EXIT_UNREACHABLE = EXIT_NOT_RUNNING  # 3, as "daemon not running" for the socket commands
_MONTH_S = 30 * 86400.0


def _parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("kafka")
    g.add_argument("--brokers", metavar="HOST:PORT,...", help="bootstrap brokers (see above)")
    g.add_argument("--config", metavar="PATH", help="read brokers, topics, security from here")
    g.add_argument("--command-topic", metavar="TOPIC")
    g.add_argument("--reply-topic", metavar="TOPIC")
    g.add_argument("--status-topic", metavar="TOPIC")
    g.add_argument(
        "--timeout", type=seconds(), default=15.0, metavar="SECONDS", help="connect timeout (15)"
    )
    p.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="output format"
    )
    return p


def _name(what: str) -> Callable[[str], str]:
    """An argparse type: an agent or task id as agents take it (refused here, not by them)."""

    def parse(text: str) -> str:
        if problem := id_problem(text, MAX_NAME):
            raise argparse.ArgumentTypeError(f"the {what} {brief(text)} {problem}")
        return text

    return parse


def _tag(text: str) -> tuple[str, str]:
    """An argparse type: K=V, as an agent's ``agent.tags`` can hold it."""
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, not {brief(text)}")
    if problem := id_problem(k, MAX_TAG):
        raise argparse.ArgumentTypeError(f"the tag name {brief(k)} {problem}")
    if len(v) > MAX_TAG:
        raise argparse.ArgumentTypeError(
            f"the value of {brief(k)} is {len(v)} characters long, over the {MAX_TAG}-character "
            "limit"
        )
    return k, v


def _targeting() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("target (default: every agent)")
    g.add_argument(
        "--agent",
        action="append",
        default=[],
        type=_name("agent id"),
        metavar="ID",
        help="an agent id",
    )
    g.add_argument(
        "--tag", action="append", default=[], type=_tag, metavar="K=V", help="a tag to match"
    )
    g.add_argument(
        "--wait", type=seconds(), default=30.0, metavar="SECONDS", help="wait for replies (30)"
    )
    g.add_argument(
        "--expire",
        type=seconds(_MONTH_S, zero=True),
        default=0.0,
        metavar="SECONDS",
        help="agents ignore the command after this long (default: never)",
    )
    return p


def register(sub: Any) -> None:
    """Add the `fleet` command group."""
    parent, targeting = _parent(), _targeting()
    p = sub.add_parser(
        "fleet",
        help="agents and tasks over Kafka (fleets without Kubernetes)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fsub = p.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    a = fsub.add_parser("agents", parents=[parent], help="agents heard from (heartbeats)")
    a.add_argument(
        "--window",
        type=seconds(_MONTH_S),
        default=600.0,
        metavar="SECONDS",
        help="read heartbeats this far back (600)",
    )
    a.add_argument("--live", action="store_true", help="hide stale and stopped agents")
    a.set_defaults(func=agents)
    t = fsub.add_parser("task", help="manage tasks on agents")
    tsub = t.add_subparsers(dest="fleet_task_command", metavar="COMMAND", required=True)
    both = [parent, targeting]
    for name, helptext in (("create", "create a task"), ("update", "replace a task's spec")):
        c = tsub.add_parser(name, parents=both, help=helptext)
        c.add_argument("-f", "--file", required=True, metavar="TASK.yaml", help="'-': stdin")
        c.set_defaults(func=task_command, command=f"task.{name}")
    for name, helptext in (("delete", "stop and forget a task"), ("status", "a task's state")):
        c = tsub.add_parser(name, parents=both, help=helptext)
        c.add_argument("id", type=_name("task id"), metavar="ID")
        c.set_defaults(func=task_command, command=f"task.{name}")
    ls = tsub.add_parser("list", parents=both, help="every agent's tasks")
    ls.set_defaults(func=task_command, command="task.list")
    r = fsub.add_parser("reload", parents=both, help="agents re-read their config (config.reload)")
    r.set_defaults(func=task_command, command="config.reload")


def settings_from(args: argparse.Namespace) -> KafkaSettings:
    """The Kafka settings named by the arguments (see the module docstring)."""
    from otus.daemon.config import config_path, load_config  # noqa: PLC0415 - keep the CLI fast

    base = load_config(config_path(getattr(args, "config", None))).kafka
    brokers_arg = args.brokers or os.environ.get("OTUS_KAFKA_BROKERS", "")
    brokers = [b.strip() for b in brokers_arg.split(",") if b.strip()]
    for b in brokers:  # the config's brokers were checked by load_config
        try:
            check_broker(b)
        except ValueError as e:
            where = "--brokers" if args.brokers else "$OTUS_KAFKA_BROKERS"
            raise ConfigError(f"{where}: {e}") from None
    brokers = brokers or list(base.brokers)
    if not brokers:
        raise ConfigError(
            "no Kafka brokers: give --brokers, set OTUS_KAFKA_BROKERS, or kafka.brokers in the "
            "config"
        )
    update: dict[str, Any] = {"brokers": brokers}
    for name in ("command_topic", "reply_topic", "status_topic"):
        if getattr(args, name, None):
            update[name] = getattr(args, name)
    try:
        return KafkaSettings.model_validate({**base.model_dump(), **update})
    except ValidationError as e:
        raise ConfigError(f"kafka settings: {'; '.join(format_validation_error(e))}") from None


def _target(args: argparse.Namespace) -> Target:
    tags: dict[str, str] = {}
    for k, v in args.tag:
        if tags.setdefault(k, v) != v:  # both cannot match: no agent would be targeted
            raise ConfigError(f"--tag {k} is given twice, as {tags[k]!r} and {v!r}")
    if len(tags) > MAX_TARGET_TAGS:
        raise ConfigError(f"--tag: {len(tags)} tags, over the limit of {MAX_TARGET_TAGS}")
    if len(set(args.agent)) > MAX_TARGET_AGENTS:
        raise ConfigError(
            f"--agent: {len(set(args.agent))} agents, over the limit of {MAX_TARGET_AGENTS}"
        )
    return Target(frozenset(args.agent) if args.agent else None, tags or None)


def _run(args: argparse.Namespace, coro_fn: Any) -> int:
    from aiokafka.errors import KafkaError  # noqa: PLC0415 - keep `otus --help` fast

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its reconnect chatter
    try:
        settings = settings_from(args)
        return int(asyncio.run(coro_fn(settings)))
    except BrokerUnreachableError as e:
        print(f"otus: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KafkaError as e:  # the brokers went away after we connected
        print(f"otus: Kafka: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ReporterError as e:  # TLS or password files
        print(f"otus: {e}", file=sys.stderr)
        return EXIT_USAGE
    except EnvelopeError as e:  # a command the agents would refuse: not sent
        print(f"otus: {e.message}", file=sys.stderr)
        return EXIT_USAGE


# -- agents ----------------------------------------------------------------------------------


def _status(hb: dict[str, Any]) -> str:
    if hb.get("state") == "stopping":
        return "stopped"
    return "stale" if stale(hb) else "live"


def _tags(tags: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((tags or {}).items())) or "-"


def _tasks(tasks: Any) -> str:
    return ",".join(f"{t.get('id')}:{t.get('state')}" for t in tasks or []) or "-"


def agents(args: argparse.Namespace) -> int:
    """`otus fleet agents`."""

    async def go(settings: KafkaSettings) -> int:
        async with FleetClient(settings, connect_timeout_s=args.timeout) as fleet:
            beats = await fleet.heartbeats(args.window)
        rows = sorted(beats.values(), key=lambda h: str(h.get("agent_id")))
        for hb in rows:
            hb["status"] = _status(hb)
        if args.live:
            rows = [hb for hb in rows if hb["status"] == "live"]
        if args.output == "json":
            print(orjson.dumps(rows, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
            return EXIT_OK
        cells = [
            [
                hb.get("agent_id"),
                hb["status"],
                hb.get("version"),
                hb.get("hostname"),
                ago(hb.get("started_at")),
                ago(hb.get("ts")) + " ago",
                _tags(hb.get("tags")),
                _tasks(hb.get("tasks")),
            ]
            for hb in rows
        ]
        headers = ["AGENT", "STATUS", "VERSION", "HOST", "UPTIME", "LAST SEEN", "TAGS", "TASKS"]
        print(table(headers, cells) if cells else "no agents heard from")
        return EXIT_OK

    return _run(args, go)


# -- commands --------------------------------------------------------------------------------


def _headline(task: dict[str, Any]) -> str:
    s = task.get("stats") or {}
    line = (
        f"packets={s.get('capture.packets', 0)} sip={s.get('parse.messages', 0)} "
        f"reported={s.get('report.records', 0)} dropped={sum(drops(s).values())}"
    )
    return f"{line} ({' '.join(str(task['reason']).split())[:120]})" if task.get("reason") else line


def _detail(reply: dict[str, Any]) -> list[list[Any]]:
    """Rows (TASK, STATE, DETAIL) for one reply."""
    if not reply.get("ok"):
        err = reply.get("error") or {}
        lines = [f"error {err.get('code')}: {err.get('message')}"]
        if isinstance(err.get("data"), list):
            lines += [f"  - {x}" for x in err["data"][:20]]
        return [["-", "-", line] for line in lines]
    res = reply.get("result") or {}
    if reply.get("duplicate"):
        return [["-", "-", "already applied earlier (a redelivery: not applied again)"]]
    if "tasks" in res:
        rows = [[t.get("id"), t.get("state"), _headline(t)] for t in res["tasks"]]
        return rows or [["-", "-", "no tasks"]]
    if "id" in res:
        return [[res.get("id"), res.get("state"), _headline(res)]]
    applied = res.get("applied")
    if applied is not None:
        restart = res.get("restart_required") or []
        note = f"; restart needed for {', '.join(restart)}" if restart else ""
        return [["-", "-", f"reloaded {', '.join(applied)}{note}"]]
    return [["-", "-", orjson.dumps(res).decode()[:200]]]


def _expected(target: Target, beats: dict[str, dict[str, Any]]) -> set[str] | None:
    if target.agents is not None and target.tags is None:
        return set(target.agents)
    live = [hb for hb in beats.values() if _status(hb) == "live"]
    return {
        str(hb["agent_id"])
        for hb in live
        if target.matches(str(hb["agent_id"]), hb.get("tags") or {})
    }


def task_command(args: argparse.Namespace) -> int:
    """`otus fleet task create|update|delete|list|status` and `otus fleet reload`."""
    target = _target(args)
    spec = _read_task(args.file) if getattr(args, "file", None) else None
    json_out = args.output == "json"

    async def go(settings: KafkaSettings) -> int:
        async with FleetClient(settings, connect_timeout_s=args.timeout) as fleet:
            beats = await fleet.heartbeats(max(60.0, 3 * settings.heartbeat_interval_s + 60))
            expected = _expected(target, beats)
            if not expected:
                print(
                    f"otus: no live agent is known to match; waiting {args.wait:g} s for replies",
                    file=sys.stderr,
                )
            env = fleet.envelope(
                args.command,
                target.to_json(),
                task=spec,
                task_id=getattr(args, "id", None),
                expires_in_s=args.expire or None,
            )
            failed = 0
            heard: set[str] = set()
            if not json_out:
                print(f"{'AGENT':<24} {'OK':<5} {'TASK':<20} {'STATE':<9} DETAIL", flush=True)
            async for reply in fleet.request(env, expected=expected or None, wait_s=args.wait):
                heard.add(str(reply.get("agent_id")))
                failed += not reply.get("ok")
                if json_out:
                    print(orjson.dumps(reply).decode(), flush=True)
                    continue
                ok = "yes" if reply.get("ok") else "NO"
                for i, (task, state, detail) in enumerate(_detail(reply)):
                    agent = str(reply.get("agent_id")) if i == 0 else ""
                    print(f"{agent:<24} {ok if i == 0 else '':<5} {task!s:<20} {state!s:<9} "
                          f"{detail}", flush=True)  # fmt: skip
        missing = sorted((expected or set()) - heard)
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            print(f"otus: no reply within {args.wait:g} s from {shown}", file=sys.stderr)
        if not heard:
            print(f"otus: no agent replied within {args.wait:g} s", file=sys.stderr)
        return EXIT_FAILED if failed or missing or not heard else EXIT_OK

    return _run(args, go)
