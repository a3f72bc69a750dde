"""A real Kubernetes control plane for tests: etcd and kube-apiserver on 127.0.0.1.

``Cluster`` starts etcd (free ports, data dir on tmpfs) and a kube-apiserver built from the pinned
release (``tools.ensure_kube_apiserver``) with RBAC, service-account token signing and client
certificate auth, writes an admin kubeconfig (O=system:masters) and waits for ``/readyz``.
Everything lives in one temporary directory, removed by ``stop()`` (kept when
``OTUS_E2E_KEEP=1``); processes are killed by PID and also die with the Python process.

There is no kubelet, controller-manager or scheduler, so:

- Nodes are plain objects (``create_node``) and stay NotReady; Pods are never scheduled or run,
  Deployments and DaemonSets create no Pods, and a Pod's status is whatever a test writes.
- Namespaces never finish deleting (they stay Terminating: the namespace controller is missing);
  use a fresh namespace per test instead of deleting one.
- No garbage collection: ownerReferences do not cascade, and ``kubectl delete`` of an owner leaves
  its dependents behind. Finalizers are honoured by the apiserver itself (objects wait for them).
- No ServiceAccount or token controllers: no ``default`` ServiceAccount per namespace and no
  token Secrets. ``create_service_account_kubeconfig`` creates the account and mints a token with
  the TokenRequest API (the apiserver signs it). The ServiceAccount admission plugin is disabled
  so Pods can be created without their account existing.
- No Endpoints/EndpointSlices for Services, no Jobs, CronJobs, HPA, node lifecycle taints
  (except the NotReady taint added at creation by admission), and no CSR signing.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from e2e.infra.tools import ToolError, ensure_etcd, ensure_kube_apiserver, ensure_kubectl

__all__ = ["Cluster", "ClusterError"]

SERVICE_CIDR = "10.0.0.0/24"  # only ever an address range in objects: nothing routes it
ISSUER = "https://kubernetes.default.svc.cluster.local"
_PR_SET_PDEATHSIG = 1


class ClusterError(ToolError):
    """The control plane failed to start or a kubectl call failed."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Children get SIGKILL if the Python process dies without teardown (killed test run): on
    # SIGTERM, kube-apiserver's graceful shutdown waits forever for the etcd that died with it.
    # The signal follows the starting *thread*: start a Cluster from a thread that outlives it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _remove_stale(base: Path) -> None:
    # Work dirs of runs that were killed before teardown (tmpfs is memory).
    for old in base.glob("otus-kube-*-*"):
        pid = old.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


