"""Fixtures of the daemon tests: a real daemon process (``tests.infra.daemon``)."""

from __future__ import annotations

from tests.infra.daemon import daemon_factory

__all__ = ["daemon_factory"]
