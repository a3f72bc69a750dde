"""A small asynchronous Kubernetes API client: config loading, requests, and list+watch.

Shared by the agent's Kubernetes mode (``otus.control.kubernetes``), the ``k8s`` enrichment
processor (``otus.plugins.processor.k8s``) and the operator, so it lives in ``otus.core``
(importable from every layer) and depends on nothing but aiohttp.

- :class:`KubeConfig` comes from the pod's service-account files (in-cluster) or a kubeconfig
  file (token, token file or client certificate; no exec plugins). The service-account token
  is read again when its file changes: bound tokens are rotated by the kubelet.
- :class:`KubeClient` sends JSON requests and raises :class:`ApiError` on a non-2xx answer.
- :class:`Reflector` keeps a keyed cache of one collection up to date: paginated list, then
  watch from the list's ``resourceVersion`` with bookmarks; a ``410 Gone`` (history compacted)
  re-lists and reports the difference as events, connection errors back off exponentially.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiohttp
import yaml

from otus.core.errors import ConfigError, ControlError

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "ApiError",
    "KubeClient",
    "KubeConfig",
    "Reflector",
    "object_key",
]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"

T = TypeVar("T")


class ApiError(ControlError):
    """The API server answered with an error status (or could not be reached: ``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """Where the API server is and how to authenticate to it."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    token: str | None = None
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    namespace: str = "default"
    _token_cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, kubeconfig: str | Path | None = None) -> KubeConfig:
        """A kubeconfig file if given, else in-cluster, else ``$KUBECONFIG``."""
        if kubeconfig:
            return cls.from_kubeconfig(kubeconfig)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT_DIR.is_dir():
            return cls.in_cluster()
        env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        if env:
            return cls.from_kubeconfig(env)
        raise ConfigError(
            "no Kubernetes credentials: not in a pod (KUBERNETES_SERVICE_HOST unset) "
            "and no kubeconfig given (--kubeconfig or KUBECONFIG)"
        )

    @classmethod
    def in_cluster(cls, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConfig:
        """The pod's service account: token, CA and namespace files, the service's address."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError("KUBERNETES_SERVICE_HOST is not set: not running in a pod")
        if ":" in host:
            host = f"[{host}]"  # IPv6 service address
        ns_file = sa_dir / "namespace"
        return cls(
            server=f"https://{host}:{port}",
            ca_file=str(sa_dir / "ca.crt"),
            token_file=str(sa_dir / "token"),
            namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
        )

    @classmethod
    def from_kubeconfig(cls, path: str | Path, context: str | None = None) -> KubeConfig:
        """One context of a kubeconfig file (the current one by default)."""
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read kubeconfig {p}: {e}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"kubeconfig {p}: not a mapping")

        def pick(kind: str, name: str) -> dict[str, Any]:
            for item in doc.get(kind + "s") or []:
                if item.get("name") == name:
                    return dict(item.get(kind) or {})
            raise ConfigError(f"kubeconfig {p}: no {kind} named {name!r}")

        ctx = pick("context", context or doc.get("current-context") or "")
        cluster = pick("cluster", ctx.get("cluster", ""))
        user = pick("user", ctx.get("user", "")) if ctx.get("user") else {}
        if "exec" in user or "auth-provider" in user:
            raise ConfigError(
                f"kubeconfig {p}: exec and auth-provider credentials are not supported"
            )

        def rel(v: str | None) -> str | None:
            return str((p.parent / v).resolve()) if v else None

        def data(v: str | None) -> bytes | None:
            return base64.b64decode(v) if v else None

        return cls(
            server=str(cluster.get("server", "")).rstrip("/"),
            ca_file=rel(cluster.get("certificate-authority")),
            ca_data=data(cluster.get("certificate-authority-data")),
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            token=user.get("token"),
            token_file=rel(user.get("tokenFile")),
            cert_file=rel(user.get("client-certificate")),
            key_file=rel(user.get("client-key")),
            cert_data=data(user.get("client-certificate-data")),
            key_data=data(user.get("client-key-data")),
            namespace=ctx.get("namespace") or "default",
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS settings for an https server (``None`` for plain http)."""
        if not self.server.startswith("https:"):
            return None
        ctx = ssl.create_default_context(
            cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None
        )
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file or self.cert_data:
            self._load_client_cert(ctx)
        return ctx

    def _load_client_cert(self, ctx: ssl.SSLContext) -> None:
        if self.cert_file and (self.key_file or not self.key_data):
            ctx.load_cert_chain(self.cert_file, self.key_file)
            return
        # ssl loads certificates from files only: a private directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="otus-kube-") as tmp:
            cert = Path(self.cert_file) if self.cert_file else Path(tmp) / "tls.crt"
            key = Path(tmp) / "tls.key"
            if self.cert_data:
                cert.write_bytes(self.cert_data)
            key.touch(mode=0o600)
            key.write_bytes(self.key_data or b"")
            ctx.load_cert_chain(str(cert), str(key) if self.key_data else self.key_file)

    def authorization(self) -> str | None:
        """The ``Authorization`` header value, re-reading a token file that changed."""
        if self.token:
            return f"Bearer {self.token}"
        if not self.token_file:
            return None
        cache = self._token_cache
        try:
            mtime = os.stat(self.token_file).st_mtime_ns
            if cache.get("mtime") != mtime:
                cache["token"] = Path(self.token_file).read_text().strip()
                cache["mtime"] = mtime
        except OSError as e:
            if "token" not in cache:
                raise ConfigError(f"cannot read token file {self.token_file}: {e}") from None
        return f"Bearer {cache['token']}"


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class KubeClient:
    """JSON requests to one API server; use as an async context manager or call close()."""

    def __init__(self, config: KubeConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ctx = self.config.ssl_context()
            connector = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False)
            self._session = aiohttp.ClientSession(
                base_url=None, connector=connector, headers={"Accept": "application/json"}
            )
        return self._session

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        auth = self.config.authorization()
        if auth:
            headers["Authorization"] = auth
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """Send one request; the decoded JSON answer, or :class:`ApiError`."""
        data = None if body is None else json.dumps(body).encode()
        try:
            async with self._http().request(
                method,
                self.config.server + path,
                params=params,
                data=data,
                headers=self._headers(content_type if data is not None else None),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise _api_error(resp.status, text)
                return dict(json.loads(text)) if text else {}
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as e:
            raise ApiError(0, "Unreachable", f"{method} {path}: {e!r}") from None

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET an object or a list."""
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a new object into a collection."""
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH with a JSON merge patch (RFC 7386): maps merge key by key, ``null`` deletes."""
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(self, path: str) -> dict[str, Any]:
        """DELETE an object."""
        return await self.request("DELETE", path)

    async def watch(
        self, path: str, params: Mapping[str, str], *, read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream watch events (one JSON object a line) until the server ends the stream."""
        try:
            async with self._http().get(
                self.config.server + path,
                params={**params, "watch": "true"},
                headers=self._headers(None),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.timeout, sock_read=read_timeout
                ),
            ) as resp:
                if resp.status >= 300:
                    raise _api_error(resp.status, await resp.text())
                buf = b""
                # Lines can exceed aiohttp's readline limit (a pod with managed fields is big).
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while (nl := buf.find(b"\n")) >= 0:
                        line, buf = buf[:nl].strip(), buf[nl + 1 :]
                        if line:
                            yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as e:
            raise ApiError(0, "Unreachable", f"watch {path}: {e!r}") from None


def _api_error(status: int, text: str) -> ApiError:
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    return ApiError(
        status, str(doc.get("reason") or "Error"), str(doc.get("message") or text)[:500]
    )


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class Reflector(Generic[T]):
    """A list+watch cache of one collection, optionally reduced by ``transform``.

    ``on_change(type, key, value)`` is called for every change (``ADDED``, ``MODIFIED``,
    ``DELETED`` with the last value), including those found by a re-list; ``synced`` is set
    after the first complete list. ``predicate`` filters objects client-side as well (for
    servers that ignore selectors).
    """

    def __init__(
        self,
        client: KubeClient,
        path: str,
        *,
        transform: Callable[[dict[str, Any]], T | None],
        on_change: Callable[[str, str, T], None] | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout_s: int = 290,
        page_size: int = 500,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.client = client
        self.path = path
        self.transform = transform
        self.on_change = on_change
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout_s = watch_timeout_s
        self.page_size = page_size
        self.backoff_max_s = backoff_max_s
        self.store: dict[str, T] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.counters = {"lists": 0, "watches": 0, "events": 0, "gone": 0, "errors": 0}
        self.last_error = ""

    def _selectors(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params

    async def run(self) -> None:
        """List and watch until cancelled; never raises on API trouble, it retries."""
        backoff = 0.5
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                backoff = 0.5
            except _Gone:
                self.counters["gone"] += 1
                need_list = True
            except (ApiError, ConfigError, ValueError, ssl.SSLError) as e:
                self.counters["errors"] += 1
                self.last_error = str(e)
                if isinstance(e, ApiError) and e.status == 410:
                    self.counters["gone"] += 1
                    need_list = True
                    continue
                log.warning("kubernetes %s: %s (retrying in %.1fs)", self.path, e, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311 - jitter
                backoff = min(backoff * 2, self.backoff_max_s)

    async def _list(self) -> None:
        params = {**self._selectors(), "limit": str(self.page_size)}
        fresh: dict[str, T] = {}
        rv = ""
        while True:
            doc = await self.client.get(self.path, params)
            for obj in doc.get("items") or []:
                value = self.transform(obj)
                if value is not None:
                    fresh[object_key(obj)] = value
            meta = doc.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or "")
            cont = meta.get("continue")
            if not cont:
                break
            params["continue"] = str(cont)
        self.counters["lists"] += 1
        old, self.store = self.store, fresh
        self.resource_version = rv
        for key, value in fresh.items():
            if key not in old:
                self._emit("ADDED", key, value)
            elif old[key] != value:
                self._emit("MODIFIED", key, value)
        for key, value in old.items():
            if key not in fresh:
                self._emit("DELETED", key, value)
        self.synced.set()

    async def _watch(self) -> None:
        params = {
            **self._selectors(),
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout_s),
        }
        if self.resource_version:
            params["resourceVersion"] = self.resource_version
        self.counters["watches"] += 1
        async for event in self.client.watch(
            self.path, params, read_timeout=self.watch_timeout_s + 30
        ):
            kind = event.get("type")
            obj = event.get("object") or {}
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Gone
                raise ApiError(int(obj.get("code") or 500), str(obj.get("reason")), str(obj))
            if rv:
                self.resource_version = rv
            if kind == "BOOKMARK":
                continue
            self.counters["events"] += 1
            key = object_key(obj)
            value = self.transform(obj) if kind != "DELETED" else None
            if value is None:
                gone = self.store.pop(key, None)
                if gone is not None:
                    self._emit("DELETED", key, gone)
                continue
            old = self.store.get(key)
            self.store[key] = value
            if old is None:
                self._emit("ADDED", key, value)
            elif old != value:
                self._emit("MODIFIED", key, value)

    def _emit(self, kind: str, key: str, value: T) -> None:
        if self.on_change is not None:
            try:
                self.on_change(kind, key, value)
            except Exception:  # a consumer's bug must not stop the cache
                log.exception("kubernetes %s: change handler failed", self.path)


async def sleep_until(deadline: float) -> None:
    """Sleep until a ``time.monotonic()`` deadline (helper for throttled writers)."""
    with contextlib.suppress(ValueError):
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
