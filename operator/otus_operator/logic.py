"""What the operator decides, as pure functions: assignment, node health, conditions, totals.

Kept apart from the kopf handlers so the rules are readable and tested without a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from otus.control.kubernetes.model import LabelSelector, node_message

__all__ = [
    "CLOCK_SKEW_S",
    "Plan",
    "Silence",
    "assign",
    "cap",
    "heartbeat_age",
    "hold",
    "merge_conditions",
    "plan_status",
    "rfc3339",
    "waiting_nodes",
]

_FINAL = frozenset({"Stopped", "Unknown"})
CLOCK_SKEW_S = 60.0  # how far ahead of ours a node's clock may be before its stamps mean nothing
_LISTED = 20  # nodes a condition message names; the others are counted


def rfc3339(ts: float) -> str:
    """A Unix time as a ``metav1.Time``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def heartbeat_age(entry: Mapping[str, Any], now: float, seen_at: float | None = None) -> float:
    """Seconds since a node entry's ``lastHeartbeat`` (infinite when missing or unreadable).

    A stamp more than :data:`CLOCK_SKEW_S` in the future would keep a dead node fresh for ever:
    then the age is the time since ``seen_at`` (when the entry last changed), or infinite.
    """
    raw = entry.get("lastHeartbeat")
    if not isinstance(raw, str):
        return float("inf")
    try:
        ts = datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")
    if ts - now > CLOCK_SKEW_S:
        return float("inf") if seen_at is None else max(0.0, now - seen_at)
    return max(0.0, now - ts)


class Silence:
    """When the operator last saw each node entry of each CaptureTask change.

    The agent rewrites its entry with every heartbeat, so an entry that stays the same tells
    how long its node has been silent by the operator's own clock, whatever the node's says.
    An assigned node without an entry is timed from when this operator first saw it assigned.
    """

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, tuple[str, float]]] = {}

    def observe(
        self, key: str, nodes: Mapping[str, Any], now: float, assigned: Iterable[str] = ()
    ) -> dict[str, float]:
        """Record ``status.nodes`` and the assignment; node -> when its entry last changed."""
        old = self._seen.get(key, {})
        new: dict[str, tuple[str, float]] = {}
        marks = {name: json.dumps(e, sort_keys=True, default=str) for name, e in nodes.items()}
        for name in assigned:
            marks.setdefault(name, "")  # no entry yet: no JSON dump is empty
        for name, mark in marks.items():
            prev = old.get(name)
            new[name] = prev if prev is not None and prev[0] == mark else (mark, now)
        self._seen[key] = new
        return {name: since for name, (_, since) in new.items()}

    def forget(self, key: str) -> None:
        """Drop what was recorded for a CaptureTask."""
        self._seen.pop(key, None)


def assign(
    selector: LabelSelector,
    nodes: Mapping[str, Mapping[str, str]],
    agents: Mapping[str, bool],
    current: list[str],
) -> list[str]:
    """Nodes that match the selector and run an agent pod.

    A node joins only when its agent pod is ready; a node already assigned stays while its agent
    pod exists, ready or not, so an agent restart shows as ``Unknown`` instead of silently
    shrinking the task.
    """
    keep = set(current)
    out = [
        n
        for n, labels in nodes.items()
        if selector.matches(labels) and (agents.get(n) or (n in keep and n in agents))
    ]
    return sorted(out)


def cap(eligible: list[str], current: list[str], limit: int) -> list[str]:
    """At most ``limit`` of the eligible nodes: those assigned already, then the rest by name.

    Nodes already capturing keep their place, so a new node never displaces one.
    """
    if len(eligible) <= limit:
        return eligible
    keep = set(current)
    return sorted(sorted(eligible, key=lambda n: (n not in keep, n))[:limit])


