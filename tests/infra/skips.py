"""Skip markers for tests that need root or an external tool, each with a reason that says so."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["IS_ROOT", "requires_root", "requires_tool"]

IS_ROOT = os.geteuid() == 0

requires_root = pytest.mark.skipif(
    not IS_ROOT, reason="needs root (network namespaces, AF_PACKET); CI runs as root"
)


def requires_tool(*names: str) -> pytest.MarkDecorator:
    """Skip unless every named executable is on PATH (``make test`` installs them when root)."""
    missing = [n for n in names if shutil.which(n) is None]
    return pytest.mark.skipif(
        bool(missing), reason=f"needs {', '.join(missing)} on PATH (make test installs it as root)"
    )
