"""Fixtures of the Kubernetes tests: the emulated API server (``tests.infra.kube``)."""

from __future__ import annotations

from tests.infra.kube import kube_api

__all__ = ["kube_api"]