def hold(
    current: list[str],
    nodes: Mapping[str, Mapping[str, str]],
    agents: Mapping[str, bool] | None,
) -> list[str]:
    """The current assignment, less nodes gone from the cluster (or whose agent pod is gone).

    Used when the selector cannot be applied: an invalid spec edit (what runs keeps running on
    the last valid spec), or agents not yet listed (``None``: right after the operator starts,
    when judging by an empty list would unassign every node).
    """
    return sorted(n for n in current if n in nodes and (agents is None or n in agents))


def merge_conditions(
    old: list[Mapping[str, Any]], new: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """``new`` conditions, keeping ``lastTransitionTime`` where the status did not change."""
    by_type = {c.get("type"): c for c in old}
    out = []
    for c in new:
        prev = by_type.get(c["type"])
        same = prev is not None and prev.get("status") == c["status"]
        stamp = prev.get("lastTransitionTime") if same and prev else None
        out.append({**c, "lastTransitionTime": stamp or now})
    return out


@dataclass
class Plan:
    """The status the operator wants, the node entries to touch, and an event to post."""

    status: dict[str, Any] = field(default_factory=dict)
    node_patch: dict[str, Any] = field(default_factory=dict)  # node -> entry patch or None
    event: tuple[str, str, str] | None = None  # type, reason, message


def _condition(ctype: str, ok: bool, reason: str, message: str, gen: int | None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "type": ctype,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:32768],
    }
    if gen is not None:
        c["observedGeneration"] = gen
    return c


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown} and {len(names) - _LISTED} more"


def _health(
    name: str, entry: Any, now: float, timeout: float, seen: Mapping[str, float]
) -> tuple[str, str]:
    """A node's phase, and why it is Unknown if the operator marks it so now (else "")."""
    if entry is None:
        # Never reported: its agent may watch another namespace, or died before its first word.
        since = seen.get(name)
        age = 0.0 if since is None else max(0.0, now - since)
        why = f"assigned, but no report from the agent for {int(age)}s"
        phase = "Pending"
    else:
        age = heartbeat_age(entry, now, seen.get(name))
        why = f"no report from the agent for {int(age)}s" if age != float("inf") else ""
        phase = str(entry.get("phase", "Pending"))
    if phase == "Unknown" or age <= timeout:
        return phase, ""
    return "Unknown", node_message(why or "no heartbeat")


