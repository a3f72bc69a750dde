"""The operator's rules without a cluster: assignment, node health, conditions, drain."""

from __future__ import annotations

from otus_operator.logic import (
    Silence,
    assign,
    cap,
    hold,
    merge_conditions,
    plan_status,
    rfc3339,
    waiting_nodes,
)

from otus.control.kubernetes.model import MAX_NODES, LabelSelector

NOW = 1_800_000_000.0
NODES = {"a": {"sip": "1"}, "b": {"sip": "1"}, "c": {}}


def entry(phase: str, age: float = 1.0, **kw: int) -> dict[str, object]:
    return {"phase": phase, "lastHeartbeat": rfc3339(NOW - age), **kw}


def test_assign_needs_a_ready_agent_to_join_and_any_agent_to_stay() -> None:
    sel = LabelSelector.model_validate({"matchLabels": {"sip": "1"}})
    assert assign(sel, NODES, {"a": True, "b": False, "c": True}, []) == ["a"]
    assert assign(sel, NODES, {"a": True, "b": False}, ["a", "b"]) == ["a", "b"]
    assert assign(sel, NODES, {"a": True}, ["a", "b"]) == ["a"]  # b's agent pod is gone
    assert assign(LabelSelector(), NODES, {"a": True, "c": True}, []) == ["a", "c"]


def test_all_running_is_ready_with_totals() -> None:
    status = {"nodes": {"a": entry("Running", packets=5, sipMessages=2, drops=1),
                        "b": entry("Running", packets=1)}}  # fmt: skip
    plan = plan_status(spec_errors=None, paused=False, assigned=["a", "b"], status=status,
                       generation=3, now=NOW, heartbeat_timeout=30)  # fmt: skip
    ready, degraded = plan.status["conditions"]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("True", "Running", 3)
    assert degraded["status"] == "False"
    assert plan.status["totals"] == {"packets": 6, "sipMessages": 2, "drops": 1}
    assert plan.status["runningNodes"] == 2 and plan.node_patch == {} and plan.event is None


def test_silent_node_is_marked_unknown() -> None:
    status = {"nodes": {"a": entry("Running"), "b": entry("Running", age=120)}}
    plan = plan_status(spec_errors=None, paused=False, assigned=["a", "b"], status=status,
                       generation=1, now=NOW, heartbeat_timeout=30)  # fmt: skip
    assert plan.node_patch["b"]["phase"] == "Unknown"
    assert "120s" in plan.node_patch["b"]["message"]
    ready, degraded = plan.status["conditions"]
    assert ready["status"] == "False" and "b: Unknown" in ready["message"]
    assert (degraded["status"], degraded["reason"]) == ("True", "NodesUnknown")


def test_unassigned_entries_are_pruned_once_stopped_or_silent() -> None:
    status = {"nodes": {"a": entry("Running"), "old": entry("Stopped"),
                        "gone": entry("Running", age=99), "busy": entry("Stopping")}}  # fmt: skip
    plan = plan_status(spec_errors=None, paused=False, assigned=["a"], status=status,
                       generation=1, now=NOW, heartbeat_timeout=30)  # fmt: skip
    assert plan.node_patch == {"old": None, "gone": None}


def test_invalid_and_paused() -> None:
    plan = plan_status(spec_errors=["capture: bad"], paused=False, assigned=[], status={},
                       generation=2, now=NOW, heartbeat_timeout=30)  # fmt: skip
    assert plan.status["conditions"][0]["reason"] == "InvalidSpec"
    assert plan.event == ("Warning", "InvalidSpec", "capture: bad")
    assert plan.status["assignedNodes"] == [] and plan.status["targetedNodes"] == 0
    plan = plan_status(spec_errors=None, paused=True, assigned=["a"],
                       status={"nodes": {"a": entry("Paused")}}, generation=2, now=NOW,
                       heartbeat_timeout=30)  # fmt: skip
    assert plan.status["conditions"][0]["reason"] == "Paused"
    assert plan.status["runningNodes"] == 0
    plan = plan_status(spec_errors=None, paused=False, assigned=[], status={},
                       generation=2, now=NOW, heartbeat_timeout=30)  # fmt: skip
    assert plan.status["conditions"][0]["reason"] == "NoNodes"


def test_held_assignment_loses_only_departed_nodes() -> None:
    assert hold(["a", "b", "deleted"], NODES, None) == ["a", "b"]  # agent pods not listed yet
    assert hold(["a", "b"], NODES, {"a": False}) == ["a"]  # b's agent pod is gone


