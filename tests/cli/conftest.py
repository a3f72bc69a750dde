"""Fixtures of the CLI tests: a real daemon process for the control commands."""

from __future__ import annotations

from tests.infra.daemon import daemon_factory

__all__ = ["daemon_factory"]
