"""Prometheus metrics (GET /metrics). One registry per gateway: live figures are read from the
store at scrape time; events (starts, failures, executes, Docker calls) are counted as they happen."""
from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import (
    GCCollector, PlatformCollector, ProcessCollector, CollectorRegistry, Counter as PCounter, Histogram, generate_latest,
)
from prometheus_client.core import GaugeMetricFamily



class LiveSource(Protocol):
    """What the scrape-time gauges read (the Gateway application is one)."""

    kernel_manager: Any  # kernels.manager.GatewayKernelManager
    jobs: Any  # jobs.JobManager


class Metrics:
    def __init__(self, gateway: LiveSource) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.starts = PCounter("kge_kernel_starts", "Kernels started", ["kernelspec", "source"], registry=self.registry)
        self.start_failures = PCounter("kge_kernel_start_failures", "Kernel starts that failed", ["kernelspec"],
                                       registry=self.registry)
        self.start_seconds = Histogram("kge_kernel_start_seconds", "Start to ready, seconds", ["source"],
                                       buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=self.registry)
        self.culls = PCounter("kge_culls", "Kernels and sessions given back by culling or expiry", ["what", "reason"],
                              registry=self.registry)
        self.rejections = PCounter("kge_start_rejections", "Starts refused by a limit", ["reason"], registry=self.registry)
        self.executes = PCounter("kge_executes", "Code runs started by REST callers", ["dialect"], registry=self.registry)
        self.docker_seconds = Histogram("kge_docker_call_seconds", "Docker API call latency", ["method"],
                                        buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
                                        registry=self.registry)
        self.request_seconds = Histogram(
            "kge_http_request_duration_seconds", "HTTP requests by method, route template and status, seconds",
            ["method", "route", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry)
        self.loop_lag = LoopLag(Histogram(
            "kge_event_loop_lag_seconds", "How late the event loop ran a timer due every 50 ms: what any request "
            "waited before the loop could reach it", buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=self.registry))
        # The standard process_* (CPU, RSS, open fds), python_info and python_gc_* series.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_Live(gateway))
        self.registry.register(self.loop_lag)

    def observe_kernel(self, event: str, kernelspec: str, source: str = "", seconds: float = 0.0) -> None:
        """What the kernel store reports: starts (cold or pooled), failures, culls, refusals."""
        if event == "start":
            self.starts.labels(kernelspec, source).inc()
            self.start_seconds.labels(source).observe(seconds)
        elif event == "start_failure":
            self.start_failures.labels(kernelspec).inc()
        elif event == "cull":
            self.culls.labels("kernel", source).inc()
        elif event == "rejected":
            self.rejections.labels(source).inc()

    def observe_job_expiry(self, kind: str) -> None:
        self.culls.labels(f"session:{kind}", "expired").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Live:
    """Gauges read from the store when scraped: kernels, sessions, pools."""

    def __init__(self, gateway: LiveSource) -> None:
        self.gateway = gateway

    def describe(self) -> list[Any]:
        # Nothing to read at registration: the parts are made after the metrics (they report to them).
        return []

    def collect(self) -> Iterator[Any]:
        gw = self.gateway
        kernels = GaugeMetricFamily("kge_kernels", "Kernels by state and kernelspec", labels=["state", "kernelspec"])
        for (state, spec), n in Counter((k.execution_state, k.kernel_name) for k in gw.kernel_manager.list()).items():
            kernels.add_metric([state, spec], n)
        yield kernels
        sessions = GaugeMetricFamily("kge_sessions", "Skaha sessions by status and type", labels=["status", "type"])
        if gw.jobs is not None:
            for (status, kind), n in Counter((r.status, r.type) for r in gw.jobs.records.values()).items():
                sessions.add_metric([status, kind], n)
        yield sessions
        pool = GaugeMetricFamily("kge_pool_ready", "Ready kernels in the warm pool", labels=["kernelspec"])
        size = GaugeMetricFamily("kge_pool_size", "Ready kernels the warm pool aims at now (it sizes itself "
                                 "between its configured bounds)", labels=["kernelspec"])
        mgr = gw.kernel_manager
        for name, st in mgr.pool.status().items():
            pool.add_metric([name], st["ready"])
            size.add_metric([name], st["size"])
        yield pool
        yield size
        promised = GaugeMetricFamily("kge_memory_promised_bytes", "Memory promised to kernels and sessions")
        promised.add_metric([], mgr.capacity.promised_memory())
        yield promised
        budget = GaugeMetricFamily("kge_memory_budget_bytes", "The host's memory budget (0: none)")
        budget.add_metric([], mgr.capacity.budget_bytes())
        yield budget


class LoopLag:
    """The event loop's stalls, measured from inside: a timer due every INTERVAL seconds notes how
    late it ran (a blocking call, or a process starved of CPU or of the GIL, both delay every
    request alike). Each delay goes to the histogram; the worst of the last WINDOW seconds is the
    gauge kge_event_loop_lag_max_seconds. Runs between start() and stop()."""

    INTERVAL = 0.05
    WINDOW = 60.0

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._recent: deque[tuple[float, float]] = deque(maxlen=int(self.WINDOW / self.INTERVAL))
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.INTERVAL
        self._handle = loop.call_at(self._due, self._tick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        lag = max(0.0, now - self._due)
        self.histogram.observe(lag)
        self._recent.append((time.monotonic(), lag))
        self._due = now + self.INTERVAL
        self._handle = loop.call_at(self._due, self._tick, loop)

    def worst(self) -> float:
        since = time.monotonic() - self.WINDOW
        return max((lag for t, lag in self._recent if t >= since), default=0.0)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily("kge_event_loop_lag_max_seconds",
                                f"The event loop's worst lag over the last {self.WINDOW:.0f} s", value=self.worst())
