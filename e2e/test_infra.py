"""Smoke test of the e2e control plane: CRDs, server-side dry run, RBAC, Nodes, helm."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path

import pytest

from e2e.infra.cluster import Cluster, ClusterError
from e2e.infra.tools import ensure_helm

_ns_ids = itertools.count()

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.otus.firestige.xyz}
spec:
  group: smoke.otus.firestige.xyz
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              colour: {type: string, enum: [red, blue], maxLength: 8}
            x-kubernetes-validations:
            - rule: "self.colour != 'red' || self.size < 5"
              message: red widgets are small
"""


def widget(ns: str, name: str, size: int, colour: str = "blue") -> str:
    return f"""
apiVersion: smoke.otus.firestige.xyz/v1
kind: Widget
metadata: {{name: {name}, namespace: {ns}}}
spec: {{size: {size}, colour: {colour}}}
"""


@pytest.fixture
def ns(cluster: Cluster) -> str:
    # Namespaces cannot finish deleting without a controller-manager: one fresh name per test.
    name = f"smoke-{next(_ns_ids)}"
    cluster.kubectl("create", "namespace", name)
    return name


def test_server_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == version["clientVersion"]["gitVersion"]
    assert version["serverVersion"]["gitVersion"].startswith("v1.")


def test_crd_and_custom_object(cluster: Cluster, ns: str) -> None:
    cluster.apply(CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/widgets.smoke.otus.firestige.xyz",
    )  # fmt: skip
    cluster.apply(widget(ns, "w1", 3))
    got = json.loads(cluster.kubectl("get", "wdg", "w1", "-n", ns, "-o", "json"))
    assert got["spec"] == {"size": 3, "colour": "blue"}
    # The structural schema and the CEL rule are enforced by the real apiserver.
    with pytest.raises(ClusterError, match="size"):
        cluster.apply(widget(ns, "w2", 11))
    with pytest.raises(ClusterError, match="red widgets are small"):
        cluster.apply(widget(ns, "w3", 7, "red"))
    names = cluster.kubectl("get", "widgets", "-n", ns, "-o", "name")
    assert names.split() == ["widget.smoke.otus.firestige.xyz/w1"]


def test_server_side_dry_run(cluster: Cluster, ns: str) -> None:
    deployment = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: "example.invalid/web:1"}}]
"""
    out = cluster.apply(deployment, extra=("--dry-run=server",))
    assert "(server dry run)" in out
    missing = cluster.kubectl_run("get", "deployment", "web", "-n", ns)
    assert missing.returncode != 0 and "NotFound" in missing.stderr
    mismatched = deployment.replace("matchLabels: {app: web}", "matchLabels: {app: other}")
    with pytest.raises(ClusterError, match="does not match template"):
        cluster.apply(mismatched, extra=("--dry-run=server",))


def test_rbac_for_service_account(cluster: Cluster, ns: str) -> None:
    kubeconfig = cluster.create_service_account_kubeconfig(ns, "reader")
    denied = cluster.kubectl_run("get", "configmaps", "-n", ns, kubeconfig=kubeconfig)
    assert denied.returncode != 0
    assert f"system:serviceaccount:{ns}:reader" in denied.stderr and "forbidden" in denied.stderr
    cluster.apply(
        f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: read-configmaps, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [configmaps], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-configmaps}}
subjects: [{{kind: ServiceAccount, name: reader, namespace: {ns}}}]
"""
    )
    deadline = time.monotonic() + 15  # the authorizer's informer sees the binding shortly after
    while True:
        allowed = cluster.kubectl_run("get", "configmaps", "-n", ns, kubeconfig=kubeconfig)
        if allowed.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert allowed.returncode == 0, allowed.stderr
    # The grant is exactly the Role: writing and other namespaces stay forbidden.
    write = cluster.kubectl_run("create", "configmap", "x", "-n", ns, kubeconfig=kubeconfig)
    assert write.returncode != 0 and "forbidden" in write.stderr
    other = cluster.kubectl_run("get", "configmaps", "-n", "default", kubeconfig=kubeconfig)
    assert other.returncode != 0 and "forbidden" in other.stderr


def test_nodes_are_plain_objects(cluster: Cluster) -> None:
    cluster.create_node("smoke-node-a", {"otus.firestige.xyz/zone": "a"})
    cluster.create_node("smoke-node-b", {"otus.firestige.xyz/zone": "b"})
    names = cluster.kubectl("get", "nodes", "-l", "otus.firestige.xyz/zone=a", "-o", "name")
    assert names.split() == ["node/smoke-node-a"]
    cluster.create_node("smoke-node-b", {"otus.firestige.xyz/zone": "a"})  # relabel
    names = cluster.kubectl("get", "nodes", "-l", "otus.firestige.xyz/zone=a", "-o", "name")
    assert sorted(names.split()) == ["node/smoke-node-a", "node/smoke-node-b"]


def test_helm_template_applies(cluster: Cluster, ns: str, tmp_path: Path) -> None:
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    helm = str(ensure_helm())
    lint = subprocess.run([helm, "lint", str(chart)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = subprocess.run(
        [helm, "template", "rel", str(chart), "--namespace", ns, "--set", "greeting=hi"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=rendered)
    greeting = cluster.kubectl("get", "cm", "rel-cm", "-n", ns, "-o", "jsonpath={.data.greeting}")
    assert greeting == "hi"
