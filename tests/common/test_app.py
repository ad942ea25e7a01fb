"""The app factory's contract: error model, request ids, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from yarl import URL

from services.common.app import base_app, cors_origins, serve_sockets
from services.common.config import ConfigError, load_settings
from services.common.errors import ApiError, ErrorCode
from services.common.logging import request_id_var
from services.common.openapi import Api
from services.common.state import CHECKS
from tests.support.aio import eventually

STORED: web.AppKey[list[str]] = web.AppKey("stored", list)


class Greeting(BaseModel):
    name: str = Field(min_length=1, max_length=20)
    times: int = Field(default=1, ge=1, le=3)


class Reply(BaseModel):
    text: str


def make_app(**settings: Any) -> web.Application:
    api = Api("Test", "1.0")
    stored: list[str] = []

    @api.post("/v1/greet", summary="Greet", body=Greeting, response=Reply, status=201)
    async def greet(request: web.Request, body: Greeting) -> Reply:
        stored.append(body.name)
        return Reply(text=" ".join([f"hello {body.name}"] * body.times))

    @api.get("/v1/fail", summary="Fails", errors=[ErrorCode.FORBIDDEN])
    async def fail(request: web.Request) -> None:
        raise ApiError(ErrorCode.FORBIDDEN)

    @api.get("/v1/redis-down", summary="A dependency fails")
    async def redis_down(request: web.Request) -> None:
        raise RedisConnectionError("Connection closed by server.")

    @api.get("/v1/kafka-slow", summary="A dependency does not answer in time")
    async def kafka_slow(request: web.Request) -> None:
        raise TimeoutError  # as a producer's wait_ready(30) against a broker still away

    @api.get("/v1/draining", summary="Answers 503 as aiohttp's exception")
    async def draining(request: web.Request) -> None:
        raise web.HTTPServiceUnavailable(headers={"Retry-After": "5"})

    @api.get("/v1/boom", summary="Crashes")
    async def boom(request: web.Request) -> None:
        raise RuntimeError("internal detail: db password is xyz")

    app = base_app("test", load_settings(max_body_bytes=2048, **settings), prefix="/test", api=api)
    app[STORED] = stored
    return app


@pytest.fixture
async def client(make_client: Any) -> Any:
    return await make_client(make_app())


async def test_valid_body_is_parsed_and_answered(client: Any) -> None:
    resp = await client.post("/test/v1/greet", json={"name": "ada", "times": 2})
    assert resp.status == 201
    assert (await resp.json()) == {"text": "hello ada hello ada"}


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        (
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        ({"json": ["a", "list"]}, 422, "validation_failed"),
        ({"json": {"name": ""}}, 422, "validation_failed"),
        ({"json": {"name": "x", "times": "many"}}, 422, "validation_failed"),
        ({"json": {"name": "x" * 5000}}, 413, "payload_too_large"),
        (
            {"data": b"name=x", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
    ],
)
async def test_bad_input_gets_a_code_and_changes_nothing(
    client: Any, kwargs: dict[str, Any], status: int, code: str
) -> None:
    resp = await client.post("/test/v1/greet", **kwargs)
    assert resp.status == status
    body = await resp.json()
    assert body["error"]["code"] == code
    assert body["error"]["request_id"]
    assert client.server.app[STORED] == []


async def test_validation_errors_do_not_echo_input(client: Any) -> None:
    resp = await client.post("/test/v1/greet", json={"name": "s3cret-value" * 3})
    text = await resp.text()
    assert resp.status == 422
    assert "s3cret-value" not in text
    assert "name" in text


async def test_api_error_and_unknown_routes_use_the_error_model(client: Any) -> None:
    resp = await client.get("/test/v1/fail")
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    resp = await client.get("/test/nope")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await client.delete("/test/v1/greet")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_crash_is_500_without_internal_detail(client: Any) -> None:
    resp = await client.get("/test/v1/boom")
    assert resp.status == 500
    body = await resp.json()
    assert body["error"]["code"] == "internal_error"
    assert "password" not in str(body)


async def test_request_id_is_kept_or_made(client: Any) -> None:
    resp = await client.get("/test/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    too_long = "x" * 200
    resp = await client.get("/test/healthz", headers={"X-Request-ID": too_long})
    assert resp.headers["X-Request-ID"] not in ("", too_long)


async def test_metrics_count_requests_by_route(client: Any) -> None:
    await client.post("/test/v1/greet", json={"name": "bo"})
    await client.get("/test/v1/fail")
    text = await (await client.get("/test/metrics")).text()
    assert (
        'parley_http_requests_total{method="POST",route="/test/v1/greet",service="test",status="201"} 1.0'
        in text
    )
    assert 'route="/test/v1/fail",service="test",status="403"} 1.0' in text
    assert "parley_http_request_duration_seconds_bucket" in text


async def test_metrics_carry_the_process_collector(client: Any) -> None:
    text = await (await client.get("/test/metrics")).text()
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert f"\n{name} " in text, name


async def test_metrics_time_the_garbage_collectors_pauses(client: Any) -> None:
    def full_collections(text: str) -> float:
        line = next(x for x in text.splitlines()
                    if x.startswith('parley_gc_pause_seconds_count{generation="2"}'))  # fmt: skip
        return float(line.rsplit(" ", 1)[1])

    before = full_collections(await (await client.get("/test/metrics")).text())
    gc.collect()
    after = full_collections(await (await client.get("/test/metrics")).text())
    assert after >= before + 1


async def test_one_access_line_per_request_without_the_query(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="parley.access"):
        await client.post(
            "/test/v1/greet?code=123456", json={"name": "bo"}, headers={"X-Request-ID": "r-1"}
        )
        await client.get("/test/healthz")
    lines = [r for r in caplog.records if r.name == "parley.access"]
    assert len(lines) == 1  # health checks are not logged
    (line,) = lines
    assert (line.route, line.status, line.request_id) == ("/test/v1/greet", 201, "r-1")  # type: ignore[attr-defined]
    assert "123456" not in str(vars(line))


async def test_readyz_names_the_failed_dependency(client: Any) -> None:
    async def ok() -> None:
        return None

    async def down() -> None:
        raise ConnectionRefusedError

    client.server.app[CHECKS].update({"mongodb": ok, "redis": down})
    resp = await client.get("/test/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failed"] == ["redis"]
    assert body["checks"] == {"mongodb": "ok", "redis": "ConnectionRefusedError"}
    client.server.app[CHECKS]["redis"] = ok
    assert (await client.get("/test/readyz")).status == 200


@pytest.mark.parametrize(
    "path", ["/test/%6Detrics", "/test/%72eadyz", "/%74est/metrics", "/test/metric%73"]
)
async def test_operators_routes_answer_only_under_their_path_as_sent(
    client: Any, path: str
) -> None:
    """aiohttp routes a percent-encoded path decoded; a load balancer that keeps
    /readyz and /metrics off its public port by matching the path as sent would let
    these through: the service itself answers them 404."""
    assert (await client.get("/test/metrics")).status == 200
    resp = await client.get(URL(path, encoded=True))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    assert (await client.get(URL("/test/%68ealthz", encoded=True))).status == 200  # liveness


async def test_openapi_documents_models_and_error_codes(client: Any) -> None:
    doc = await (await client.get("/test/openapi.json")).json()
    op = doc["paths"]["/test/v1/greet"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Greeting")
    assert "201" in op["responses"]
    assert "validation_failed" in op["responses"]["422"]["description"]
    assert doc["components"]["schemas"]["Greeting"]["properties"]["times"]["maximum"] == 3
    page = await (await client.get("/test/docs")).text()
    assert "/test/v1/greet" in page


async def test_a_down_dependency_is_503_unavailable_not_500(client: Any) -> None:
    resp = await client.get("/test/v1/redis-down")
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "service_unavailable"
    assert "Connection closed" not in str(body)


async def test_a_timeout_and_aiohttps_503_are_service_unavailable(client: Any) -> None:
    """Audit finding: a dependency's timeout was a 500 with a traceback, and a 503 raised
    as aiohttp's exception (a draining gateway's) was answered `bad_request`, which
    tells a client not to try again."""
    slow = await client.get("/test/v1/kafka-slow")
    assert slow.status == 503
    assert (await slow.json())["error"]["code"] == "service_unavailable"
    draining = await client.get("/test/v1/draining")
    assert draining.status == 503 and draining.headers["Retry-After"] == "5"
    assert (await draining.json())["error"]["code"] == "service_unavailable"


async def test_caller_and_role_are_checked_before_the_body(issuer: Any, make_client: Any) -> None:
    from services.common.auth import Claims, use_token_verifier
    from services.common.deps import use_redis

    api = Api("Guarded", "1.0")

    @api.post("/v1/admin-only", summary="Admins", body=Greeting, auth=True, role="admin")
    async def admin_only(request: web.Request, claims: Claims, body: Greeting) -> Reply:
        return Reply(text=f"{body.name} by {claims.sub}")

    app = base_app("guarded", issuer.settings, prefix="/g", api=api)
    use_token_verifier(app, issuer.settings)
    use_redis(app, issuer.settings)
    client = await make_client(app)
    bad = {"name": 5}
    resp = await client.post("/g/v1/admin-only", json=bad)
    assert (resp.status, (await resp.json())["error"]["code"]) == (401, "unauthenticated")
    user = {"Authorization": f"Bearer {issuer.token('u1')}"}
    resp = await client.post("/g/v1/admin-only", json=bad, headers=user)
    assert (resp.status, (await resp.json())["error"]["code"]) == (403, "forbidden")
    admin = {"Authorization": f"Bearer {issuer.token('a1', roles=('user', 'admin'))}"}
    resp = await client.post("/g/v1/admin-only", json=bad, headers=admin)
    assert (resp.status, (await resp.json())["error"]["code"]) == (422, "validation_failed")
    resp = await client.post("/g/v1/admin-only", json={"name": "ok"}, headers=admin)
    assert (resp.status, await resp.json()) == (200, {"text": "ok by a1"})
    doc = await (await client.get("/g/openapi.json")).json()
    op = doc["paths"]["/g/v1/admin-only"]["post"]
    assert op["x-required-role"] == "admin"
    # Every way the decorator refuses a token is documented, with the status it answers.
    assert op["responses"]["401"]["description"] == (
        "Error codes: account_blocked, invalid_token, token_expired, token_revoked, unauthenticated"
    )
    assert op["responses"]["403"]["description"] == "Error codes: forbidden"


def test_a_role_without_auth_is_refused_when_the_route_is_declared() -> None:
    api = Api("Wrong", "1.0")
    with pytest.raises(ValueError, match="auth=True"):
        api.get("/v1/x", summary="X", role="admin")


def socket_app(lives: list[Any]) -> web.Application:
    """An app with a socket route: its life echoes text frames until the client closes.

    The route is there twice: as an Api operation (which wraps the handler) and as is.
    """
    api = Api("Sockets", "1.0")

    @api.get("/ws", summary="A socket", status=101)
    async def handshake(request: web.Request) -> web.StreamResponse:
        if request.query.get("refuse"):
            raise ApiError(ErrorCode.FORBIDDEN)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        return ws

    async def life(request: web.Request, handshake: Any) -> web.StreamResponse:
        ws = await handshake(request)
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        lives.append(asyncio.current_task())
        async for msg in ws:
            await ws.send_str(f"{msg.data} ({request_id_var.get()})")
        return ws

    app = base_app("test", load_settings(), prefix="/test", api=api)
    app.router.add_get("/test/ws-plain", handshake)
    serve_sockets(app, handshake, life)
    return app


async def test_a_socket_is_logged_and_counted_at_its_handshake_and_served_past_it(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lives: list[Any] = []
    client = await make_client(socket_app(lives))
    with caplog.at_level("INFO", logger="parley.access"):
        ws = await client.ws_connect("/test/ws", headers={"X-Request-ID": "sock-1"})
        # Open, and already logged and counted: the middlewares are done with it.
        lines = await eventually(
            lambda: _value([r for r in caplog.records if r.name == "parley.access"]),
            lambda found: len(found) == 1,
        )
        assert (lines[0].route, lines[0].status, lines[0].request_id) == ("/test/ws", 101, "sock-1")  # type: ignore[attr-defined]
        text = await (await client.get("/test/metrics")).text()
        assert 'route="/test/ws",service="test",status="101"} 1.0' in text
        # The life holds no middleware's frame, nor the request id they set.
        (task,) = lives
        held = _awaiting(task.get_coro())
        assert "life" in held
        assert not held & {"request_id_middleware", "metrics_middleware", "error_middleware",
                           "until_started", "handshake"}  # fmt: skip
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "hi (None)"
        await ws.close()
        # The route added with the handler as it is: the same life.
        async with client.ws_connect("/test/ws-plain") as plain:
            await plain.send_str("too")
            assert (await plain.receive_str()) == "too (None)"
        assert len(lives) == 2
    # A refused upgrade is an HTTP answer through the error model, as before.
    resp = await client.get("/test/ws?refuse=1")
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"


async def _value(v: Any) -> Any:
    return v


def _awaiting(coro: Any) -> set[str]:
    """The names of the coroutines a suspended coroutine waits through."""
    names = set()
    while coro is not None and hasattr(coro, "cr_code"):
        names.add(coro.cr_code.co_name)
        coro = coro.cr_await
    return names


WEB = "https://app.example.com"


async def test_the_web_apps_origin_may_call_the_api_from_a_browser(make_client: Any) -> None:
    """PARLEY_CORS_ORIGINS (the web client on CloudFront, the APIs on the ALB): its
    preflight is answered, its answers (errors too) name it; any other origin gets
    no CORS header and its preflight is refused, so a browser neither sends its
    page's request nor lets it read an answer."""
    app = make_app(cors_origins=f"{WEB}, http://localhost:5173")
    client = await make_client(app)
    pre = await client.options("/test/v1/greet", headers={
        "Origin": WEB, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })  # fmt: skip
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == WEB
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert "Access-Control-Allow-Credentials" not in pre.headers
    assert app[STORED] == []  # a preflight reaches no handler
    resp = await client.post("/test/v1/greet", json={"name": "ann"}, headers={"Origin": WEB})
    assert resp.status == 201 and resp.headers["Access-Control-Allow-Origin"] == WEB
    assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
    err = await client.get("/test/v1/fail", headers={"Origin": WEB})
    assert err.status == 403 and err.headers["Access-Control-Allow-Origin"] == WEB

    evil = "https://evil.example"
    pre = await client.options("/test/v1/greet", headers={
        "Origin": evil, "Access-Control-Request-Method": "POST",
    })  # fmt: skip
    assert pre.status == 405 and "Access-Control-Allow-Origin" not in pre.headers
    resp = await client.get("/test/v1/fail", headers={"Origin": evil})
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert app[STORED] == ["ann"]


async def test_without_cors_origins_no_origin_is_allowed(client: Any) -> None:
    pre = await client.options("/test/v1/greet", headers={
        "Origin": WEB, "Access-Control-Request-Method": "POST",
    })  # fmt: skip
    assert pre.status == 405 and "Access-Control-Allow-Origin" not in pre.headers
    resp = await client.get("/test/healthz", headers={"Origin": WEB})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


def test_cors_origins_are_compared_as_a_browser_sends_them() -> None:
    settings = load_settings(cors_origins="https://App.Example.com:443/, http://localhost:5173")
    assert cors_origins(settings) == {"https://app.example.com", "http://localhost:5173"}
    with pytest.raises(ConfigError):
        load_settings(cors_origins="https://app.example.com/path")
