"""Prometheus metrics (``/metrics``), liveness (``/healthz``) and readiness (``/readyz``).

Served by aiohttp on the daemon's own loop: a scrape reads the task manager directly (no
thread, no lock) and costs a few dict walks per task. The task metrics are built at scrape time
from each task's aggregated worker counters (``TaskRunner.stats()``: the sum of every worker's
latest cumulative snapshot, a finished worker keeping its last one), so they equal what
``task.status`` and the ``otus run`` summary report. Counters never go backwards within one
task incarnation; an ``update`` or a daemon restart starts a new one (counters from zero, which
Prometheus' ``rate()`` treats as a reset; ``otus_task_start_time_seconds`` tells when).

Task metrics (label ``task`` on all):

- ``otus_capture_packets_total{interface}``, ``otus_capture_bytes_total{interface}``
- ``otus_capture_kernel_drops_total``: frames the kernel dropped (``capture.drop.kernel``)
- ``otus_capture_drops_total{stage,reason}``: every ``<stage>.drop.<reason>`` counter
- ``otus_pipeline_packets_total{stage}``: out of each stage: capture (frames), decode (L4
  packets), parse (SIP messages), report (records handed to reporters)
- ``otus_pipeline_latency_seconds{stage}``: histogram of per-batch time in decode, parse,
  process, report
- ``otus_sip_messages_total{method,status_class}``: requests by method (status_class ""),
  responses by class (method "")
- ``otus_sip_parse_errors_total{reason}``: ``parse.drop.<reason>`` but ``no_parser``
- ``otus_reassembly_active_fragments``, ``otus_flows_active``: gauges (0 once stopped)
- ``otus_task_status{status}`` (1 for the current state), ``otus_task_memory_bytes``,
  ``otus_task_workers`` (alive), ``otus_task_start_time_seconds``
- ``otus_task_stat_total{name}`` / ``otus_task_level{name}``: every counter / gauge of the
  task under its own name, for the ones without a dedicated metric (Kafka reporter, TCP, ...)

Daemon metrics: ``otus_build_info{version,python}``, ``otus_daemon_start_time_seconds``,
``otus_daemon_uptime_seconds``, ``otus_daemon_ready``, ``otus_control_requests_total{plane,
method,outcome}``, ``otus_log_dropped_total{reason}`` (queue_full, loki_queue_full,
loki_send_failed, worker_rate_limit), ``otus_log_loki_sent_total``; plus the client library's
``process_*`` and ``python_*`` collectors.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from otus.control.commands import Commands
from otus.core.stats import DROP, GAUGES
from otus.daemon.config import MetricsSection, parse_listen
from otus.daemon.logging import LogRuntime
from otus.pipeline.latency import BUCKETS
from otus.task.manager import TERMINAL, TaskInfo, TaskManager, TaskState

__all__ = ["MetricsServer", "OtusCollector", "build_registry"]

_STAGE_OUT = (
    ("capture", "capture.packets"),
    ("decode", "decode.packets"),
    ("parse", "parse.messages"),
    ("report", "report.records"),
)
_LE = [repr(float(b)) for b in BUCKETS]


def _interface(info: TaskInfo) -> str:
    cap = info.spec.get("capture") or {}
    return ",".join(cap.get("interfaces") or []) if cap.get("type") == "afpacket" else ""


class OtusCollector(Collector):
    """Builds every Otus metric at scrape time."""

    def __init__(
        self,
        manager: TaskManager,
        *,
        commands: Commands | None = None,
        logs: LogRuntime | None = None,
        started_at: float | None = None,
        version: str = "",
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.manager = manager
        self.commands = commands
        self.logs = logs
        self.started_at = started_at or time.time()
        self.version = version
        self.ready = ready

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the families depend on the tasks (the registry then skips checks)."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Every family, built now."""
        yield from self._daemon()
        yield from self._tasks(self.manager.list())

    def _daemon(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "otus_build_info", "Otus version and Python.", labels=["version", "python"]
        )
        info.add_metric([self.version, platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily(
            "otus_daemon_start_time_seconds", "When the daemon started.", value=self.started_at
        )
        yield GaugeMetricFamily(
            "otus_daemon_uptime_seconds",
            "Seconds since the daemon started.",
            value=time.time() - self.started_at,
        )
        if self.ready is not None:
            yield GaugeMetricFamily(
                "otus_daemon_ready", "1 when serving and tasks are restored.", value=self.ready()
            )
        if self.commands is not None:
            req = CounterMetricFamily(
                "otus_control_requests",
                "Control commands handled, by plane, method and outcome (ok or error code).",
                labels=["plane", "method", "outcome"],
            )
            for (plane, method, outcome), n in sorted(self.commands.counts.items()):
                req.add_metric([plane, method, outcome], n)
            yield req
        dropped = CounterMetricFamily(
            "otus_log_dropped", "Log records lost, by reason.", labels=["reason"]
        )
        dropped.add_metric(["worker_rate_limit"], self.manager.log_dropped())
        if self.logs is not None:
            loki = self.logs.loki
            dropped.add_metric(["queue_full"], self.logs.dropped)
            dropped.add_metric(["loki_queue_full"], loki.dropped_queue)
            dropped.add_metric(["loki_send_failed"], loki.dropped_send)
            yield CounterMetricFamily(
                "otus_log_loki_sent", "Log lines pushed to Loki.", value=loki.sent
            )
        yield dropped

    def _tasks(self, infos: list[TaskInfo]) -> Iterable[Metric]:
        f: dict[str, Any] = {
            "packets": CounterMetricFamily(
                "otus_capture_packets",
                "Frames captured.",
                labels=["task", "interface"],
            ),
            "bytes": CounterMetricFamily(
                "otus_capture_bytes", "Bytes captured.", labels=["task", "interface"]
            ),
            "kernel": CounterMetricFamily(
                "otus_capture_kernel_drops",
                "Frames the kernel dropped (ring full).",
                labels=["task"],
            ),
            "drops": CounterMetricFamily(
                "otus_capture_drops",
                "Packets or messages that ended unreported, by stage and reason.",
                labels=["task", "stage", "reason"],
            ),
            "stage": CounterMetricFamily(
                "otus_pipeline_packets",
                "Items out of each stage (capture: frames, decode: L4 packets, parse: SIP "
                "messages, report: records).",
                labels=["task", "stage"],
            ),
            "latency": HistogramMetricFamily(
                "otus_pipeline_latency_seconds",
                "Time spent per batch in each stage.",
                labels=["task", "stage"],
            ),
            "sip": CounterMetricFamily(
                "otus_sip_messages",
                "SIP messages parsed: requests by method, responses by status class.",
                labels=["task", "method", "status_class"],
            ),
            "sip_err": CounterMetricFamily(
                "otus_sip_parse_errors",
                "Payloads the SIP parser could not turn into a message, by reason.",
                labels=["task", "reason"],
            ),
            "frags": GaugeMetricFamily(
                "otus_reassembly_active_fragments",
                "IP fragments held for reassembly.",
                labels=["task"],
            ),
            "flows": GaugeMetricFamily("otus_flows_active", "TCP flows tracked.", labels=["task"]),
            "status": GaugeMetricFamily(
                "otus_task_status", "1 for the task's current state.", labels=["task", "status"]
            ),
            "rss": GaugeMetricFamily(
                "otus_task_memory_bytes", "Resident memory of the task's workers.", labels=["task"]
            ),
            "workers": GaugeMetricFamily(
                "otus_task_workers", "Worker processes alive.", labels=["task"]
            ),
            "start": GaugeMetricFamily(
                "otus_task_start_time_seconds",
                "When the task's current incarnation started.",
                labels=["task"],
            ),
            "counter": CounterMetricFamily(
                "otus_task_stat", "Every counter of the task, by name.", labels=["task", "name"]
            ),
            "gauge": GaugeMetricFamily(
                "otus_task_level", "Every gauge of the task, by name.", labels=["task", "name"]
            ),
        }
        for info in infos:
            self._task(f, info)
        yield from f.values()

    def _task(self, f: dict[str, Any], info: TaskInfo) -> None:
        t = info.id
        s = info.stats
        live = info.state not in TERMINAL
        iface = _interface(info)
        f["packets"].add_metric([t, iface], s.get("capture.packets", 0))
        f["bytes"].add_metric([t, iface], s.get("capture.bytes", 0))
        f["kernel"].add_metric([t], s.get("capture.drop.kernel", 0))
        for stage, key in _STAGE_OUT:
            f["stage"].add_metric([t, stage], s.get(key, 0))
        for name, v in sorted(s.items()):
            if name in GAUGES:
                f["gauge"].add_metric([t, name], v if live else 0)
                continue
            f["counter"].add_metric([t, name], v)
            if DROP in name:
                stage, _, reason = name.partition(DROP)
                f["drops"].add_metric([t, stage, reason], v)
                if stage == "parse" and reason != "no_parser":
                    f["sip_err"].add_metric([t, reason], v)
            elif name.startswith("sip.request."):
                f["sip"].add_metric([t, name[12:], ""], v)
            elif name.startswith("sip.response."):
                f["sip"].add_metric([t, "", name[13:]], v)
        f["frags"].add_metric([t], s.get("reassembly.pending_fragments", 0) if live else 0)
        f["flows"].add_metric([t], s.get("flows.active", 0) if live else 0)
        for st in TaskState:
            f["status"].add_metric([t, st.value], 1 if info.state == st else 0)
        f["rss"].add_metric([t], info.rss_bytes)
        f["workers"].add_metric([t], sum(1 for p in info.processes if p.get("alive")))
        f["start"].add_metric([t], info.started_at or 0)
        try:
            hist = self.manager.latency(t)
        except Exception:  # deleted between list() and now
            hist = {}
        for stage, h in hist.items():
            cum = 0
            buckets = []
            for le, c in zip(_LE, h.counts, strict=False):
                cum += c
                buckets.append((le, cum))
            buckets.append(("+Inf", h.count))
            f["latency"].add_metric([t, stage], buckets, h.sum)


def build_registry(collector: OtusCollector) -> CollectorRegistry:
    """A registry with the Otus collector and the process/platform/GC ones."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    for c in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        reg.register(c)
    return reg


class MetricsServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on the daemon's loop (aiohttp)."""

    def __init__(
        self, settings: MetricsSection, registry: CollectorRegistry, ready: Callable[[], bool]
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.ready = ready
        self.scrapes = 0
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str | None:
        """Where ``/metrics`` is, once started."""
        if self.address is None:
            return None
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}{self.settings.path}"

    async def start(self) -> None:
        """Listen (raises OSError when the port is taken)."""
        app = web.Application()
        app.router.add_get(self.settings.path, self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = parse_listen(self.settings.listen)
        site = web.TCPSite(runner, host=host, port=port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        addrs = [a for a in runner.addresses if isinstance(a, tuple)]
        if addrs:
            h, p = str(addrs[0][0]), int(addrs[0][1])
            self.address = ("127.0.0.1" if h == "0.0.0.0" else "::1" if h == "::" else h, p)  # noqa: S104

    async def close(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, _: web.Request) -> web.Response:
        self.scrapes += 1
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")
