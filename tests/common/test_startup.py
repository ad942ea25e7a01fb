"""Start-up work, the same in every service: retried in the background until it is done;
meanwhile health answers, readiness says `startup`, requests wait and then get 503."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from services.auth.app import create_app as auth_app
from services.auth.config import AuthSettings
from services.common.app import base_app
from services.common.config import Settings, load_settings
from services.common.deps import use_startup
from services.common.openapi import Api
from services.common.retry import MAX_DELAY_S
from services.common.state import STARTUP
from services.delivery.app import create_app as delivery_app
from services.keys.app import create_app as keys_app


def make_app(work: Any, timeout_ms: int = 300) -> web.Application:
    api = Api("Test", "1.0")

    @api.get("/v1/hello", summary="Hello")
    async def hello(request: web.Request) -> dict[str, str]:
        return {"hello": "world"}

    settings = load_settings(dependency_timeout_ms=timeout_ms)
    app = base_app("test", settings, prefix="/test", api=api)
    use_startup(app, work)
    return app


async def test_work_is_retried_and_requests_wait_for_it(make_client: Any) -> None:
    attempts = 0
    release = asyncio.Event()

    async def work() -> None:
        nonlocal attempts
        attempts += 1
        if not release.is_set():
            raise ConnectionError("mongodb is not up yet")

    client = await make_client(make_app(work))
    # Not done: operational routes answer at once, the API waits and then says 503.
    for path in ("/test/healthz", "/test/metrics", "/test/openapi.json", "/test/docs"):
        assert (await client.get(path)).status == 200, path
    resp = await client.get("/test/readyz")
    body = await resp.json()
    assert (resp.status, body["failed"], body["checks"]["startup"]) == (
        503,
        ["startup"],
        "ConnectionError",
    )
    resp = await client.get("/test/v1/hello")
    assert (resp.status, (await resp.json())["error"]["code"]) == (503, "service_unavailable")
    assert attempts >= 2  # retried meanwhile
    # The load balancer's check on AWS: not started yet.
    resp = await client.get("/test/startedz")
    assert (resp.status, (await resp.json())["status"]) == (503, "starting")
    release.set()
    await client.server.app[STARTUP].done.wait()
    assert (await client.get("/test/readyz")).status == 200
    assert (await client.get("/test/startedz")).status == 200


async def test_a_request_that_arrives_before_the_work_is_done_is_answered_once_it_is(
    make_client: Any,
) -> None:
    failures = asyncio.Queue[int]()
    release = asyncio.Event()

    async def work() -> None:
        if not release.is_set():
            failures.put_nowait(1)
            raise ConnectionError("mongodb is not up yet")

    # The request may wait longer than any back-off between tries (MAX_DELAY_S): once
    # the work is done it is answered, whenever that is. (With 300 ms, a loaded machine
    # let the back-off grow past the request's wait before the release: 503.)
    client = await make_client(make_app(work, timeout_ms=int((MAX_DELAY_S + 5) * 1000)))
    await failures.get()
    waiting = asyncio.create_task(client.get("/test/v1/hello"))
    await failures.get()  # a try after the request was sent: it is waiting by now
    release.set()
    resp = await waiting
    assert (resp.status, await resp.json()) == (200, {"hello": "world"})
    assert client.server.app[STARTUP].done.is_set()
    assert (await client.get("/test/readyz")).status == 200


async def test_unfinished_work_is_cancelled_on_shutdown(make_client: Any) -> None:
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    client = await make_client(make_app(work))
    assert (await client.get("/test/healthz")).status == 200
    await client.close()
    assert cancelled.is_set()


@pytest.mark.parametrize(
    ("service", "factory", "path"),
    [
        ("auth", lambda s: auth_app(s, AuthSettings.for_tests()), "/auth/v1/jwks"),
        ("keys", keys_app, "/keys/v1/devices/1/counts"),
        ("delivery", delivery_app, "/delivery/v1/inbox"),
    ],
)
async def test_every_service_waits_for_mongodb_the_same_way(
    settings: Settings, make_client: Any, service: str, factory: Any, path: str
) -> None:
    down = settings.model_copy(
        update={"mongo_url": "mongodb://127.0.0.1:9", "dependency_timeout_ms": 300}
    )
    client = await make_client(await factory(down))
    assert (await client.get(f"/{service}/healthz")).status == 200
    resp = await client.get(f"/{service}/readyz")
    body = await resp.json()
    assert resp.status == 503 and {"mongodb", "startup"} <= set(body["failed"])
    resp = await client.get(path)
    assert (resp.status, (await resp.json())["error"]["code"]) == (503, "service_unavailable")
