"""The Helm chart with the real helm: lint, render, Kubernetes schemas, and what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from e2e.infra.tools import ToolError, ensure_helm
from otus.control.kubernetes.crd import CRD_FILE

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "otus"
KUBE_VERSION = "v1.35.8"
SCHEMA_VERSION = "1.35.0"
MONITORING = ("ServiceMonitor", "PodMonitor")


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return ensure_helm()
    except ToolError as e:
        pytest.skip(f"helm not available: {e}")


def template(helm: Path, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(helm), "template", "otus", str(CHART), "--namespace", "otus-system",
         "--kube-version", KUBE_VERSION, *args],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint(helm: Path) -> None:
    for extra in ([], ["--set", "metrics.serviceMonitor.enabled=true,agent.privileged=true"]):
        proc = subprocess.run(
            [str(helm), "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *extra],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("monitoring", [False, True], ids=["no-monitoring", "monitoring"])
def test_rendered_objects_validate(helm: Path, monitoring: bool) -> None:
    args = ["--set", "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true"]
    if monitoring:
        args += ["--api-versions", "monitoring.coreos.com/v1"]
    docs = template(helm, "--include-crds", *args)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "DaemonSet", "ConfigMap", "Service",
            "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
            "RoleBinding"} <= kinds  # fmt: skip
    assert (set(MONITORING) <= kinds) is monitoring
    assert not (set(MONITORING) & kinds) or monitoring
    for doc in docs:
        if doc["kind"] in MONITORING:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "otus-agent"
            continue
        kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)


def test_monitoring_needs_the_api_even_when_enabled(helm: Path) -> None:
    docs = template(helm, "--set", "metrics.serviceMonitor.enabled=true")
    assert not by_kind(docs, "ServiceMonitor")
    docs = template(helm, "--api-versions", "monitoring.coreos.com/v1")
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PodMonitor")


def test_agent_daemonset(helm: Path) -> None:
    (ds,) = by_kind(template(helm), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["nodeSelector"]["kubernetes.io/os"] == "linux"
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert "priorityClassName" not in pod
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"add": ["NET_RAW", "NET_ADMIN"], "drop": ["ALL"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["args"][:2] == ["daemon", "--kubernetes"]
    assert c["resources"]["requests"] and c["image"] == "ghcr.io/firestige/otus:0.1.0"
    (ds,) = by_kind(
        template(helm, "--set", "agent.privileged=true,agent.priorityClassName=node-critical",
                 "--set", "image.digest=sha256:" + "a" * 64),
        "DaemonSet",
    )  # fmt: skip
    pod = ds["spec"]["template"]["spec"]
    assert pod["containers"][0]["securityContext"]["privileged"] is True
    assert pod["priorityClassName"] == "node-critical"
    assert pod["containers"][0]["image"] == "ghcr.io/firestige/otus@sha256:" + "a" * 64


def test_operator_deployment(helm: Path) -> None:
    (dep,) = by_kind(template(helm), "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["port"] == "health"
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_operator_log_levels_are_those_its_cli_has(helm: Path) -> None:
    """info (the default) or debug (--verbose); the operator has no warning/error level."""
    (dep,) = by_kind(template(helm, "--set", "operator.logLevel=debug"), "Deployment")
    assert "--verbose" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    (dep,) = by_kind(template(helm), "Deployment")
    assert "--verbose" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    for level in ("warning", "error"):
        proc = subprocess.run(
            [str(helm), "template", "x", str(CHART), "--set", f"operator.logLevel={level}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode != 0 and "logLevel" in proc.stderr, proc.stderr


def rules(docs: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    (obj,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    return list(obj["rules"])


def test_rbac_is_least_privilege(helm: Path) -> None:
    docs = template(helm)
    agent = rules(docs, "ClusterRole", "otus-agent")
    granted = {(g, r, v) for rule in agent for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    assert ("otus.firestige.xyz", "capturetasks/status", "patch") in granted
    assert ("otus.firestige.xyz", "capturetasks", "update") not in granted
    assert not [g for g in granted if g[1] == "secrets"]  # never cluster-wide
    (secrets,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "otus-agent-secrets"]
    assert secrets["metadata"]["namespace"] == "otus-system"
    assert secrets["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    operator = rules(docs, "ClusterRole", "otus-operator")
    assert not [r for r in operator if "pods" in r["resources"] or "secrets" in r["resources"]]
    op_ns = rules(docs, "Role", "otus-operator")
    assert op_ns == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    docs = template(helm, "--set", "agent.secretNamespaces={voice,sip},agent.secretNames={kafka}")
    roles = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == "otus-agent-secrets"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["sip", "voice"]
    assert roles[0]["rules"][0]["resourceNames"] == ["kafka"]


def test_values_schema_rejects_unknown_keys(helm: Path) -> None:
    proc = subprocess.run(
        [str(helm), "template", "x", str(CHART), "--set", "agent.privilegd=true"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "privilegd" in proc.stderr


def test_chart_crd_is_the_generated_crd() -> None:
    assert (CHART / "crds" / CRD_FILE).read_bytes() == (ROOT / "crds" / CRD_FILE).read_bytes()


def test_install_manifest_is_the_rendered_chart(helm: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "charts" / "manifests.py"), "--helm", str(helm), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if d]
    assert docs[0]["kind"] == "Namespace" and docs[1]["kind"] == "CustomResourceDefinition"
    for doc in docs:
        kubernetes_validate.validate(doc, SCHEMA_VERSION, strict=True)


def test_agent_config_is_a_valid_daemon_config(helm: Path, tmp_path: Path) -> None:
    from otus.daemon.config import load_config

    extra = ["--set", "agent.config.limits.max_tasks=4,agent.metricsPort=9999"]
    for args in ([], extra):
        (cm,) = by_kind(template(helm, *args), "ConfigMap")
        path = tmp_path / "config.yaml"
        path.write_text(cm["data"]["config.yaml"])
        config = load_config(path, env={})
        assert config.kubernetes.enabled and config.metrics.enabled
        assert config.daemon.state_file.startswith("/run/otus/")  # tmpfs: no stale restore
    assert config.limits.max_tasks == 4 and config.metrics.listen == ":9999"
