"""``otus daemon``: the long-running agent, in the foreground, on uvloop.

Start: take the PID-file lock and the socket lock (a second daemon stops here with a clear
message; files left by a crashed daemon are taken over), configure logging, listen on the
control socket, start the metrics endpoint, the task manager's watchdog, the Loki pusher and
the optional control planes (Kafka, Kubernetes), restore the saved tasks, then report ready.
One task group owns every one of these tasks.

Signals: SIGHUP reloads the config (log level, format and outputs, limits; tasks keep running;
other changed sections are reported as needing a restart). SIGTERM or SIGINT (or
``daemon.stop``) shuts down in this order, within ``daemon.shutdown_timeout_s`` (default 15 s):

1. stop taking commands: the socket stops listening, mutating commands are refused, the Kafka
   and Kubernetes planes are cancelled (at most 30 % of the budget);
2. stop every task: each worker stops capturing, flushes its reporters and exits; workers
   still running when the budget is nearly spent are killed;
3. close the socket: requests in progress are answered (0.5 s at most), connections closed,
   the socket file removed;
4. stop the metrics endpoint, push the last log lines to Loki (1 s at most), remove the PID
   file.

A second SIGTERM/SIGINT during the shutdown kills the workers at once.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from otus import __version__
from otus.control.base import ControlPlane, PlaneContext
from otus.control.commands import Commands
from otus.control.uds_server import UdsServer, make_socket_dir
from otus.core.errors import ConfigError
from otus.daemon.config import GlobalConfig, load_config
from otus.daemon.logging import LogRuntime
from otus.daemon.metrics import MetricsServer, OtusCollector, build_registry
from otus.daemon.pidfile import LockFile
from otus.task.manager import TaskManager

__all__ = ["Daemon"]

log = structlog.stdlib.get_logger("otus.daemon")

_PLANE_BACKOFF_MAX_S = 60.0
_RELOADABLE = ("log", "limits")
_RESTART_ONLY = ("daemon", "metrics", "agent", "kafka", "kubernetes")


class Daemon:
    """One daemon process."""

    def __init__(
        self,
        config: GlobalConfig,
        *,
        config_path: Path | None = None,
        kubernetes: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.env = dict(os.environ if env is None else env)
        self.kubernetes = kubernetes or config.kubernetes.enabled
        self.agent_id = config.agent.resolved_id()
        self.started_at = time.time()
        self.logs = LogRuntime()
        d = config.daemon
        self.manager = TaskManager(
            agent_id=self.agent_id,
            max_tasks=config.limits.max_tasks,
            state_file=Path(d.state_file),
            memory_limit_mb=config.limits.memory_per_task_mb,
            stop_grace_s=min(10.0, d.shutdown_timeout_s * 0.6),
        )
        self.commands = Commands(self.manager, self)
        self.planes: dict[str, str] = {}
        self.uds: UdsServer | None = None
        self.metrics: MetricsServer | None = None
        self.ready = False
        self.stopping = False
        self.shutdown_seconds: float | None = None
        self._stop: asyncio.Event | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._stop_reason = ""

    # -- entry point ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until shut down; return the exit code."""
        import uvloop  # noqa: PLC0415 - only the daemon and workers need it

        return uvloop.run(self._main())

    def _check_planes(self) -> None:
        if self.kubernetes and not self._node_name():
            raise ConfigError(
                "Kubernetes mode needs the node name: set kubernetes.node_name or NODE_NAME "
                "(the downward API's spec.nodeName)"
            )

    def _node_name(self) -> str:
        return self.config.kubernetes.node_name or self.env.get("NODE_NAME", "")

    async def _main(self) -> int:
        self._check_planes()
        d = self.config.daemon
        pid = LockFile(d.pid_file, "pid file")
        sock_lock = LockFile(d.socket_path + ".lock", "socket lock")
        make_socket_dir(Path(d.socket_path))  # before the lock file, which would make it 0755
        pid.acquire()
        try:
            sock_lock.acquire()
        except BaseException:
            pid.release()
            raise
        try:
            self.logs.configure(self.config.log, self.agent_id)
            await self._serve()
        finally:
            sock_lock.release()
            pid.release()
            log.info("daemon stopped", shutdown_s=self.shutdown_seconds)
            self.logs.close()
        return 0

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        d = self.config.daemon
        self.uds = UdsServer(
            d.socket_path,
            self.commands.for_plane("uds"),
            mode=d.socket_mode,
            group=d.socket_group,
            max_request_bytes=d.max_request_bytes,
            max_clients=d.max_clients,
        )
        collector = OtusCollector(
            self.manager,
            commands=self.commands,
            logs=self.logs,
            started_at=self.started_at,
            version=__version__,
            ready=lambda: self.ready,
        )
        if self.config.metrics.enabled:
            self.metrics = MetricsServer(
                self.config.metrics, build_registry(collector), lambda: self.ready
            )
            try:
                await self.metrics.start()
            except OSError as e:
                raise ConfigError(
                    f"metrics: cannot listen on {self.config.metrics.listen}: {e.strerror}"
                ) from None
        try:
            await self.uds.start()
        except BaseException:
            if self.metrics is not None:
                await self.metrics.close()
            raise
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                uds_task = tg.create_task(self.uds.run(), name="uds")
                background = [
                    tg.create_task(self.manager.run(), name="watchdog"),
                    tg.create_task(self.logs.loki.run(), name="loki"),
                ]
                planes = [
                    tg.create_task(self._supervise(name, make), name=f"plane-{name}")
                    for name, make in self._plane_factories()
                ]
                log.info(
                    "daemon starting",
                    pid=os.getpid(),
                    version=__version__,
                    agent=self.agent_id,
                    socket=d.socket_path,
                    metrics=self.metrics.url if self.metrics else None,
                    planes=["uds", *self.planes],
                )
                restore = tg.create_task(self._restore(), name="restore")
                await self._stop.wait()
                try:
                    budget = d.shutdown_timeout_s
                    async with asyncio.timeout(budget + 5.0):
                        await self._shutdown(uds_task, planes, [restore, *background])
                except TimeoutError:
                    log.error("shutdown ran out of time; killing workers")
                    self.manager.kill_all()
                    for t in [uds_task, *planes, *background]:
                        t.cancel()
        finally:
            self._tg = None
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            # Removing the handler restores SIGHUP's default (exit): a reload sent while the
            # daemon finishes its shutdown must not cut it short.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    async def _restore(self) -> None:
        try:
            restored = await self.manager.restore()
        except Exception:  # a bug here must not end the daemon: serve what we have
            log.exception("task restore failed")
            restored = self.manager.list()
        assert self._stop is not None
        self.ready = not self._stop.is_set()
        log.info("daemon ready", tasks=len(restored))

    async def _shutdown(
        self,
        uds_task: asyncio.Task[None],
        planes: list[asyncio.Task[None]],
        background: list[asyncio.Task[None]],
    ) -> None:
        t0 = time.monotonic()
        budget = self.config.daemon.shutdown_timeout_s
        deadline = t0 + budget
        log.info("shutting down", reason=self._stop_reason, timeout_s=budget)
        # 1. stop taking commands
        self.ready = False
        self.commands.accepting = False
        assert self.uds is not None
        self.uds.stop_accepting()
        for t in planes:
            t.cancel()
        if not background[0].done():  # still restoring: what has not started stays saved
            background[0].cancel()
            planes = [*planes, background[0]]
        if planes:
            await asyncio.wait(planes, timeout=budget * 0.3)
        # 2. stop the tasks; their workers flush reporters before exiting
        grace = max(0.5, deadline - time.monotonic() - 3.5)
        await self.manager.shutdown(grace_s=grace)
        # 3. close the socket
        await self.uds.drain(0.5)
        uds_task.cancel()
        # 4. the rest
        if self.metrics is not None:
            await self.metrics.close()
        for t in background:
            t.cancel()
        await asyncio.wait([uds_task, *background], timeout=1.0)
        await self.logs.loki.drain(max(0.1, min(1.0, deadline - time.monotonic())))
        self.shutdown_seconds = round(time.monotonic() - t0, 3)

    # -- control planes ------------------------------------------------------------------

    def plane_context(self) -> PlaneContext:
        """What a control plane gets."""
        return PlaneContext(
            manager=self.manager,
            commands=self.commands,
            agent_id=self.agent_id,
            tags=dict(self.config.agent.tags),
            version=__version__,
            started_at=self.started_at,
            state_file=self.config.daemon.state_file,
        )

    def _plane_factories(self) -> list[tuple[str, Callable[[], ControlPlane]]]:
        out: list[tuple[str, Callable[[], ControlPlane]]] = []
        if self.config.kafka.enabled:
            try:
                mod = importlib.import_module("otus.control.kafka_plane")
                kafka_cls = mod.KafkaPlane
            except (ImportError, AttributeError) as e:
                self.planes["kafka"] = f"unavailable: {e}"
                log.error("Kafka command plane unavailable; running without it", error=str(e))
            else:
                settings, ctx = self.config.kafka, self.plane_context()
                self.planes["kafka"] = "starting"
                out.append(("kafka", lambda: kafka_cls(settings, ctx)))
        if self.kubernetes:
            try:
                mod = importlib.import_module("otus.control.kubernetes.agent")
                agent_cls = mod.KubernetesAgent
            except (ImportError, AttributeError) as e:
                self.planes["kubernetes"] = f"unavailable: {e}"
                log.error("Kubernetes agent mode unavailable; running without it", error=str(e))
            else:
                k = self.config.kubernetes
                node = self._node_name()
                self.planes["kubernetes"] = "starting"
                out.append(
                    (
                        "kubernetes",
                        lambda: agent_cls(
                            self.manager,
                            node_name=node,
                            namespace=k.namespace or None,
                            kubeconfig=k.kubeconfig or None,
                        ),
                    )
                )
        return out

    async def _supervise(self, name: str, make: Callable[[], ControlPlane]) -> None:
        delay = 1.0
        while True:
            try:
                plane = make()
                self.planes[name] = "running"
                await plane.run()
                self.planes[name] = "stopped"
                return
            except Exception as e:
                self.planes[name] = f"failed: {e}"
                log.exception("control plane failed; restarting", plane=name, retry_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _PLANE_BACKOFF_MAX_S)

    # -- signals and daemon commands -----------------------------------------------------

    def _on_signal(self, name: str) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            log.warning("second stop signal: killing the workers now", signal=name)
            self.manager.kill_all()
            return
        self._stop_reason = name
        self.stopping = True
        self.manager.begin_shutdown()
        self._stop.set()

    def _on_sighup(self) -> None:
        if self._tg is not None and not self.stopping:
            self._tg.create_task(self._reload_quietly(), name="reload")

    async def _reload_quietly(self) -> None:
        # An exception here would end the daemon's task group: whatever fails, log it and keep
        # the old config (a ConfigError is already logged by reload()).
        try:
            await self.reload()
        except ConfigError:
            pass
        except Exception:
            log.exception("config reload failed; keeping the current config")

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and environment; apply log and limits."""
        try:
            new = load_config(self.config_path, self.env)
        except ConfigError as e:
            log.error("config reload failed; keeping the current config", error=str(e))
            raise
        old = self.config
        self.logs.configure(new.log, self.agent_id)
        self.manager.configure(
            max_tasks=new.limits.max_tasks, memory_limit_mb=new.limits.memory_per_task_mb
        )
        restart = [s for s in _RESTART_ONLY if getattr(new, s) != getattr(old, s)]
        self.config = old.model_copy(update={"log": new.log, "limits": new.limits})
        log.info(
            "config reloaded",
            level=new.log.level,
            applied=list(_RELOADABLE),
            restart_required=restart,
        )
        return {
            "applied": list(_RELOADABLE),
            "restart_required": restart,
            "log_level": new.log.level,
        }

    def request_stop(self) -> dict[str, Any]:
        """Begin the shutdown right after the reply to ``daemon.stop`` is written."""
        if self._stop is not None and not self._stop.is_set():
            self.stopping = True
            self._stop_reason = "daemon.stop"
            self.manager.begin_shutdown()
            asyncio.get_running_loop().call_soon(self._stop.set)
        return {
            "stopping": True,
            "pid": os.getpid(),
            "timeout_s": self.config.daemon.shutdown_timeout_s,
        }

    def status(self) -> dict[str, Any]:
        """``daemon.status``."""
        infos = self.manager.list()
        states = collections.Counter(i.state.value for i in infos)
        c = self.config
        return {
            "pid": os.getpid(),
            "version": __version__,
            "agent_id": self.agent_id,
            "tags": dict(c.agent.tags),
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 3),
            "ready": self.ready,
            "stopping": self.stopping,
            "config_path": str(self.config_path) if self.config_path else None,
            "socket": c.daemon.socket_path,
            "pid_file": c.daemon.pid_file,
            "state_file": c.daemon.state_file,
            "shutdown_timeout_s": c.daemon.shutdown_timeout_s,
            "metrics_url": self.metrics.url if self.metrics else None,
            "log": {
                **self.logs.stats(),
                "format": c.log.format,
                "outputs": [o.type for o in c.log.outputs],
                "loki": self.logs.loki.stats(),
                "worker_dropped": self.manager.log_dropped(),
            },
            "limits": c.limits.model_dump(),
            "planes": {"uds": "running" if self.uds and self.uds.serving else "stopped"}
            | self.planes,
            "tasks": {"total": len(infos), "by_state": dict(states)},
        }
