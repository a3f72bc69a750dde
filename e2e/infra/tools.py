"""Built test tools (helm, kube-apiserver, kubectl, etcd), cached under ``$OTUS_CACHE/bin``."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = [
    "BUILD_SCRIPT",
    "ToolError",
    "cache_dir",
    "ensure_etcd",
    "ensure_helm",
    "ensure_kube_apiserver",
    "ensure_kubectl",
]

BUILD_SCRIPT = Path(__file__).resolve().with_name("build.sh")
_REPO = BUILD_SCRIPT.parents[2]
# A cold kube-apiserver build on two busy cores takes ~15 minutes; a hung build must still end.
_BUILD_TIMEOUT_S = 3600


class ToolError(RuntimeError):
    """A test tool could not be built, found or installed."""


def cache_dir() -> Path:
    """The cache directory: ``$OTUS_CACHE`` or ``<repo>/.cache``."""
    return Path(os.environ.get("OTUS_CACHE") or _REPO / ".cache")


def _build(name: str) -> Path:
    binary = cache_dir() / "bin" / name
    if not BUILD_SCRIPT.exists():
        raise ToolError(f"{BUILD_SCRIPT} is missing")
    env = {**os.environ, "OTUS_CACHE": str(cache_dir())}
    stamp = binary.parent / f".{name}.stamp"
    if not stamp.exists():
        print(f"building {name} into {binary} (first run only)", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), name],
            env=env,
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"building {name} took more than {_BUILD_TIMEOUT_S}s") from exc
    if proc.returncode != 0 or not os.access(binary, os.X_OK):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ToolError(
            f"building {name} failed (exit {proc.returncode}): bash {BUILD_SCRIPT} {name}\n{tail}"
        )
    return binary


@functools.cache
def ensure_helm() -> Path:
    """Path to the pinned ``helm``, built with ``go install`` on first use."""
    return _build("helm")


@functools.cache
def ensure_kube_apiserver() -> Path:
    """Path to ``kube-apiserver`` built from the pinned Kubernetes release."""
    return _build("kube-apiserver")


@functools.cache
def ensure_kubectl() -> Path:
    """Path to ``kubectl`` of the same release (never the machine's own ``kubectl``)."""
    return _build("kubectl")


@functools.cache
def ensure_etcd() -> Path:
    """Path to ``etcd``: Debian's ``etcd-server``, installed with apt when root and missing."""
    for found in (shutil.which("etcd"), "/usr/bin/etcd"):
        if found and os.access(found, os.X_OK):
            return Path(found)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ToolError("etcd not found: apt-get install etcd-server (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log: list[str] = []
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "etcd-server"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        log += (proc.stdout + proc.stderr).splitlines()
        if proc.returncode != 0:
            tail = "\n".join(log[-20:])
            raise ToolError(f"installing etcd-server failed: {' '.join(cmd)}\n{tail}")
    if not os.access("/usr/bin/etcd", os.X_OK):
        raise ToolError("etcd-server installed but /usr/bin/etcd is missing")
    return Path("/usr/bin/etcd")