class Cluster:
    """etcd + kube-apiserver on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        bind_address: str = "127.0.0.1",
        extra_ips: tuple[str, ...] = (),
        ready_timeout: float = 120.0,
    ) -> None:
        # 127.0.0.1 is not reachable from inside another network namespace: a process started in
        # one needs bind_address (e.g. "0.0.0.0") plus the address it dials in extra_ips and as
        # the `server` of its kubeconfig. A specific IPv4 bind_address (an address of ours that
        # the namespaces route to) is served alone: `server` and every kubeconfig then use it.
        self.bind_address = bind_address
        self.extra_ips = extra_ips
        self.ready_timeout = ready_timeout
        self.dir: Path | None = None
        self.server = ""
        self.port = 0
        self.kubeconfig = Path()
        self.kubectl_bin = Path()
        self.etcd_url = ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def host(self) -> str:
        """The address clients dial: the bind address, or 127.0.0.1 for a wildcard one."""
        return "127.0.0.1" if self.bind_address in ("0.0.0.0", "::", "") else self.bind_address

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Build what is missing, generate certificates, start etcd and the apiserver."""
        etcd, apiserver = ensure_etcd(), ensure_kube_apiserver()
        self.kubectl_bin = ensure_kubectl()
        shm = Path("/dev/shm")
        # etcd fsyncs every write: on tmpfs that is free, which keeps a busy machine's API fast.
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        _remove_stale(base or Path(tempfile.gettempdir()))
        self.dir = Path(tempfile.mkdtemp(prefix=f"otus-kube-{os.getpid()}-", dir=base))
        try:
            self._pki()
            for attempt in range(3):  # a free port can be taken by someone else before we bind it
                try:
                    self._start_etcd(etcd)
                    self._start_apiserver(apiserver)
                    break
                except ClusterError as exc:
                    self._kill_all()
                    if attempt == 2 or "address already in use" not in str(exc):
                        raise
            self._write_admin_kubeconfig()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the apiserver, then etcd (by PID), and remove the temporary directory."""
        self._kill_all()
        if self.dir is not None and os.environ.get("OTUS_E2E_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _kill_all(self) -> None:
        for name in ("kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        assert self.dir is not None
        with (self.dir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
            )
        self._procs[name] = proc
        return proc

    def log_tail(self, name: str = "kube-apiserver", lines: int = 40) -> str:
        """Last lines of ``kube-apiserver`` or ``etcd`` output."""
        assert self.dir is not None
        return _tail(self.dir / f"{name}.log", lines)

    # -- certificates ----------------------------------------------------------------------

    def _openssl(self, *args: str) -> None:
        proc = subprocess.run(
            ["openssl", *args], cwd=self.dir, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise ClusterError(f"openssl {' '.join(args)} failed:\n{proc.stderr.strip()}")

    def _pki(self) -> None:
        """A CA, the serving cert, an admin client cert and the service-account signing key."""
        if shutil.which("openssl") is None:
            raise ClusterError("openssl not found (Debian package openssl)")
        d = self.dir
        assert d is not None
        self._openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=otus-e2e-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        ips = dict.fromkeys(("127.0.0.1", "10.0.0.1", self.host, *self.extra_ips))
        sans = ",".join(
            [
                *(f"IP:{ip}" for ip in ips),
                "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ]
        )
        certs = {
            "serving": (
                "/CN=kube-apiserver",
                f"subjectAltName={sans}\nextendedKeyUsage=serverAuth",
            ),
            "admin": ("/O=system:masters/CN=otus-e2e-admin", "extendedKeyUsage=clientAuth"),
        }
        for name, (subject, ext) in certs.items():
            (d / f"{name}.ext").write_text(
                f"keyUsage=critical,digitalSignature,keyEncipherment\n{ext}\n"
            )
            self._openssl(
                "req", "-new", "-newkey", "rsa:2048", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
            )  # fmt: skip
            self._openssl(
                "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "3", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
            )  # fmt: skip
        self._openssl("genrsa", "-out", "sa.key", "2048")
        self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    # -- processes -------------------------------------------------------------------------

    def _start_etcd(self, etcd: Path) -> None:
        assert self.dir is not None
        client, peer = _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        data = self.dir / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        proc = self._spawn(
            "etcd",
            [
                str(etcd),
                "--name=otus-e2e",
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=otus-e2e=http://127.0.0.1:{peer}",
                "--log-level=warn",
                "--logger=zap",
            ],
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"etcd exited with {proc.returncode}:\n{self.log_tail('etcd')}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp,
            ):
                if b'"health":"true"' in resp.read():
                    return
            time.sleep(0.2)
        raise ClusterError(f"etcd not healthy within 30s:\n{self.log_tail('etcd')}")

    def _start_apiserver(self, apiserver: Path) -> None:
        d = self.dir
        assert d is not None
        port = _free_port()
        self.port = port
        self.server = f"https://{self.host}:{port}"
        proc = self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.bind_address}",
                f"--advertise-address={self.host}",
                f"--secure-port={port}",
                f"--cert-dir={d}",
                f"--tls-cert-file={d / 'serving.crt'}",
                f"--tls-private-key-file={d / 'serving.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # No controller-manager creates `default` ServiceAccounts; Pods must still admit.
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
        ctx.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))
        deadline = time.monotonic() + self.ready_timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(
                    f"kube-apiserver exited with {proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", timeout=5, context=ctx) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                body = exc.read().decode(errors="replace").splitlines()
                failing = [line for line in body if line.startswith("[-]")] or body[-3:]
                last = f"/readyz {exc.code}: {'; '.join(failing)}"
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise ClusterError(
            f"kube-apiserver not ready within {self.ready_timeout:.0f}s ({last})\n{self.log_tail()}"
        )

    # -- kubeconfigs -----------------------------------------------------------------------

    def _kubeconfig(
        self, path: Path, user: str, creds: dict[str, str], server: str | None = None
    ) -> Path:
        assert self.dir is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "otus-e2e",
                    "cluster": {
                        "server": server or self.server,
                        "certificate-authority-data": _b64(self.dir / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": user, "context": {"cluster": "otus-e2e", "user": user}}],
            "current-context": user,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def _write_admin_kubeconfig(self) -> None:
        assert self.dir is not None
        creds = {
            "client-certificate-data": _b64(self.dir / "admin.crt"),
            "client-key-data": _b64(self.dir / "admin.key"),
        }
        self.kubeconfig = self._kubeconfig(self.dir / "admin.kubeconfig", "admin", creds)

    def create_service_account_kubeconfig(
        self, namespace: str, name: str, *, duration: str = "24h", server: str | None = None
    ) -> Path:
        """Create the ServiceAccount (and namespace), mint a token, write a kubeconfig for it."""
        # `server` overrides the URL, e.g. https://<one of extra_ips>:<port> from another netns.
        assert self.dir is not None
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": namespace},
            },
        )
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}")
        path = self.dir / f"sa-{namespace}-{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        return self._kubeconfig(path, user, {"token": token}, server)

    # -- kubectl helpers -------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        kubeconfig: Path | None = None,
        check: bool = True,
        timeout: float = 120,
    ) -> str:
        """Run our kubectl with the admin (or given) kubeconfig; stdout, stripped."""
        proc = self.kubectl_run(*args, input=input, kubeconfig=kubeconfig, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc.stdout.strip()

    def kubectl_run(
        self,
        *args: str,
        input: str | None = None,
        kubeconfig: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl and return the completed process whatever its exit code."""
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        return subprocess.run(
            [str(self.kubectl_bin), *args],
            input=input,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def apply(self, *objs: str | Path | dict[str, Any], extra: tuple[str, ...] = ()) -> str:
        """``kubectl apply`` a file, a YAML string or object dicts; ``extra`` adds flags."""
        if len(objs) == 1 and isinstance(objs[0], Path):
            return self.kubectl("apply", "-f", str(objs[0]), *extra)
        docs = [yaml.safe_load_all(o) if isinstance(o, str) else [o] for o in objs]
        # JSON documents (YAML is a superset): kubectl's YAML 1.1 would read an unquoted label
        # value such as y or no, which PyYAML leaves bare, as a boolean.
        text = "\n---\n".join(json.dumps(d) for group in docs for d in group if d)
        return self.kubectl("apply", "-f", "-", *extra, input=text)

    def create_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        """Create (or relabel) a Node object; with no kubelet it stays NotReady."""
        base = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": {**base, **(labels or {})}},
            }
        )
