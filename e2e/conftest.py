"""Session fixtures for the e2e suite, phase timings, and ordered test classes."""

from __future__ import annotations

import contextlib
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


class Phases:
    """Named durations of the suite's phases, printed at the end of the run."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        """Time the block (recorded only when it completes)."""
        started = time.monotonic()
        yield
        self.add(name, time.monotonic() - started)

    def add(self, name: str, seconds: float) -> None:
        """Record a duration measured elsewhere."""
        self.done.append((name, seconds))

    def since(self, name: str, started: float) -> None:
        """Record the time since ``started`` (a ``time.monotonic()`` reading)."""
        self.add(name, time.monotonic() - started)


_PHASES = Phases()


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
    _PHASES.since("tools (helm, kube-apiserver, kubectl, etcd) checked or built", started)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every phase's duration, in the order they ran."""
    if _PHASES.done:
        terminalreporter.section("e2e phase timings")
        for name, seconds in _PHASES.done:
            terminalreporter.write_line(f"{seconds:7.1f}s  {name}")


# Classes marked `incremental` are one scenario in steps: after a failed step, the later ones
# are reported as xfail (not as failures of their own).
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Remember the first failed step of an incremental class."""
    if "incremental" in item.keywords and call.excinfo is not None and item.parent is not None:
        item.parent._otus_failed = item  # type: ignore[attr-defined]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (as xfail) the steps after a failed one."""
    if "incremental" in item.keywords and item.parent is not None:
        failed = getattr(item.parent, "_otus_failed", None)
        if failed is not None:
            pytest.xfail(f"previous step failed ({failed.name})")


def pytest_configure(config: pytest.Config) -> None:
    """The markers this suite uses (pyproject's list covers the unit suite's)."""
    config.addinivalue_line("markers", "incremental: a class whose tests are steps of one story")


@pytest.fixture(scope="session")
def phases() -> Phases:
    """Where tests record how long their phases took."""
    return _PHASES


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """etcd + kube-apiserver on 127.0.0.1 for the whole session."""
    started = time.monotonic()
    with Cluster() as c:
        _PHASES.since("control plane (etcd, kube-apiserver) for the smoke tests", started)
        yield c
