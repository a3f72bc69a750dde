"""Session fixtures for the e2e suite."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from e2e.infra.cluster import Cluster
from e2e.infra.tools import (
    ToolError,
    ensure_etcd,
    ensure_helm,
    ensure_kube_apiserver,
    ensure_kubectl,
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the tools before any test runs, so a cold build is not charged to a test's timeout."""
    if session.config.option.collectonly:
        return
    started = time.monotonic()
    try:
        for ensure in (ensure_helm, ensure_kube_apiserver, ensure_kubectl, ensure_etcd):
            ensure()
    except ToolError as exc:
        pytest.exit(f"e2e tools unavailable: {exc}", returncode=1)
    print(f"e2e tools ready in {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """etcd + kube-apiserver on 127.0.0.1 for the whole session."""
    started = time.monotonic()
    with Cluster() as c:
        print(f"\ncontrol plane {c.server} ready in {time.monotonic() - started:.1f}s")
        yield c
