"""The application factory every service builds on.

``base_app`` gives a service its middlewares (request id, metrics, error
model), its socket routes (:func:`serve_sockets`), ``/healthz``, ``/startedz``, ``/readyz``,
``/metrics``, ``/openapi.json`` and ``/docs`` under the service's path prefix
(``/auth``, ``/keys`` ...; the load balancer routes by that prefix without
rewriting paths).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiokafka.errors import KafkaError
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from yarl import URL

from services.common.config import ConfigError, Settings, exit_bad_config, settings_or_exit
from services.common.errors import ApiError, ErrorCode
from services.common.http import json_response
from services.common.logging import (
    REQUEST_ID_HEADER,
    new_request_id,
    request_id_var,
    setup_logging,
    user_id_var,
    valid_request_id,
)
from services.common.metrics import HttpMetrics, metrics_handler, new_registry, route_name
from services.common.openapi import Api, docs_csp, docs_page
from services.common.state import (
    CHECKS,
    MAX_BODY,
    REGISTRY,
    SERVICE,
    SETTINGS,
    SOCKET_LIVES,
    STARTUP,
    Check,
    Handler,
    SocketLife,
)

log = logging.getLogger(__name__)


_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    503: ErrorCode.UNAVAILABLE,
}
_KEPT_HEADERS = ("allow", "retry-after")


access_log = logging.getLogger("parley.access")

# Requests not logged: health checks and scrapes arrive every few seconds.
QUIET_ROUTES = ("healthz", "startedz", "readyz", "metrics")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request id (and, once known, the user id) for every line of a request.

    Ends with one access line per request (``"msg": "request"``: method, route
    template, status, duration), never with the query string or a header: they
    can hold codes and tokens.
    """
    rid = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
    token = request_id_var.set(rid)
    user_token = user_id_var.set(None)  # a keep-alive connection serves many callers
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = route_name(request)
        if not route.endswith(QUIET_ROUTES):
            access_log.info(
                "request",
                extra={
                    "request_id": rid,  # the request's own, whatever a WebSocket set since
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                },
            )
        user_id_var.reset(user_token)
        request_id_var.reset(token)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id_var.get()
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.body(rid), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        fallback = ErrorCode.INTERNAL if exc.status >= 500 else ErrorCode.BAD_REQUEST
        code = _HTTP_CODES.get(exc.status, fallback)
        # A 503 was answered `bad_request` (a draining gateway told clients not to
        # retry); its own text, when a handler gave one, says why.
        text = exc.text if exc.status >= 500 and exc.text != f"{exc.status}: {exc.reason}" else None
        err = ApiError(code, text, status=exc.status)
        # A 405 says which methods the resource has (RFC 9110, section 15.5.6).
        kept = {k: v for k, v in exc.headers.items() if k.lower() in _KEPT_HEADERS}
        return json_response(err.body(rid), status=exc.status, headers=kept or None)
    except asyncio.CancelledError:
        raise
    except (RedisError, PyMongoError, KafkaError, ConnectionError, TimeoutError) as exc:
        # A backing server is down, unreachable or too slow: temporary, say so (503).
        log.warning("dependency error", extra={"path": request.path, "error": repr(exc)})
        return json_response(ApiError(ErrorCode.UNAVAILABLE).body(rid), status=503)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return json_response(ApiError(ErrorCode.INTERNAL).body(rid), status=500)


async def run_checks(checks: dict[str, Check], timeout: float) -> dict[str, str]:
    """Run every dependency check at once; map each name to "ok" or why it failed."""

    async def one(check: Check) -> str:
        try:
            await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            return "timeout"
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    names = list(checks)
    results = await asyncio.gather(*(one(checks[n]) for n in names))
    return dict(zip(names, results, strict=True))


def startup_middleware(operational: frozenset[str], timeout_s: float) -> Middleware:
    """Requests wait (a little) for the start-up work, if any; operational routes never do."""

    @web.middleware
    async def until_started(request: web.Request, handler: Handler) -> web.StreamResponse:
        startup = request.app.get(STARTUP)
        if startup is not None and request.path not in operational:
            await startup.wait(timeout_s)
        return await handler(request)

    return until_started


