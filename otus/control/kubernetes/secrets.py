"""Secrets named by reporters' ``secretRef``s, written to private files for the agent's tasks.

Values never enter the task spec (the manager may persist and show it): each is written to a
file (mode 0600) in a 0700 directory per task id and content hash under the agent's secrets
directory (tmpfs in the chart), and the reporter config points at the file; only a username
goes in as a value.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import shutil
from pathlib import Path

from otus.control.kubernetes.model import CaptureTaskSpec
from otus.core.errors import SpecError
from otus.core.kube import ApiError, KubeClient

__all__ = ["prune_secret_dirs", "resolve_secrets"]


async def resolve_secrets(
    client: KubeClient, root: Path, namespace: str, task_id: str, cts: CaptureTaskSpec
) -> tuple[dict[int, dict[str, str]], Path | None]:
    """Read the Secrets and write their files: reporter index -> setting -> path (or username).

    Raises :class:`SpecError` when a Secret or one of its keys is missing or unreadable.
    """
    refs = cts.secret_refs()
    if not refs:
        return {}, None
    values: dict[int, dict[str, bytes]] = {}
    for i, ref in refs.items():
        path = f"/api/v1/namespaces/{namespace}/secrets/{ref.name}"
        try:
            secret = await client.get(path)
        except ApiError as e:
            raise SpecError(f"secret {ref.name}: {e.message or e.reason}") from None
        data = secret.get("data") or {}
        values[i] = {}
        for target, key in ref.keys().items():
            if key not in data:
                raise SpecError(f"secret {ref.name} has no key {key!r}")
            try:
                values[i][target] = base64.b64decode(data[key], validate=True)
            except (binascii.Error, ValueError):
                raise SpecError(f"secret {ref.name}: key {key!r} is not base64") from None
    digest = hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:12]
    secret_dir = root / task_id / digest
    resolved: dict[int, dict[str, str]] = {}
    await asyncio.to_thread(_private_dir, secret_dir)
    for i, fields in values.items():
        resolved[i] = {}
        for target, raw in fields.items():
            if target == "username":
                resolved[i][target] = raw.decode("utf-8", "replace").strip()
                continue
            file = secret_dir / f"r{i}-{target}"
            await asyncio.to_thread(_write_private, file, raw)
            resolved[i][target] = str(file)
    return resolved, secret_dir


def prune_secret_dirs(root: Path, task_id: str, keep: Path | None) -> None:
    """Remove the task's secret files other than ``keep`` (the running task's)."""
    task_dir = root / task_id
    if task_dir.is_dir():
        for d in task_dir.iterdir():
            if d != keep:
                shutil.rmtree(d, ignore_errors=True)
        if keep is None:
            shutil.rmtree(task_dir, ignore_errors=True)


def _private_dir(path: Path) -> None:
    for p in (*reversed(path.parents[:2]), path):
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        p.chmod(0o700)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
