"""The operator (kopf, in this process) and agents against the emulated API server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import kopf
import pytest_asyncio
from otus_operator.handlers import OperatorConfig, State, registry

from otus.control.kubernetes.agent import KubernetesAgent
from otus.core.kube import KubeConfig
from tests.infra.kube import FakeTaskManager, KubeApi, kube_api

__all__ = ["AGENT_NS", "Cluster", "cluster", "kube_api"]

AGENT_NS = "otus"
HEARTBEAT_TIMEOUT_S = 2.5


class Cluster:
    """The emulated API, the operator, and one agent per node (started on demand)."""

    def __init__(self, api: KubeApi, tmp: Path) -> None:
        self.api = api
        self.tmp = tmp
        self.managers: dict[str, FakeTaskManager] = {}
        self.agents: dict[str, asyncio.Task[None]] = {}
        self.state = State(
            config=OperatorConfig(
                agent_namespace=AGENT_NS,
                heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
                resync_s=0.2,
                delete_timeout_s=3.0,
            ),
            kube=KubeConfig.from_kubeconfig(api.kubeconfig),
        )
        self._operator: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    async def start_operator(self) -> None:
        # In a thread with its own loop, as in production: on exit kopf waits for every task of
        # its loop, which would include the test's own.
        started = threading.Event()

        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._main = asyncio.current_task()  # type: ignore[assignment]
            started.set()
            await kopf.operator(
                registry=registry,
                clusterwide=True,
                standalone=True,
                memo=kopf.Memo(state=self.state),
                stop_flag=self._stop,
            )

        def run() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                asyncio.run(main())

        self._operator = threading.Thread(target=run, name="operator", daemon=True)
        self._operator.start()
        await asyncio.to_thread(started.wait, 10)

    async def add_node(self, name: str, labels: dict[str, str], *, agent: bool = True) -> None:
        """A Node with an agent pod (ready) and a running agent process for it."""
        await self.api.node(name, labels)
        if agent:
            await self.api.agent_pod(AGENT_NS, name)
            self.start_agent(name)

    def start_agent(
        self, node: str, *, goodbye: bool = False, namespace: str | None = None
    ) -> None:
        manager = self.managers.setdefault(node, FakeTaskManager())
        agent = KubernetesAgent(
            manager,
            node_name=node,
            namespace=namespace,
            kubeconfig=self.api.kubeconfig,
            runtime_dir=self.tmp / node,
            heartbeat_s=0.3,
            goodbye=goodbye,
        )
        self.agents[node] = asyncio.create_task(agent.run())

    async def kill_agent(self, node: str) -> None:
        """Stop an agent (without a goodbye unless started with one: as SIGKILL would)."""
        task = self.agents.pop(node)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def restart_operator(self) -> None:
        """Stop the operator and start a new one, with nothing in memory (a new pod)."""
        await self.stop_operator()
        self.state = State(config=self.state.config, kube=self.state.kube)
        await self.start_operator()

    async def close(self) -> None:
        for node in list(self.agents):
            await self.kill_agent(node)
        await self.stop_operator()

    async def stop_operator(self) -> None:
        if self._operator is None or self._loop is None:
            return
        assert self._stop is not None and self._main is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._operator.join, 10)
        if self._operator.is_alive() and os.environ.get("OTUS_DEBUG_TASKS"):
            for t in asyncio.all_tasks(self._loop):
                print("HUNG", t.get_name(), t.get_coro(), file=sys.stderr)
                t.print_stack(limit=6, file=sys.stderr)
        if self._operator.is_alive():  # kopf did not stop in time: cancel it
            self._loop.call_soon_threadsafe(self._main.cancel)
            await asyncio.to_thread(self._operator.join, 10)
        assert not self._operator.is_alive(), "the operator did not stop"
        self._operator = self._loop = None


@pytest_asyncio.fixture
async def cluster(kube_api: KubeApi, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(kube_api, tmp_path)
    await c.start_operator()
    try:
        yield c
    finally:
        await c.close()