def test_invalid_edit_keeps_the_held_nodes_and_says_so() -> None:
    status = {"nodes": {"a": entry("Running", observedGeneration=2)}}
    plan = plan_status(spec_errors=["processors.0: bad"], paused=False, assigned=["a"],
                       status=status, generation=2, now=NOW, heartbeat_timeout=30)  # fmt: skip
    ready = plan.status["conditions"][0]
    assert (ready["reason"], ready["observedGeneration"]) == ("InvalidSpec", 2)
    assert ready["message"].startswith("processors.0: bad; the edit is not applied")
    assert plan.status["assignedNodes"] == ["a"] and plan.status["runningNodes"] == 1


def test_nodes_still_on_an_older_generation_are_not_ready() -> None:
    status = {"nodes": {"a": entry("Running", observedGeneration=3),
                        "b": entry("Running", observedGeneration=2)}}  # fmt: skip
    plan = plan_status(spec_errors=None, paused=False, assigned=["a", "b"], status=status,
                       generation=3, now=NOW, heartbeat_timeout=30)  # fmt: skip
    ready = plan.status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "NodesUpdating")
    assert ready["message"] == "1/2 nodes running generation 3; b: Running generation 2"
    assert plan.status["runningNodes"] == 1
    status["nodes"]["a"] = entry("Failed", observedGeneration=3)
    plan = plan_status(spec_errors=None, paused=False, assigned=["a", "b"], status=status,
                       generation=3, now=NOW, heartbeat_timeout=30)  # fmt: skip
    assert plan.status["conditions"][0]["reason"] == "NodesNotRunning"


def test_transition_time_moves_only_on_status_change() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "T0"}]
    same = merge_conditions(old, [{"type": "Ready", "status": "True"}], "T1")
    flip = merge_conditions(old, [{"type": "Ready", "status": "False"}], "T1")
    assert same[0]["lastTransitionTime"] == "T0" and flip[0]["lastTransitionTime"] == "T1"


def test_drain_waits_only_for_live_agents() -> None:
    status = {
        "assignedNodes": ["a", "b", "new"],
        "nodes": {"a": entry("Running"), "b": entry("Stopped"), "dead": entry("Running", 99),
                  "nopod": entry("Running")},
    }  # fmt: skip
    agents = {"a": True, "b": True, "dead": True, "new": True}
    assert waiting_nodes(status, agents, NOW, 30) == ["a", "new"]
    # Agent pods not listed yet (the operator just started): any node may have one.
    assert waiting_nodes(status, None, NOW, 30) == ["a", "new", "nopod"]


FUTURE = "2099-01-01T00:00:00Z"


def test_heartbeat_from_the_future_is_timed_by_the_operator() -> None:
    status = {"nodes": {"a": {"phase": "Running", "lastHeartbeat": FUTURE},
                        "b": {"phase": "Running", "lastHeartbeat": FUTURE},
                        "skew": entry("Running", age=-30)}}  # fmt: skip
    seen = {"a": NOW - 1, "b": NOW - 120, "skew": NOW - 120}
    plan = plan_status(spec_errors=None, paused=False, assigned=["a", "b", "skew"],
                       status=status, generation=1, now=NOW, heartbeat_timeout=30,
                       seen=seen)  # fmt: skip
    assert set(plan.node_patch) == {"b"} and "120s" in plan.node_patch["b"]["message"]
    # Without a record of when it changed, such an entry proves nothing: stale.
    plan = plan_status(spec_errors=None, paused=False, assigned=["a"], status=status,
                       generation=1, now=NOW, heartbeat_timeout=30)  # fmt: skip
    assert plan.node_patch["a"]["phase"] == "Unknown"
    agents = {"a": True, "b": True, "skew": True}
    assert waiting_nodes(status, agents, NOW, 30, seen) == ["a", "skew"]


def test_silence_times_entries_from_their_last_change() -> None:
    silence = Silence()
    nodes = {"a": {"phase": "Running", "lastHeartbeat": FUTURE}}
    assert silence.observe("ns/t", nodes, NOW) == {"a": NOW}
    assert silence.observe("ns/t", nodes, NOW + 50) == {"a": NOW}  # unchanged: silent since NOW
    nodes = {"a": {"phase": "Running", "lastHeartbeat": FUTURE, "packets": 9}}
    assert silence.observe("ns/t", nodes, NOW + 60) == {"a": NOW + 60}
    assert silence.observe("ns/t", {}, NOW + 70) == {}
    silence.forget("ns/t")
    assert silence.observe("ns/t", nodes, NOW + 80) == {"a": NOW + 80}