def sockets_middleware(lives: dict[Handler, SocketLife]) -> Middleware:
    """The outermost middleware: a socket route's request is handed to its life
    (:func:`serve_sockets`), which awaits the other middlewares for the handshake only.

    Not a coroutine function: it returns the awaitable it is given (the
    middlewares' chain, or the life), so that it holds no frame of its own for
    as long as a socket is open (docs/BENCHMARKS.md, "Idle connections").
    """

    @web.middleware
    def sockets(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if lives:  # only a service with socket routes looks
            # The route's handler may wrap the one given (an Api operation does).
            life = lives.get(inspect.unwrap(request.match_info.handler))
            if life is not None:
                return life(request, handler)
        return handler(request)

    return sockets


def serve_sockets(app: web.Application, handler: Handler, life: SocketLife) -> None:
    """Serve the sockets opened through ``handler``'s routes with ``life``: every
    route whose handler is ``handler`` or wraps it (``functools.wraps``).

    ``handler`` does the handshake: it runs inside the middlewares and returns
    a prepared ``web.WebSocketResponse`` (101) or refuses the upgrade. ``life``
    is called as ``life(request, handshake)``, with ``handshake`` the handler
    inside the middlewares (request id and access line, metrics, errors,
    start-up wait); it awaits that first, then serves the socket outside them
    in the same task (with the context variables the middlewares set reset:
    the socket sets its own), and returns the handshake's response.

    So an open socket holds neither the middlewares' coroutine frames nor the
    handler's (~2 KB per socket, docs/BENCHMARKS.md, "Idle connections"), and
    its access line and request metric are written at the handshake (status
    101, the handshake's duration), not when it closes.
    """
    app[SOCKET_LIVES][inspect.unwrap(handler)] = life


# Set on every answer of every service unless the handler chose its own (the
# web app and the OIDC pages set a CSP that allows their own assets). HAProxy
# adds the same to its own answers (deploy/haproxy/haproxy.cfg); on AWS the
# ALB adds nothing, so the services carry them themselves.
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_EXPOSED = f"{REQUEST_ID_HEADER}, Retry-After"
CORS_MAX_AGE_S = 7200
"""Chromium's cap: every distinct URL (ids, cursors) has a preflight of its own."""


def cors_middleware(origins: frozenset[str]) -> Middleware:
    """Let the web apps call the APIs from another origin (``PARLEY_CORS_ORIGINS``: on
    AWS they are on CloudFront's domain, the APIs on the ALB's).

    A request from one of ``origins`` gets ``Access-Control-Allow-Origin`` naming
    it; its preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is
    answered 204 here, before any route. No credentials are allowed: the apps
    send their tokens in ``Authorization`` and no cookies. Any other origin gets
    no CORS header, so a browser keeps its pages from reading the answers.
    """

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or origin not in origins:
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers":
                    request.headers.get("Access-Control-Request-Headers", ""),
                "Access-Control-Max-Age": str(CORS_MAX_AGE_S),
                "Vary": "Origin",
            })  # fmt: skip
        resp = await handler(request)
        if not resp.prepared:  # a WebSocket's handshake is not CORS's
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
            resp.headers["Vary"] = "Origin"
        return resp

    return cors


def cors_origins(settings: Settings) -> frozenset[str]:
    """The origins as a browser sends them: lower case, no trailing slash, no default
    port (``https://App.example.com:443/`` is ``https://app.example.com``)."""
    out = set()
    for raw in settings.cors_origins.split(","):
        url = URL(raw.strip().rstrip("/").lower())
        if url.scheme and url.host:
            default = url.port == {"https": 443, "http": 80}.get(url.scheme)
            port = "" if default or url.port is None else f":{url.port}"
            out.add(f"{url.scheme}://{url.raw_host}{port}")
    return frozenset(out)


async def security_headers(_: web.Request, resp: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)


