"""Prometheus metrics: one registry per application, request counts and latency per route.

Every service's registry (:func:`new_registry`) also carries prometheus_client's
process collector (``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_open_fds``, ``process_max_fds``, ...), its platform collector
(``python_info``) and its garbage-collector collector (``python_gc_*``), so that
every process answers the same questions about CPU and memory.

The latency buckets suit every HTTP route we serve: reads and writes answer in
milliseconds (1 ms .. 100 ms), password checks (argon2) take a few hundred
milliseconds, and a request that waits for a dependency is cut at
``PARLEY_DEPENDENCY_TIMEOUT_MS`` (5 s by default: the 5 s and 10 s buckets
catch it). A WebSocket upgrade (``/ws``) is counted in
``parley_http_requests_total`` (status 101) once its handshake is answered
(services/common/app.py, ``serve_sockets``), but not timed here; the gateway
times connections itself (``parley_gateway_connection_seconds``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def new_registry() -> CollectorRegistry:
    """A fresh registry with the process, platform and GC collectors on it, and the
    collector's pauses (:func:`time_gc`)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    time_gc(registry)
    return registry


class _GcPauses:
    """``parley_gc_pause_seconds{generation}``: how long each garbage collection held
    the process (and its event loop): a full collection of a large heap takes tens
    of milliseconds, and every request and frame in flight waits that long. One
    ``gc`` callback per process; every registry of the process shows it."""

    def __init__(self) -> None:
        self.histogram = Histogram(
            "parley_gc_pause_seconds", "Garbage-collector pauses, by generation.",
            ["generation"], buckets=GC_BUCKETS, registry=None,
        )  # fmt: skip
        self._by_gen = [self.histogram.labels(str(g)) for g in range(3)]
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            gen = min(int(info.get("generation", 0)), 2)
            self._by_gen[gen].observe(time.perf_counter() - self._started)

    def collect(self) -> Iterable[Metric]:
        return self.histogram.collect()


_GC_PAUSES: _GcPauses | None = None


def time_gc(registry: CollectorRegistry) -> None:
    """Show the process's garbage-collector pauses in ``registry``."""
    global _GC_PAUSES
    if _GC_PAUSES is None:
        _GC_PAUSES = _GcPauses()
    registry.register(_GC_PAUSES)


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.requests = Counter(
            "parley_http_requests_total",
            "HTTP requests handled, by route and status.",
            ["service", "method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "parley_http_request_duration_seconds",
            "HTTP request latency, by route (WebSocket upgrades are not timed).",
            ["service", "method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        @web.middleware
        async def metrics_middleware(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            start = time.perf_counter()
            status = 500
            websocket = False
            try:
                response = await handler(request)
                status = response.status
                websocket = isinstance(response, web.WebSocketResponse)
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                route = route_name(request)
                self.requests.labels(self.service, request.method, route, str(status)).inc()
                if not websocket:
                    self.latency.labels(self.service, request.method, route).observe(
                        time.perf_counter() - start
                    )

        return metrics_middleware


def route_name(request: web.Request) -> str:
    """The matched route's template (``/keys/v1/users/{user_id}/bundles``), or ``unmatched``."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "unmatched"
    return str(resource.canonical)


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(registry))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    return handle