def test_more_matching_nodes_than_a_task_holds_are_capped_and_said_so() -> None:
    many = {f"n{i:04d}": {"sip": "1"} for i in range(MAX_NODES + 5)}
    agents = dict.fromkeys(many, True)
    sel = LabelSelector.model_validate({"matchLabels": {"sip": "1"}})
    eligible = assign(sel, many, agents, [])
    assigned = cap(eligible, [], MAX_NODES)
    assert assigned == sorted(many)[:MAX_NODES]  # the first ones by name
    # Nodes already capturing keep their place: a new one never displaces them.
    current = sorted(many)[5:]
    assert cap(eligible, current, MAX_NODES) == current
    status = {"nodes": {n: entry("Running") for n in assigned}}
    plan = plan_status(spec_errors=None, paused=False, assigned=assigned, status=status,
                       generation=1, now=NOW, heartbeat_timeout=30,
                       matching=len(eligible))  # fmt: skip
    ready, degraded = plan.status["conditions"]
    assert ready["status"] == "True" and plan.status["targetedNodes"] == MAX_NODES
    message = f"{MAX_NODES + 5} nodes match; {MAX_NODES} are assigned"
    assert (degraded["status"], degraded["reason"]) == ("True", "TooManyNodes")
    assert degraded["message"].startswith(message)
    assert plan.event is not None and plan.event[:2] == ("Warning", "TooManyNodes")
    assert plan.event[2].startswith(message)


def test_condition_messages_name_a_bounded_number_of_nodes() -> None:
    names = [f"n{i:03d}" for i in range(100)]
    status = {"nodes": {n: entry("Failed") for n in names}}
    plan = plan_status(spec_errors=None, paused=False, assigned=names, status=status,
                       generation=1, now=NOW, heartbeat_timeout=30)  # fmt: skip
    ready, degraded = plan.status["conditions"]
    assert ready["message"].endswith("n019: Failed and 80 more")
    assert degraded["message"].endswith("n019 and 80 more")


def test_an_assigned_node_that_never_reports_turns_unknown_after_the_timeout() -> None:
    silence = Silence()
    status = {"nodes": {"a": entry("Running")}}
    seen = silence.observe("ns/t", status["nodes"], NOW - 60, ["a", "b"])
    assert seen["b"] == NOW - 60  # b: assigned, no entry yet
    plan = plan_status(spec_errors=None, paused=False, assigned=["a", "b"], status=status,
                       generation=1, now=NOW - 59, heartbeat_timeout=30, seen=seen)  # fmt: skip
    assert plan.node_patch == {}  # just assigned: its agent is starting the task
    assert "b: Pending" in plan.status["conditions"][0]["message"]
    assert plan.status["conditions"][1]["reason"] == "AsExpected"
    seen = silence.observe("ns/t", status["nodes"], NOW, ["a", "b"])
    plan = plan_status(spec_errors=None, paused=False, assigned=["a", "b"], status=status,
                       generation=1, now=NOW, heartbeat_timeout=30, seen=seen)  # fmt: skip
    assert plan.node_patch == {
        "b": {"phase": "Unknown", "message": "assigned, but no report from the agent for 60s"}
    }
    ready, degraded = plan.status["conditions"]
    assert "b: Unknown" in ready["message"]
    assert (degraded["status"], degraded["reason"]) == ("True", "NodesUnknown")
    assert degraded["message"] == "not reporting: b"


def test_a_restarted_operator_times_a_silent_assignment_from_its_start() -> None:
    silence = Silence()  # a new operator: it cannot know when b was assigned
    status = {"assignedNodes": ["b"]}
    seen = silence.observe("ns/t", {}, NOW, ["b"])
    plan = plan_status(spec_errors=None, paused=False, assigned=["b"], status=status,
                       generation=1, now=NOW, heartbeat_timeout=30, seen=seen)  # fmt: skip
    assert plan.node_patch == {}
    seen = silence.observe("ns/t", {}, NOW + 31, ["b"])
    plan = plan_status(spec_errors=None, paused=False, assigned=["b"], status=status,
                       generation=1, now=NOW + 31, heartbeat_timeout=30, seen=seen)  # fmt: skip
    assert plan.node_patch["b"]["phase"] == "Unknown"


def test_an_assigned_node_left_stopped_by_its_agent_turns_unknown() -> None:
    # The agent said goodbye ("agent shutting down"); its pod remains but never comes back.
    status = {"nodes": {"a": entry("Stopped", age=45)}}
    plan = plan_status(spec_errors=None, paused=False, assigned=["a"], status=status,
                       generation=1, now=NOW, heartbeat_timeout=30)  # fmt: skip
    assert plan.node_patch["a"] == {"phase": "Unknown",
                                    "message": "no report from the agent for 45s"}  # fmt: skip
    assert plan.status["conditions"][1]["reason"] == "NodesUnknown"
