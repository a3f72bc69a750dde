"""The CRD generated from the model: up to date, structural, and enforced by a real API server."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from e2e.infra.tools import ToolError
from otus.control.kubernetes.crd import CRD_FILE, build_crd, render_crd
from otus.control.kubernetes.model import (
    CaptureTaskStatus,
    Condition,
    NodeStatus,
    parse_capture_task,
)
from otus.core.kube import ApiError, KubeClient, KubeConfig, Reflector

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "manifests" / "examples" / "capturetask.yaml"
VALID: dict[str, Any] = {
    "apiVersion": "otus.firestige.xyz/v1alpha1",
    "kind": "CaptureTask",
    "metadata": {"name": "calls", "namespace": "default"},
    "spec": {
        "nodeSelector": {"matchExpressions": [{"key": "sip", "operator": "Exists"}]},
        "capture": {"interfaces": ["eth0", "bond0"], "bpfFilter": "udp port 5060"},
        "processors": [{"type": "filter", "config": {"dropMethods": ["OPTIONS"]}}, {"type": "k8s"}],
        "reporters": [{"type": "console", "config": {"format": "json"}}],
    },
}


def schema() -> dict[str, Any]:
    crd, _ = build_crd()
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_crds_dir_is_generated_from_the_model() -> None:
    text = render_crd()
    assert (ROOT / "crds" / CRD_FILE).read_text() == text, "run: make crds"
    proc = subprocess.run(
        [sys.executable, "-m", "otus.control.kubernetes.crd", "--check"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_crd_is_a_valid_kubernetes_object() -> None:
    crd, fallbacks = build_crd()
    kubernetes_validate.validate(crd, "1.35.0", strict=True)
    # Free-form strings without a bound in the model get the fallback; keep the list short.
    assert set(fallbacks) <= {"spec.processors[].config.dropMethods[]",
                              "spec.processors[].config.labels{}"}  # fmt: skip


def _walk(s: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(s, dict):
        yield path, s
        for k, v in (s.get("properties") or {}).items():
            yield from _walk(v, f"{path}.{k}")
        for key in ("items", "additionalProperties"):
            if isinstance(s.get(key), dict):
                yield from _walk(s[key], f"{path}[{key}]")


def test_schema_is_structural_and_bounded() -> None:
    root = schema()["properties"]
    walked = [*_walk(root["spec"], "spec"), *_walk(root["status"], "status")]
    for path, s in walked:
        assert not {"$ref", "anyOf", "oneOf", "allOf", "const", "title", "default"} & set(s), path
        assert "type" in s, path
        if s["type"] == "string":
            assert "maxLength" in s or "enum" in s, path
        if s["type"] == "array":
            assert "maxItems" in s, path
        if s["type"] == "object" and "additionalProperties" in s:
            assert "maxProperties" in s, path
    status = schema()["properties"]["status"]["properties"]
    node = status["nodes"]["additionalProperties"]["properties"]
    assert {"phase", "packets", "sipMessages", "drops", "lastHeartbeat", "message",
            "observedGeneration"} <= set(node)  # fmt: skip
    cond = status["conditions"]["items"]
    assert cond["required"] == ["type", "status", "lastTransitionTime", "reason"]


def _validate(obj: dict[str, Any]) -> None:
    s = copy.deepcopy(schema())
    for _, sub in _walk(s):  # OpenAPI's nullable, as JSON Schema
        if sub.pop("nullable", False):
            sub["type"] = [sub["type"], "null"]
    jsonschema.Draft4Validator(s).validate(obj)


def test_valid_task_passes_schema_and_model() -> None:
    _validate(VALID)
    parse_capture_task(VALID["spec"]).to_task_spec("default.calls")


def test_example_passes_schema_and_model() -> None:
    (doc,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    _validate(doc)
    cts = parse_capture_task(doc["spec"])
    spec = cts.to_task_spec("otus-system.sip-capture")
    assert [p.type for p in spec.processors] == ["filter", "k8s"]
    assert cts.secret_refs()[0].name == "kafka-credentials"


# -- against a real kube-apiserver ---------------------------------------------------------


@pytest.fixture(scope="module")
def apiserver() -> Iterator[Any]:
    from e2e.infra.cluster import Cluster

    try:
        cluster = Cluster()
        cluster.start()
    except ToolError as e:
        pytest.skip(f"no kube-apiserver: {e}")
    try:
        cluster.apply(ROOT / "crds" / CRD_FILE)
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/capturetasks.otus.firestige.xyz")  # fmt: skip
        yield cluster
    finally:
        cluster.stop()


def _apply(cluster: Any, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl_run("apply", "-f", "-", input=json.dumps(obj))  # type: ignore[no-any-return]


def _with(name: str, **spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(VALID)
    obj["metadata"]["name"] = name
    obj["spec"].update(spec)
    return obj


@pytest.mark.slow
def test_real_apiserver_accepts_valid_and_shows_columns(apiserver: Any) -> None:
    proc = _apply(apiserver, VALID)
    assert proc.returncode == 0, proc.stderr
    head = apiserver.kubectl("get", "ct", "-n", "default").splitlines()[0].split()
    assert head == ["NAME", "READY", "RUNNING", "TARGETED", "SIP", "DROPS", "AGE"]
    wide = apiserver.kubectl("get", "capturetasks", "-n", "default", "-o", "wide")
    assert "REASON" in wide and "PAUSED" in wide
    assert "calls" in apiserver.kubectl("get", "otus", "-n", "default")  # the category


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"capture": {"interfaces": ["any", "eth0"]}}, "'any' captures every interface"),
        ({"processors": [{"type": "filter", "config": {"labels": {"a": "b"}}}]},
         "type filter takes none of"),
        ({"processors": [{"type": "grep"}]}, "Unsupported value: \"grep\""),
        ({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
         "In and NotIn need values"),
        ({"reporters": []}, "should have at least 1 items"),
        ({"capture": {"interfaces": ["eth0"], "snapLen": 10}}, "should be greater than or equal"),
        ({"capture": {"interfaces": ["eth0"], "fanoutMode": "random"}}, "Unsupported value"),
    ],
    ids=["any-alone", "foreign-field", "unknown-type", "selector", "no-reporter", "bound", "enum"],
)  # fmt: skip
def test_real_apiserver_rejects_invalid(apiserver: Any, spec: dict[str, Any], message: str) -> None:
    proc = _apply(apiserver, _with("bad", **spec))
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


@pytest.mark.slow
def test_real_apiserver_accepts_example_and_enforces_kafka_rules(apiserver: Any) -> None:
    apiserver.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "otus-system"}})
    proc = apiserver.kubectl_run("apply", "-f", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    (doc,) = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    kafka = doc["spec"]["reporters"][0]
    both = {**kafka, "config": {**kafka["config"], "topicPrefix": "sip-"}}
    proc = _apply(apiserver, _with("both-topics", reporters=[both]))
    assert proc.returncode != 0 and "exactly one of" in proc.stderr, proc.stderr
    console = {"type": "console", "secretRef": {"name": "x", "passwordKey": "p"}}
    proc = _apply(apiserver, _with("console-secret", reporters=[console]))
    assert proc.returncode != 0 and "takes none of: secretRef" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_real_apiserver_accepts_install_manifest(apiserver: Any) -> None:
    proc = apiserver.kubectl_run("apply", "-f", str(ROOT / "manifests" / "install.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "daemonset.apps/otus-agent" in proc.stdout


@pytest.mark.slow
async def test_real_apiserver_client_watch_and_status_merge(apiserver: Any) -> None:
    """Our client on the real server: cert auth, list+watch, concurrent status merge patches."""
    config = KubeConfig.from_kubeconfig(apiserver.kubeconfig)  # client certificate data
    path = "/apis/otus.firestige.xyz/v1alpha1/namespaces/default/capturetasks"
    async with KubeClient(config) as client:
        await client.create(path, _with("merge"))
        seen: list[str] = []
        reflector: Reflector[dict[str, Any]] = Reflector(
            client, "/apis/otus.firestige.xyz/v1alpha1/capturetasks",
            transform=lambda o: o, on_change=lambda kind, key, _: seen.append(f"{kind} {key}"),
        )  # fmt: skip
        watch = asyncio.create_task(reflector.run())
        try:
            await asyncio.wait_for(reflector.synced.wait(), 10)

            async def agent(node: str) -> None:
                for i in range(15):
                    body = {"status": {"nodes": {node: {"phase": "Running", "packets": i}}}}
                    await client.merge_patch(f"{path}/merge/status", body)

            await asyncio.gather(agent("node-a"), agent("node-b"))
            obj = await client.get(f"{path}/merge")
            nodes = obj["status"]["nodes"]
            assert nodes["node-a"]["packets"] == 14 and nodes["node-b"]["packets"] == 14
            assert obj["metadata"]["generation"] == 1  # status writes leave the spec alone
            stale = {"metadata": {"resourceVersion": "1"}, "status": {"runningNodes": 1}}
            with pytest.raises(ApiError) as err:
                await client.merge_patch(f"{path}/merge/status", stale)
            assert err.value.status == 409
            for _ in range(100):
                if seen.count("MODIFIED default/merge") >= 30:
                    break
                await asyncio.sleep(0.05)
            assert "ADDED default/merge" in seen and reflector.counters["errors"] == 0
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch


def _max_length(model: type[BaseModel], name: str) -> int:
    (bound,) = [m.max_length for m in model.model_fields[name].metadata if hasattr(m, "max_length")]
    return int(bound)


@pytest.mark.slow
async def test_real_apiserver_stores_a_capturetask_at_its_largest(apiserver: Any) -> None:
    """As many nodes as the CRD allows, every entry at its largest, fit etcd's 1.5 MiB."""
    count, message = _max_length(CaptureTaskStatus, "nodes"), _max_length(NodeStatus, "message")
    names = [f"node-{i:05d}".ljust(63, "x") for i in range(count)]  # a DNS label at its longest
    big = 10**15 - 1
    entry = {"phase": "Failed", "packets": big, "sipMessages": big, "drops": big,
             "lastHeartbeat": "2030-01-01T00:00:00Z", "message": "m" * message,
             "observedGeneration": 123456, "taskId": "t" * 63}  # fmt: skip
    conditions = [
        {"type": t, "status": "False", "reason": "NodesNotRunning", "observedGeneration": 123456,
         "lastTransitionTime": "2030-01-01T00:00:00Z", "message": "c" * _max_length(Condition,
         "message")} for t in ("Ready", "Degraded")
    ]  # fmt: skip
    config = KubeConfig.from_kubeconfig(apiserver.kubeconfig)
    path = "/apis/otus.firestige.xyz/v1alpha1/namespaces/default/capturetasks"
    async with KubeClient(config) as client:
        await client.create(path, _with("largest"))
        operator = {"assignedNodes": names, "targetedNodes": count, "conditions": conditions,
                    "totals": {"packets": big, "sipMessages": big, "drops": big}}  # fmt: skip
        await client.merge_patch(f"{path}/largest/status", {"status": operator})
        for i in range(0, count, 250):  # the agents' reports, merged as they write them
            nodes = dict.fromkeys(names[i : i + 250], entry)
            await client.merge_patch(f"{path}/largest/status", {"status": {"nodes": nodes}})
        obj = await client.get(f"{path}/largest")
    assert len(obj["status"]["nodes"]) == count
    # Stored with its managedFields: the server did not have to drop them to make it fit.
    assert obj["metadata"].get("managedFields")