def plan_status(
    *,
    spec_errors: list[str] | None,
    paused: bool,
    assigned: list[str],
    status: Mapping[str, Any],
    generation: int | None,
    now: float,
    heartbeat_timeout: float,
    seen: Mapping[str, float] | None = None,
    matching: int | None = None,
) -> Plan:
    """Conditions, counts, totals and node marks for one CaptureTask.

    ``seen``: node -> when the operator last saw its entry change, or first saw it assigned
    without one (:class:`Silence`). With ``spec_errors``, ``assigned`` is the assignment held
    from before the edit (:func:`hold`). ``matching``: how many nodes qualified, when
    :func:`cap` left some out. A node counts as running once its agent reports ``Running``
    for ``generation``; an assigned node silent (or never heard of) for ``heartbeat_timeout``
    is marked ``Unknown``, whatever its last phase.
    """
    seen = seen or {}
    plan = Plan()
    nodes: dict[str, Any] = dict(status.get("nodes") or {})
    phases: dict[str, str] = {}
    behind: dict[str, int] = {}  # node -> the older generation it still reports
    for name in assigned:
        entry = nodes.get(name)
        phase, why = _health(name, entry, now, heartbeat_timeout, seen)
        if why:
            plan.node_patch[name] = {"phase": "Unknown", "message": why}
        phases[name] = phase
        observed = entry.get("observedGeneration") if entry is not None else None
        if phase == "Running" and isinstance(observed, int) and observed < (generation or 0):
            behind[name] = observed
    for name, entry in nodes.items():
        if name in assigned or not isinstance(entry, Mapping):
            continue
        # Unassigned: drop the entry once its agent stopped, or went silent.
        silent = heartbeat_age(entry, now, seen.get(name)) > heartbeat_timeout
        if entry.get("phase") in _FINAL or silent:
            plan.node_patch[name] = None
    running = sorted(n for n, p in phases.items() if p == "Running" and n not in behind)
    failed = sorted(n for n, p in phases.items() if p == "Failed")
    unknown = sorted(n for n, p in phases.items() if p == "Unknown")
    kept = {n: e for n, e in nodes.items() if plan.node_patch.get(n, e) is not None}
    totals = {
        key: sum(int(e.get(key) or 0) for e in kept.values() if isinstance(e, Mapping))
        for key in ("packets", "sipMessages", "drops")
    }
    gen = generation
    capped = ""
    if matching is not None and matching > len(assigned):
        capped = (
            f"{matching} nodes match; {len(assigned)} are assigned, the most one CaptureTask "
            "takes: split the nodeSelector over several CaptureTasks"
        )
        plan.event = ("Warning", "TooManyNodes", capped)
    if spec_errors is not None:
        message = "; ".join(spec_errors)
        if assigned:
            message += "; the edit is not applied: the assigned nodes keep the last valid spec"
        ready = _condition("Ready", False, "InvalidSpec", message, gen)
        plan.event = ("Warning", "InvalidSpec", message[:1024])
    elif paused:
        ready = _condition("Ready", False, "Paused", "capture is paused on every node", gen)
    elif not assigned:
        ready = _condition(
            "Ready", False, "NoNodes", "no node matches nodeSelector and runs a ready agent", gen
        )
    elif len(running) == len(assigned):
        ready = _condition("Ready", True, "Running", f"{len(running)}/{len(assigned)} nodes", gen)
    else:
        others = _listing(
            [
                f"{n}: Running generation {behind[n]}" if n in behind else f"{n}: {p}"
                for n, p in sorted(phases.items())
                if p != "Running" or n in behind
            ]
        )
        updating = len(running) + len(behind) == len(assigned)
        ready = _condition(
            "Ready",
            False,
            "NodesUpdating" if updating else "NodesNotRunning",
            f"{len(running)}/{len(assigned)} nodes running generation {gen}; {others}"
            if behind
            else f"{len(running)}/{len(assigned)} nodes running; {others}",
            gen,
        )
    if failed or unknown or capped:
        parts = [f"failed: {_listing(failed)}"] if failed else []
        parts += [f"not reporting: {_listing(unknown)}"] if unknown else []
        parts += [capped] if capped else []
        reason = "NodesFailed" if failed else "NodesUnknown" if unknown else "TooManyNodes"
        degraded = _condition("Degraded", True, reason, "; ".join(parts), gen)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "", gen)
    plan.status = {
        "observedGeneration": gen,
        "conditions": [ready, degraded],
        "targetedNodes": len(assigned),
        "runningNodes": 0 if paused else len(running),
        "assignedNodes": assigned,
        "totals": totals,
    }
    return plan


def waiting_nodes(
    status: Mapping[str, Any],
    agents: Mapping[str, bool] | None,
    now: float,
    heartbeat_timeout: float,
    seen: Mapping[str, float] | None = None,
) -> list[str]:
    """Nodes whose agent may still be running the task (so deletion must wait for them).

    ``agents`` None: the agent pods are not listed yet, so any node may have one.
    """
    seen = seen or {}
    out = []
    for name, entry in (status.get("nodes") or {}).items():
        if not isinstance(entry, Mapping) or entry.get("phase") in _FINAL:
            continue
        gone = agents is not None and name not in agents
        if gone or heartbeat_age(entry, now, seen.get(name)) > heartbeat_timeout:
            continue  # no agent left to flush anything
        out.append(name)
    # Assigned but never reported: its agent may be starting the task right now.
    reported = status.get("nodes") or {}
    out += [
        n
        for n in status.get("assignedNodes") or []
        if n not in reported and (agents is None or agents.get(n))
    ]
    return sorted(set(out))
