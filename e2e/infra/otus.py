"""Otus as a user installs it, minus the kubelet: the chart rendered and applied, the operator and
the agents as processes, and the Pod objects a kubelet would have reported.

- :func:`render_chart` runs ``helm template`` on ``charts/otus``; :func:`apply_chart` applies what
  it renders (CRD first) with kubectl, so RBAC, ServiceAccounts and the agent ConfigMap are the
  chart's. The Deployment and DaemonSet are applied too; with no controllers they start nothing.
- :class:`OperatorProcess` runs ``python -m otus_operator`` with the args of the chart's
  Deployment and a kubeconfig for the chart's operator ServiceAccount.
- :class:`AgentProcess` runs ``python -m otus daemon`` with the args of the chart's DaemonSet and
  its ConfigMap's config inside a node's network namespace, with a kubeconfig for the chart's
  agent ServiceAccount; runtime files live in a directory of the test.
- :func:`put_pod` creates a Pod object and writes its status (IPs, phase, Ready) through the
  status subresource, as a kubelet would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from e2e.infra.cluster import Cluster
from e2e.infra.hub import NodeHost
from e2e.infra.tools import ensure_helm
from otus.control.uds_client import UdsClient
from otus.core.errors import OtusError
from tests.infra.kafka import free_port

__all__ = [
    "CHART",
    "RELEASE",
    "AgentProcess",
    "OperatorProcess",
    "apply_chart",
    "find",
    "put_pod",
    "render_chart",
]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "otus"
RELEASE = "otus"
START_TIMEOUT_S = 90.0  # python imports on two loaded cores are slow; bounded anyway


def render_chart(namespace: str, values: Mapping[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """``helm template`` of the chart (CRDs included) with ``values``; the objects it renders."""
    values_file = workdir / "values.yaml"
    values_file.write_text(yaml.safe_dump(dict(values)))
    args = [str(ensure_helm()), "template", RELEASE, str(CHART), "--namespace", namespace]
    args += ["--include-crds", "--kube-version", "v1.35.8", "-f", str(values_file)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"helm template failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one rendered object of ``kind`` (and ``name``)."""
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    if len(found) != 1:
        raise LookupError(f"{len(found)} rendered objects of kind {kind} named {name}")
    return found[0]


def apply_chart(cluster: Cluster, namespace: str, docs: list[dict[str, Any]]) -> None:
    """The release namespace, the CRD (established), then every other object."""
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    cluster.apply(*crds)
    for crd in crds:
        name = crd["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    cluster.apply(*[d for d in docs if d["kind"] != "CustomResourceDefinition"])


def put_pod(
    cluster: Cluster,
    namespace: str,
    name: str,
    *,
    node: str,
    ips: list[str],
    ready: bool = True,
    labels: Mapping[str, str] | None = None,
    spec: Mapping[str, Any] | None = None,
) -> None:
    """Create (or update) a Pod bound to ``node``, then write the status a kubelet would."""
    pod_spec = dict(spec or {"containers": [{"name": "main", "image": "example.invalid/sip:1"}]})
    pod_spec["nodeName"] = node
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "spec": pod_spec,
        }
    )
    set_pod_status(cluster, namespace, name, ips=ips, ready=ready)


def set_pod_status(
    cluster: Cluster, namespace: str, name: str, *, ready: bool, ips: list[str] | None = None
) -> None:
    """Patch a Pod's status through the status subresource: phase, IPs, Ready condition."""
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ips:
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": ip} for ip in ips]
    cluster.kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def _with_parent(argv: list[str]) -> list[str]:
    """``argv`` that gets SIGTERM if the test process dies without its teardown."""
    setpriv = shutil.which("setpriv")  # util-linux
    return [setpriv, "--pdeathsig", "TERM", *argv] if setpriv else argv


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} not up within {START_TIMEOUT_S:.0f}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM by PID, SIGKILL after 20 s."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


class OperatorProcess:
    """``python -m otus_operator`` with the chart's Deployment args, in our namespace."""

    def __init__(self, deployment: Mapping[str, Any], kubeconfig: Path, workdir: Path) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        self.health = f"http://127.0.0.1:{free_port()}/healthz"
        self.args = [
            f"--liveness={self.health}" if a.startswith("--liveness=") else a
            for a in container["args"]
        ]
        self.args += ["--kubeconfig", str(kubeconfig)]
        self.env = {"POD_NAMESPACE": deployment["metadata"]["namespace"]}
        self.log = workdir / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait for kopf's liveness endpoint."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                _with_parent([sys.executable, "-m", "otus_operator", *self.args]),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, **self.env},
            )
        _wait_http(self.health, self.proc, self.log, "the operator")

    def stop(self) -> None:
        """SIGTERM (kopf stops its handlers), SIGKILL after 20 s."""
        _stop(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the operator's log."""
        return _tail(self.log, lines)


class AgentProcess:
    """``python -m otus daemon`` with the chart's DaemonSet args and ConfigMap, in a node netns."""

    def __init__(
        self,
        host: NodeHost,
        daemonset: Mapping[str, Any],
        configmap: Mapping[str, Any],
        kubeconfig: Path,
        workdir: Path,
    ) -> None:
        self.host = host
        self.dir = workdir / host.name
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "config.yaml"
        self.config.write_text(configmap["data"]["config.yaml"])
        container = daemonset["spec"]["template"]["spec"]["containers"][0]
        args = list(container["args"])  # daemon --kubernetes --config /etc/otus/config.yaml
        args[args.index("--config") + 1] = str(self.config)
        self.argv = [sys.executable, "-m", "otus", *args]
        self.socket = self.dir / "otus.sock"
        # What the DaemonSet's env and mounts provide; daemon paths moved from /run/otus.
        self.env = {
            "NODE_NAME": host.name,
            "POD_NAMESPACE": daemonset["metadata"]["namespace"],
            "OTUS_RUNTIME_DIR": str(self.dir / "run"),
            "KUBECONFIG": str(kubeconfig),  # stands for the pod's service-account token
            "OTUS_AGENT__ID": host.name,
            "OTUS_DAEMON__PID_FILE": str(self.dir / "otus.pid"),
            "OTUS_DAEMON__SOCKET_PATH": str(self.socket),
            "OTUS_DAEMON__STATE_FILE": str(self.dir / "state.json"),
        }
        self.log = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start in the node's namespace; return once the daemon says it is ready."""
        argv = _with_parent(["env", *(f"{k}={v}" for k, v in self.env.items()), *self.argv])
        with self.log.open("ab") as out:
            self.proc = self.host.ns.popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.host.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError, OtusError):  # not listening yet
                status = self.call("daemon.status")
                if status.get("ready") and status["planes"].get("kubernetes") == "running":
                    return
            time.sleep(0.3)
        raise RuntimeError(f"agent {self.host.name} not ready:\n{self.log_tail()}")

    def call(self, method: str, params: Any = None) -> Any:
        """One request on the daemon's control socket (a file: reachable from any netns)."""
        return UdsClient(self.socket, timeout=10).call(method, params)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """Task id -> ``task.list`` entry (state, spec, stats)."""
        return {t["id"]: t for t in self.call("task.list")["tasks"]}

    def kill(self) -> None:
        """SIGKILL, as a node losing its agent container (its workers get SIGTERM)."""
        assert self.proc is not None
        self.host.ns.stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: the daemon stops its tasks, flushes and says goodbye."""
        if self.proc is not None:
            self.host.ns.stop(self.proc, signal.SIGTERM, wait=30)

    @property
    def alive(self) -> bool:
        """Whether the daemon process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the agent's log."""
        return _tail(self.log, lines)