def base_app(
    service: str,
    settings: Settings,
    *,
    prefix: str,
    api: Api | None = None,
    middlewares: list[Any] | None = None,
) -> web.Application:
    registry = new_registry()
    http_metrics = HttpMetrics(registry, service)
    operational = frozenset(
        f"{prefix}/{name}"
        for name in ("healthz", "startedz", "readyz", "metrics", "openapi.json", "docs")
    )
    lives: dict[Handler, SocketLife] = {}
    origins = cors_origins(settings)
    app = web.Application(
        middlewares=[
            sockets_middleware(lives),
            request_id_middleware,
            *([cors_middleware(origins)] if origins else []),
            http_metrics.middleware(),
            error_middleware,
            startup_middleware(operational, settings.dependency_timeout_ms / 1000),
            *(middlewares or []),
        ],
        client_max_size=settings.max_body_bytes,
    )
    app.on_response_prepare.append(security_headers)
    app[SETTINGS] = settings
    app[REGISTRY] = registry
    app[CHECKS] = {}
    app[SERVICE] = service
    app[SOCKET_LIVES] = lives
    app[MAX_BODY] = settings.max_body_bytes
    started = time.time()

    async def healthz(_: web.Request) -> web.Response:
        return json_response(
            {"status": "ok", "service": service, "uptime_s": int(time.time() - started)}
        )

    async def startedz(_: web.Request) -> web.Response:
        # The load balancer's check on AWS (docs/deployment.md): fails until the start-up
        # work is done once, and never after. /healthz passed a task whose start-up never
        # ends (ECS shipped a release that could not serve, with no rollback); /readyz
        # failed every task at once on a shared dependency's outage (ECS replaced them).
        startup = app.get(STARTUP)
        if startup is not None and not startup.done.is_set():
            return json_response(
                {"status": "starting", "service": service,
                 "error": {"code": ErrorCode.UNAVAILABLE.value,
                           "message": "Start-up work not done yet."}},
                status=503,
            )  # fmt: skip
        return json_response({"status": "ok", "service": service})

    async def readyz(_: web.Request) -> web.Response:
        results = await run_checks(app[CHECKS], settings.readiness_timeout_s)
        failed = sorted(name for name, r in results.items() if r != "ok")
        body: dict[str, Any] = {
            "status": "unavailable" if failed else "ok",
            "service": service,
            "checks": results,
        }
        if failed:
            body["failed"] = failed
            body["error"] = {
                "code": ErrorCode.UNAVAILABLE.value,
                "message": "Not ready: " + ", ".join(failed) + " unavailable.",
            }
        return json_response(body, status=503 if failed else 200)

    app.router.add_get(f"{prefix}/healthz", healthz)
    app.router.add_get(f"{prefix}/startedz", startedz)
    app.router.add_get(f"{prefix}/readyz", as_sent(readyz))
    app.router.add_get(f"{prefix}/metrics", as_sent(metrics_handler(registry)))
    if api is not None:
        api.install(app, prefix)
        doc = api.document(prefix)

        async def openapi_json(_: web.Request) -> web.Response:
            return json_response(doc)

        page, page_csp = docs_page(doc), docs_csp()

        async def docs(_: web.Request) -> web.Response:
            resp = web.Response(text=page, content_type="text/html")
            resp.headers["Content-Security-Policy"] = page_csp
            return resp

        app.router.add_get(f"{prefix}/openapi.json", openapi_json)
        app.router.add_get(f"{prefix}/docs", docs)
    return app


GC_THRESHOLDS = (10_000, 10, 10)
"""A young-generation collection every 10,000 net new containers, not 700."""


async def _freeze_heap(_: web.Application) -> None:
    """Tune the garbage collector for a server that runs for weeks.

    - Everything made while starting (modules, clients, the app) moves to the
      collector's permanent generation (``gc.freeze()``): a full collection no
      longer walks it.
    - Young collections run every 10,000 net new containers (``GC_THRESHOLDS``)
      instead of 700. Nearly all of a message's objects are freed by reference
      counting at once; the collector only has to find cycles, which are rare.

    Measured (docs/BENCHMARKS.md, "The garbage collector"): at saturation each
    process had spent about 0.9 s of every 10 s collecting, with 4-5 pauses
    over 50 ms. Frozen, that went to 0.5-0.6 s and no pause over 50 ms. With
    the threshold as well, to 0-22 ms, and 1:1 throughput rose from 4,847 to
    7,075 msgs/s. Only the real service processes do this (tests build many
    apps in one process and would keep their garbage)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    log.info("heap frozen", extra={"frozen_objects": gc.get_freeze_count()})


def as_sent(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An operators' route (``/readyz``, ``/metrics``) answered only under its path as
    sent, not percent-encoded (``/keys/%6Detrics``): aiohttp routes the decoded path,
    while a load balancer that keeps these routes off its public port may match the
    path as sent (HAProxy decodes first; an ALB's path patterns are not documented
    to), so an encoded one could reach a service from outside."""

    async def handle(request: web.Request) -> web.Response:
        if request.rel_url.raw_path != request.rel_url.path:
            raise ApiError(ErrorCode.NOT_FOUND, "No such resource.")
        return await handler(request)

    return handle


def run_service(
    service: str,
    factory: Callable[[Settings], Awaitable[web.Application]],
    check: Callable[[Settings], None] | None = None,
) -> None:
    """Entry point: settings (or one clear line and exit 2), logging, uvloop, serve.

    ``check`` is the service's own requirements on the settings (raising
    ConfigError), refused the same way before anything starts.

    aiohttp's runner handles SIGTERM/SIGINT: it stops accepting, runs the
    app's on_shutdown hooks (gateways send ``reconnect`` there), then cleanup.
    """
    settings = settings_or_exit(service)
    if settings.port is None:
        print(f"parley-{service}: bad configuration: PARLEY_PORT is required", flush=True)
        raise SystemExit(2)
    if check is not None:
        try:
            check(settings)
        except ConfigError as exc:
            exit_bad_config(service, exc)
    setup_logging(service, settings.log_level, settings.log_format)
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - non-Linux platforms
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    log.info("starting", extra={"port": settings.port})

    async def build() -> web.Application:
        app = await factory(settings)
        app.on_startup.append(_freeze_heap)  # last: after the clients were made
        return app

    web.run_app(
        build(),
        host=settings.host,
        port=settings.port,
        loop=loop,
        print=None,
        access_log=None,
        shutdown_timeout=10,
        handle_signals=True,
    )
