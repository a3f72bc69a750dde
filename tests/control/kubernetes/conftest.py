"""Fixtures of the Kubernetes tests: the emulated API server (``tests.infra.kube``), an agent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from otus.control.kubernetes.agent import KubernetesAgent
from tests.infra.kube import FakeTaskManager, KubeApi, kube_api

__all__ = ["Agent", "agent", "kube_api"]


class Agent:
    """A KubernetesAgent run as a background task, with its fake manager."""

    def __init__(self, api: KubeApi, node: str, tmp: Path) -> None:
        self.manager = FakeTaskManager()
        self.agent = KubernetesAgent(
            self.manager,
            node_name=node,
            kubeconfig=api.kubeconfig,
            runtime_dir=tmp / node,
            heartbeat_s=0.2,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.agent.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


@pytest_asyncio.fixture
async def agent(kube_api: KubeApi, tmp_path: Path) -> AsyncIterator[Agent]:
    a = Agent(kube_api, "node-a", tmp_path)
    a.start()
    yield a
    await a.stop()
